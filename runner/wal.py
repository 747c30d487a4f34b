"""The run's write-ahead log: every result the run loop gets is in the OS's hands before it
polls again.

Layout (inside `OUTPUT.parquet.run/`)::

    log/000001.arrows     one segment: an Arrow IPC stream of output rows (with `_row`)
    log/000002.arrows ...

The run loop appends each poll's output rows (input columns joined) to the current segment as
record batches and hands them to the OS in one write (`ResultLog.flush`, called from
`RunDir.sync_log`) before it polls again. The rows also wait in memory until they are written as
a Parquet part (runner.checkpoint: at least every second, or once 5,000 rows wait, on the part
writer's thread). Handing them over seals the current segment (`seal`); the part writer deletes
the sealed segments once the part is durably in place (file and directory fsynced), and the next
rows go to a new segment. A segment is also started when the rows' columns change (an input
column typed differently in a later chunk): an IPC stream has one schema.

What a crash costs:

- A process crash (`kill -9`, the OOM killer, a segfault): nothing the run loop has polled and
  logged; the kernel writes the page cache out whether or not the process lives. Lost are only
  answers the run loop never got: requests in flight, answers the executor holds until its next
  batch, and the poll being written. While requests are slow (runner.lane.Credits, 40 ms or
  more), a lane never has more rows sent and unlogged than its concurrency, so a kill re-sends
  at most the concurrency. Against a faster server rows go without waiting for the log, and a
  kill may also cost the executor's batching delay's worth of answers (20 ms of them).
- A power loss or kernel crash: about a second of results. The current segment is fsynced
  (with its directory) at most once every SYNC_SECONDS (1 s), at the first poll after that
  second when it holds unsynced rows; rows handed to the part writer are durable once their part
  is fsynced, at most FLUSH_SECONDS (1 s) after they arrived plus the part's write.

A crash after a part's rename and before its segments' deletion leaves its rows in both, with
the same results; the run that takes over folds the log into a later part, and every reader
keeps the latest result per `_row` (the log is later than every part), so one row remains. A
segment's tail may be torn (a crash or a full disk mid-write): `read_segment` returns its whole
record batches and ignores the rest.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa

#: The current segment is fsynced at most this often (a power loss costs at most this much).
SYNC_SECONDS = 1.0
#: Segment files: `NNNNNN.arrows`, numbered in the order they were started.
SUFFIX = ".arrows"
#: Bytes of a poll's batches gathered before they reach the file (in one write, at `flush`).
BUFFER_BYTES = 1 << 20


def segment_number(path: Path) -> int:
    try:
        return int(path.name.removesuffix(SUFFIX))
    except ValueError:
        return 0


def segments(directory: Path) -> list[Path]:
    """The log's segments, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob("*" + SUFFIX) if segment_number(p) > 0]
    return sorted(found, key=segment_number)


def read_segment(path: Path) -> list[pa.RecordBatch]:
    """The whole record batches of a segment, in order; a torn or garbled tail (and whatever
    follows it) is ignored, as is a segment without a readable schema or without `_row`."""
    batches: list[pa.RecordBatch] = []
    try:
        with pa.OSFile(str(path), "rb") as fh:
            reader = pa.ipc.open_stream(fh)
            if reader.schema.get_field_index("_row") < 0:
                return []
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                batch.validate(full=True)
                batches.append(batch)
    except (OSError, pa.ArrowException, ValueError):
        pass  # torn or garbled from here on: the batches before it stand
    return batches


def read_log(paths: list[Path]) -> list[pa.Table]:
    """The rows of `paths` (segments, oldest first), a table per segment that holds any."""
    tables = []
    for path in paths:
        batches = read_segment(path)
        if batches:
            tables.append(pa.Table.from_batches(batches))
    return tables


class ResultLog:
    """Appends output rows to the run's log segments (see the module's notes)."""

    def __init__(self, directory: Path, first: int = 1, sync_seconds: float = SYNC_SECONDS) -> None:
        self.directory = directory
        self.sync_seconds = sync_seconds
        self._next = first
        #: Segments holding rows that are in no part yet, oldest first; the last may be open.
        self.live: list[Path] = []
        self._file: pa.NativeFile | None = None
        self._sink: pa.NativeFile | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._schema: pa.Schema | None = None
        self._buffered = False  # batches written to the buffer, not yet to the file
        self._unsynced = False  # bytes in the file (or a new directory entry) not yet fsynced
        self._synced_at = time.monotonic()
        self.syncs = 0

    def write(self, table: pa.Table) -> None:
        """Adds rows to the current segment's buffer (`flush` hands them to the OS)."""
        if not table.num_rows:
            return
        if self._writer is None or not table.schema.equals(self._schema, check_metadata=True):
            self._start(table.schema)
        assert self._writer is not None
        self._writer.write_table(table)
        self._buffered = True

    def flush(self) -> None:
        """Hands the buffered rows to the OS (enough for a process crash), and fsyncs the segment
        when it last did so SYNC_SECONDS ago or more."""
        if self._buffered and self._sink is not None:
            self._sink.flush()
            self._buffered = False
            self._unsynced = True
        if self._unsynced and time.monotonic() - self._synced_at >= self.sync_seconds:
            self.sync()

    def sync(self) -> None:
        """Makes the current segment and its directory entry durable."""
        if self._file is not None and self._unsynced:
            os.fsync(self._file.fileno())
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self.syncs += 1
        self._unsynced = False
        self._synced_at = time.monotonic()

    def seal(self) -> list[Path]:
        """Ends the current segment and returns the segments written so far: their rows are
        handed over to be written as a part, after which the caller deletes them. The next rows
        start a new segment."""
        self._close(sync=False)
        sealed, self.live = self.live, []
        self._unsynced = False  # the sealed rows are made durable by their part's fsync
        return sealed

    def close(self) -> None:
        """Closes the current segment and keeps it (its rows may be in no part)."""
        try:
            self._close(sync=False)
        except (OSError, pa.ArrowException):
            pass

    def _start(self, schema: pa.Schema) -> None:
        # A change of columns ends the segment: made durable now, as the next sync only covers
        # the new one (rare: an input column whose type changes between chunks).
        if self._writer is not None:
            self.flush()
            self._close(sync=self._unsynced)
        path = self.directory / f"{self._next:06d}{SUFFIX}"
        self._next += 1
        self._file = pa.OSFile(str(path), "wb")
        self.live.append(path)
        self._sink = pa.BufferedOutputStream(self._file, BUFFER_BYTES)
        self._writer = pa.ipc.new_stream(self._sink, schema)
        self._schema = schema
        self._unsynced = True  # the new directory entry

    def _close(self, sync: bool) -> None:
        writer, sink, fh = self._writer, self._sink, self._file
        self._writer = self._sink = self._file = None
        self._schema = None
        self._buffered = False
        try:
            if writer is not None:
                writer.close()  # the end-of-stream marker
            if sink is not None:
                sink.flush()
            if sync and fh is not None:
                os.fsync(fh.fileno())
        finally:
            if sink is not None and not sink.closed:
                sink.close()  # closes the file under it too
            if fh is not None and not fh.closed:
                fh.close()
