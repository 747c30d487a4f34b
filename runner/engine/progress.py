"""Run progress: a live rich bar on a terminal, periodic one-line status otherwise, and the end summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TextIO

import pyarrow as pa

__all__ = ["Progress", "format_count", "format_duration", "summary"]


def format_count(n: float) -> str:
    """Compact count: ``950``, ``15.2k``, ``3.4M``."""
    n = float(n)
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}" if n == int(n) else f"{n:.1f}"


def format_duration(seconds: float) -> str:
    """``18s``, ``3m05s``, ``1h02m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Live progress of a run; use as a context manager and call :meth:`update` with executor stats.

    On a terminal (``stream.isatty()``) it draws a rich progress bar; otherwise (CI logs, pipes)
    it writes one plain status line every ``interval_plain`` seconds and a last one on exit.
    ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        total: int,
        label: str,
        stream: TextIO = sys.stderr,
        interval_plain: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = max(0, int(total))
        self.label = label
        self.stream = stream
        self.interval_plain = interval_plain
        self._clock = clock
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self.stats: dict[str, int] = dict.fromkeys(
            ("done", "ok", "failed", "retrying", "prompt_tokens", "completion_tokens"), 0
        )
        #: Where the run's pace comes from (see :func:`pace_text`); None while unpaced.
        self.pace: str | None = None
        self._start = 0.0
        self._last_plain = 0.0
        self._rich: Any = None
        self._task: Any = None

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> Progress:  # noqa: PYI034 - subclassing is not expected
        self._start = self._last_plain = self._clock()
        if self._tty:
            self._start_rich()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._rich is not None:
            self._refresh_rich()
            self._rich.stop()
            self._rich = None
        else:
            self._write_plain()

    # -- updates ---------------------------------------------------------------------------
    def update(
        self, done: int, ok: int, failed: int, retrying: int, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Record the latest executor counters (cumulative values, not increments)."""
        self.stats.update(
            done=done,
            ok=ok,
            failed=failed,
            retrying=retrying,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        if self._rich is not None:
            self._refresh_rich()
        elif self._clock() - self._last_plain >= self.interval_plain:
            self._write_plain()

    def update_from(self, stats: Mapping[str, int]) -> None:
        """:meth:`update` from a stats dict with those keys (missing keys count as 0)."""
        self.update(**{k: int(stats.get(k, 0) or 0) for k in self.stats})

    # -- derived numbers -------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return max(0.0, self._clock() - self._start)

    def rates(self) -> tuple[float, float, float | None]:
        """(rows/s, tokens/s, eta seconds or None) averaged since the start."""
        elapsed = self.elapsed
        done = self.stats["done"]
        tokens = self.stats["prompt_tokens"] + self.stats["completion_tokens"]
        rows_s = done / elapsed if elapsed > 0 else 0.0
        tok_s = tokens / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rows_s if rows_s > 0 and self.total >= done else None
        return rows_s, tok_s, eta

    def line(self) -> str:
        """The plain one-line status."""
        s = self.stats
        rows_s, tok_s, eta = self.rates()
        pct = f" ({100 * s['done'] // self.total}%)" if self.total else ""
        eta_text = format_duration(eta) if eta is not None else "?"
        return (
            f"[{self.label}] {s['done']}/{self.total} rows{pct} ok={s['ok']} failed={s['failed']} "
            f"retrying={s['retrying']} {rows_s:.1f} rows/s {format_count(tok_s)} tok/s "
            f"elapsed {format_duration(self.elapsed)} eta {eta_text}"
            + (f" | {self.pace}" if self.pace else "")
        )

    # -- output ----------------------------------------------------------------------------
    def _write_plain(self) -> None:
        self._last_plain = self._clock()
        self.stream.write(self.line() + "\n")
        self.stream.flush()

    def _start_rich(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self._rich = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]ok={task.fields[ok]}"),
            TextColumn("[red]failed={task.fields[failed]}"),
            TextColumn("[yellow]retrying={task.fields[retrying]}"),
            TextColumn("{task.fields[rows_s]} rows/s"),
            TextColumn("{task.fields[tok_s]} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("[cyan]{task.fields[pace]}"),
            console=Console(file=self.stream),
            refresh_per_second=5,
            transient=False,
        )
        self._task = self._rich.add_task(
            self.label, total=self.total or None, ok=0, failed=0, retrying=0, rows_s="0.0", tok_s="0", pace=""
        )
        self._rich.start()

    def _refresh_rich(self) -> None:
        s = self.stats
        rows_s, tok_s, _ = self.rates()
        self._rich.update(
            self._task,
            completed=s["done"],
            ok=s["ok"],
            failed=s["failed"],
            retrying=s["retrying"],
            rows_s=f"{rows_s:.1f}",
            tok_s=format_count(tok_s),
            pace=self.pace or "",
        )


def pace_text(stats: Mapping[str, Any]) -> str | None:
    """Where an executor's pace comes from, from its ``pace_source`` and ``pace_rps`` stats: the
    limit the server states in its headers, one learned from its 429s, or None (unpaced)."""
    source, rps = stats.get("pace_source"), stats.get("pace_rps")
    if source == "stated" and rps:
        return f"paced to the server's stated limit, {rps * 60:,.0f} requests/min"
    if source == "learned" and rps:
        return f"paced at {rps:,.1f} requests/s, learned from the server's 429s"
    return None


def _as_table(rows: pa.Table | Sequence[Mapping[str, Any]]) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows
    if hasattr(rows, "to_arrow"):  # polars DataFrame
        table: pa.Table = rows.to_arrow()
        return table
    return pa.Table.from_pylist(list(rows))


def summary(rows: pa.Table | Sequence[Mapping[str, Any]], elapsed_s: float) -> str:
    """A short multi-line end-of-run summary, computed column-wise.

    ``rows`` is a results table (or list of result dicts) with columns ``status``, ``error_type``,
    ``prompt_tokens``, ``completion_tokens``, ``latency_ms``. Latency percentiles are over ``ok``
    rows (linear interpolation); errors are counted by ``error_type``.
    """
    from runner.stats import row_stats

    table = _as_table(rows)
    n = table.num_rows
    rate = n / elapsed_s if elapsed_s > 0 else 0.0
    lines = [f"rows: {n} in {format_duration(elapsed_s)} ({rate:.1f} rows/s)"]
    if not n or "status" not in table.column_names:
        lines += ["status: none", "tokens: prompt=0 completion=0 total=0"]
        return "\n".join(lines)
    stats = row_stats(table, by_model=False)[0]
    lines.append(f"status: {_counts({'ok': stats['ok'], 'error': stats['failed']}) or 'none'}")
    if stats["errors"]:
        lines.append(f"errors: {_counts(stats['errors'])}")
    prompt_tokens, completion_tokens = stats["prompt_tokens"], stats["completion_tokens"]
    lines.append(
        f"tokens: prompt={prompt_tokens:,} completion={completion_tokens:,} total={prompt_tokens + completion_tokens:,}"
    )
    if stats["latency_p50_ms"] is not None:
        lines.append(f"latency: p50={stats['latency_p50_ms']:,.0f} ms p95={stats['latency_p95_ms']:,.0f} ms (ok rows)")
    return "\n".join(lines)


def _counts(counts: Mapping[str, int]) -> str:
    """``ok=990 error=10``: sorted by count (desc), then name; zeros left out."""
    pairs = sorted(((k, v) for k, v in counts.items() if v), key=lambda p: (-p[1], p[0]))
    return " ".join(f"{k}={v}" for k, v in pairs)
