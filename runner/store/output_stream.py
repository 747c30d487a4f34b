"""Writing the output while a run goes on, so that a run ends without a compaction pass.

Results arrive in the order requests finish. The stream holds them until the rows from the
next unwritten one on are complete for a window, then appends those rows, sorted, to the
output's temporary file as a row group; at the end it writes the footer and renames the file
into place. Parts are written as always (they are what a crash leaves behind); the stream only
saves reading them back. It gives up, and the run compacts its parts as before, when it holds
more than HOLD_ROWS rows waiting for a late one (a row retried for long) or more than
HOLD_TABLES polls' results (a slow run), when a window's columns differ from the first
window's, when a write fails, or when the run ends with rows missing.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from runner.store.files import OUTPUT_OPTIONS, SUMMARY_COLUMNS, Check, put_in_place

#: Rows are written once this many have arrived since the last try.
WINDOW_ROWS = 10_000
#: The stream gives up when this many rows wait for an earlier one ...
HOLD_ROWS = 50_000
#: ... or when it holds this many polls' tables: a slow run (small polls) gains nothing from it
#: (compacting at its end is short), and thousands of small tables held fragment the C
#: allocator: 6,000 rows at 200/s held to the end grew the run to 1.5 GB (234 MB with
#: runner.memory.trim); giving up at 256 tables, 202 MB.
HOLD_TABLES = 256


class OutputStream:
    """The output of a run whose rows `0 .. rows-1` are all sent by this process."""

    def __init__(self, output: Path, tmp: Path, rows: int) -> None:
        self.output = output
        self.tmp = tmp
        self.rows = rows
        self.written = 0  # rows [0, written) are in the file
        self.active = True
        self._held: list[pa.Table] = []
        self._held_rows = 0
        self._tried_at = 0  # rows held after the last try
        self._fh: BinaryIO | None = None
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None

    def add(self, table: pa.Table) -> None:
        """Output rows (with `_row`) as they finish, in any order."""
        if not self.active or not table.num_rows:
            return
        self._held.append(table)
        self._held_rows += table.num_rows
        if self._held_rows > HOLD_ROWS or len(self._held) > HOLD_TABLES:
            self.abort()
        elif self._held_rows - self._tried_at >= WINDOW_ROWS:
            self._write_ready()

    def finish(self, metadata: dict[bytes, bytes], check: Check | None = None) -> pa.Table | None:
        """Writes the rest and puts the output in place (`check` may refuse it just before the
        rename); returns the summary columns of all rows, or None when the stream cannot
        complete the output (the caller compacts instead)."""
        if not self.active:
            return None
        if self._held:
            self._write_ready()
        if not self.active or self.written != self.rows or self._held_rows or self._writer is None:
            self.abort()
            return None
        assert self._fh is not None and self._schema is not None
        try:
            # The file's Arrow schema carries the run's metadata, as a compacted output's does.
            schema = self._schema.with_metadata(metadata)
            self._writer.add_key_value_metadata(
                {**metadata, b"ARROW:schema": base64.b64encode(schema.serialize().to_pybytes())}
            )
            self._writer.close()
            put_in_place(self._fh, self.tmp, self.output, check)
        except OSError:
            self.abort()
            return None
        except BaseException:
            self.abort()
            raise
        self._writer = self._fh = None
        self.active = False
        # Read back rather than held: they would be ~34 bytes per row in memory all run long.
        # (ParquetFile, not read_table: that imports pyarrow.dataset, ~50 ms.)
        return pq.ParquetFile(self.output).read(columns=[c for c in SUMMARY_COLUMNS if c in schema.names])

    def abort(self) -> None:
        """Gives up: the temporary file goes, and the output is left to compaction."""
        self.active = False
        self._held, self._held_rows = [], 0
        try:
            if self._writer is not None:
                self._writer.close()
        except (OSError, pa.ArrowException):
            pass
        if self._fh is not None:
            self._fh.close()
        self._writer = self._fh = None
        self.tmp.unlink(missing_ok=True)

    def _write_ready(self) -> None:
        """Writes the rows held from `written` on that have no gap, sorted; keeps the others."""
        try:
            table = pa.concat_tables(self._held).combine_chunks()
        except pa.ArrowException:  # the columns changed between chunks
            self.abort()
            return
        order = pc.sort_indices(table.column("_row"))
        rows = table.column("_row").take(order)
        expected = pa.array(range(self.written, self.written + len(rows)), pa.int64())
        gap = pc.index(pc.equal(rows, expected), False).as_py()
        ready = len(rows) if gap < 0 else gap
        rest = table.take(order.slice(ready)) if ready < len(rows) else None
        self._held = [rest] if rest is not None else []
        self._held_rows = self._tried_at = len(rows) - ready
        if ready:
            self._write(table.take(order.slice(0, ready)).drop_columns(["_row"]))

    def _write(self, window: pa.Table) -> None:
        try:
            if self._writer is None:
                self._schema = window.schema
                self._fh = open(self.tmp, "wb")
                self._writer = pq.ParquetWriter(self._fh, self._schema, **OUTPUT_OPTIONS)
            elif window.schema != self._schema:
                self.abort()
                return
            self._writer.write_table(window)
            self._fh.flush()
        except OSError:
            self.abort()
            return
        self.written += window.num_rows

