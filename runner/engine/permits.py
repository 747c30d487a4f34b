"""Where a lane's executor takes its rate permits from when the run is one of several sharing a
limit (a shard of a Ray run, runner.ray): a `PermitSource` set for the process by the shard.

With no source (every single-machine run) nothing changes: each executor paces itself to the
spec's `--rpm`/`--tpm` and the server's stated or learned limit. With one, `config` adjusts the
executor's settings before it starts (e.g. `granted`: it sends only on permits handed to it) and
`attach` gets the executor, to hand it permits while the lane runs and take back what it did not
use when the lane ends; `spent` tells the run's spending, for one `--max-cost` across processes.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["PermitSource", "current", "use"]


class PermitSource(Protocol):
    def config(self, lane: Any) -> dict[str, Any]:
        """Executor settings that replace the lane's own (its limits)."""
        ...

    def attach(self, lane: Any, executor: Any) -> None:
        """The lane's executor has started."""
        ...

    def detach(self, lane: Any, executor: Any) -> None:
        """The lane's executor is done: its unused permits go back."""
        ...

    def spent(self, own: float) -> float:
        """What the whole run has spent (USD), given what this process's rows cost so far: the
        figure `--max-cost` is held to."""
        ...


_source: PermitSource | None = None


def current() -> PermitSource | None:
    return _source


def use(source: PermitSource | None) -> None:
    """Sets (None: clears) this process's permit source."""
    global _source
    _source = source
