"""Stopping a run on SIGINT/SIGTERM: gracefully first, at once on the second signal."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Any, Callable, Iterator, TextIO


class Shutdown:
    """Graceful stop on SIGINT/SIGTERM: the first stops dispatching and lets requests on the
    wire finish for up to `grace` seconds; a second one (or the end of the grace) abandons them."""

    def __init__(self, executors: list[Any], grace: float, err: TextIO) -> None:
        self.executors = executors
        self.grace = grace
        self.err = err
        self.signals = 0
        self.requested = False
        self._deadline: float | None = None
        self._abandoned = False

    def signal(self) -> None:
        self.signals += 1

    def check(self) -> None:
        """Called from the run loop: acts on signals that arrived."""
        if self.signals and not self.requested:
            self.requested = True
            self._deadline = time.monotonic() + self.grace
            for executor in self.executors:
                executor.drain()
            in_flight = sum(executor.stats()["in_flight"] for executor in self.executors)
            print(
                f"\nstopping: waiting up to {self.grace:g}s for {in_flight} requests in flight "
                "(press Ctrl-C again to abandon them)",
                file=self.err,
            )
        if self.requested and not self._abandoned:
            if self.signals > 1 or (self._deadline is not None and time.monotonic() >= self._deadline):
                self._abandoned = True
                for executor in self.executors:
                    executor.cancel()


def stop_signals(stop: Shutdown) -> contextlib.AbstractContextManager[None]:
    """SIGINT/SIGTERM are counted instead of raising, so no result in hand is ever dropped
    half-processed; the run loop acts on them."""
    return on_stop_signals(stop.signal)


@contextlib.contextmanager
def on_stop_signals(callback: Callable[[], None]) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM call `callback` instead of raising (signals are only
    caught on the main thread; elsewhere the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        callback()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
