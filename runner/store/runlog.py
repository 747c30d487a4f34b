"""The run's write-ahead log, seen from the run directory: where its segments go, reading them
back when a run resumes, and deleting them once their rows are in a part file.

The executor (native/src/wal.rs) appends each settled row to the log before the row's
concurrency slot is given back, so a `kill -9` loses only the requests on the wire; parts are
written from the log's rows as before. Layout::

    OUTPUT.parquet.run/log/r000002-l000-000001.wal
                           run 2 (each process on the run takes the next number), lane 0
                           (a model of a matrix), segment 1

A name's order is the order of writing, for one lane (the lanes' rows never overlap).

Segments are deleted oldest first: a newer record of a row (a failed row retried) never
disappears while an older one stays. Those of an earlier process go once every row they gave
back (see `recovered`) is in a part; this process's own, once no earlier one is left.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa


#: A segment's name: run, lane and segment numbers.
PATTERN = "r*-l*-*.wal"


class RunLog:
    """The log directory of one run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._run = 1
        #: Segments of earlier processes, until the rows they gave back are in a part.
        self._earlier: list[Path] = []
        #: This process's sealed segments whose rows are in a part, waiting for the earlier ones.
        self._folded: list[Path] = []

    def segments(self) -> list[Path]:
        return sorted(self.path.glob(PATTERN)) if self.path.is_dir() else []

    def open(self) -> None:
        """Creates the directory and takes the next run number (call with the run's lock held)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._earlier = self.segments()
        self._run = 1 + max((_run_number(p) for p in self._earlier), default=0)

    def prefix(self, lane: int) -> str:
        """Where lane `lane`'s executor writes its segments (the executor adds `NNNNNN.wal`)."""
        return str(self.path / f"r{self._run:06d}-l{lane:03d}-")

    def read(self) -> pa.Table:
        """The latest record of every row in the log (the columns of a poll); a segment's torn
        tail is ignored."""
        from runner._native import read_log

        batch, _torn = read_log([str(p) for p in self.segments()])
        table = pa.Table.from_batches([pa.record_batch(batch)])
        if not table.num_rows:
            return table
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        return frame.unique(subset="_row", keep="last", maintain_order=True).to_arrow().cast(table.schema)

    def folded(self, sealed: list[Path], recovered: bool) -> None:
        """`sealed` segments' rows are now in a durable part. `recovered`: every row read back
        from earlier processes' segments is in a part too."""
        self._folded.extend(sealed)
        if self._earlier and recovered:
            _unlink(self._earlier)
            self._earlier = []
        if not self._earlier:
            _unlink(self._folded)
            self._folded = []


def _run_number(path: Path) -> int:
    try:
        return int(path.name.split("-")[0][1:])
    except (IndexError, ValueError):
        return 0


def _unlink(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
