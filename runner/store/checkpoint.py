"""The run's on-disk state: `OUTPUT.run/` with the run's record, a lock, and atomic Parquet parts.

Layout::

    OUTPUT.parquet.run/
        run.json              the run's options and fingerprints (never a secret)
        lock                  held (flock) by the process that is running it
        parts/part-000001.parquet
        parts/part-000002.parquet ...
        log/r000001-l000-000001.wal ...   every settled row, as it settles (runner.store.runlog)

Each part holds finished rows (input columns + results + `_row`), written to a temporary
file, fsynced, then renamed into place: a crash leaves either a whole part or none, and a
part that does not open (a torn copy, a disk error) is skipped. A later part wins over an
earlier one for the same `_row` (a failed row retried on a rerun), and the log's record of a
row wins over the parts' (it is never older: see runner.store.runlog).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from runner.errors import InputError, RunnerError
from runner.store.files import OUTPUT_OPTIONS, SUMMARY_COLUMNS, atomic_file, write_atomic, write_json_atomic
from runner.store.output_stream import OutputStream
from runner.store.runlog import RunLog


#: Results wait at most this long in memory before they are written to a part (they are in the
#: run's log from the moment they settle, so this bounds the log's size, not what a kill costs) ...
FLUSH_SECONDS = 1.0
#: ... or less: a part is written once this many rows wait. The run sets it to 0.5 % of its
#: rows, which bounds the memory held and the rows a compaction reads twice.
FLUSH_ROWS = 20_000
#: Frequent flushes make small parts; this many are merged into one, so a long slow run
#: (a part a second) does not leave millions of files behind. A run's row-count flushes make
#: at most ~200 parts (0.5 % of its rows each), so a fast run merges none: merging rewrote every
#: row once more (100k rows at 0 ms: 1.7 % of the client's CPU, and 25 MB of peak RSS).
MERGE_PARTS = 256
#: The streamed output's temporary file in the run directory (`{}`: the process id).
STREAM_TMP = ".output-{}.tmp"
#: Parts with fewer rows than this count as small.
SMALL_PART_ROWS = 5_000


class OutputError(RunnerError):
    """The output location cannot be used or written."""


def run_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".run")


#: Parts are short-lived and written on the run loop's thread, so they are written cheaply:
#: snappy, plain encoding (no dictionary to build and then abandon for unique texts), and
#: statistics only for `_row`, which compaction reads to find a part's rows. 5,000 rows of the
#: benchmark's results: 5.5 ms instead of 7.9 ms with the defaults (same size).
PART_OPTIONS: dict[str, Any] = {"compression": "snappy", "use_dictionary": False, "write_statistics": ["_row"]}


def file_digest(path: Path) -> dict[str, Any]:
    """What identifies an input file's content: its size and sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return {"path": str(path), "size": path.stat().st_size, "sha256": digest.hexdigest()}


def digests_in_background(paths: Sequence[Path]) -> Callable[[], list[dict[str, Any]]]:
    """Starts hashing `paths` on a thread (hashlib releases the GIL), so that it overlaps the
    input scan; the returned function waits for the digests, or raises what hashing raised."""
    done: list[Any] = []

    def work() -> None:
        try:
            done.append([file_digest(p) for p in paths])
        except BaseException as err:  # handed to the caller
            done.append(err)

    thread = threading.Thread(target=work, name="input-digest", daemon=True)
    thread.start()

    def result() -> list[dict[str, Any]]:
        thread.join()
        if isinstance(done[0], BaseException):
            raise done[0]
        return done[0]

    return result


def oserror_text(err: OSError) -> str:
    return err.strerror or str(err)


class RunDir:
    """Reads and appends to one run's state directory."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = run_dir_for(output)
        self.parts = self.path / "parts"
        self.log = RunLog(self.path / "log")
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.flush_rows = FLUSH_ROWS
        self._last_flush = time.monotonic()
        self._next_part = 1
        self._lock_fd: int | None = None
        #: Small parts this process wrote (only its own: their rows appear in no later part).
        self._small: list[Path] = []
        self._stream: OutputStream | None = None
        #: Called once each part (and the output) is durable, just before it is renamed into
        #: place, and before a compaction starts; raises OutputError when this process may no
        #: longer write here (runner.store.owner: another attempt of a shard).
        self.guard: Callable[[], None] | None = None

    # -- the run's record ------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.path / "run.json").is_file()

    def record(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / "run.json").read_text())
        except (OSError, ValueError):
            return None

    def write_record(self, record: dict[str, Any]) -> None:
        try:
            write_json_atomic(record, self.path / "run.json")
        except OSError as err:
            raise OutputError(f"{self.path / 'run.json'}: cannot write the run record: {oserror_text(err)}") from None

    def remove(self) -> None:
        """Starts over: the state directory and the output go."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.output.unlink(missing_ok=True)

    # -- the lock --------------------------------------------------------------------------

    def prepare(self) -> None:
        """Creates the directory (or reopens it), takes the lock, and clears temporary files."""
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise OutputError(f"{self.output}: cannot write the run state in {self.path}: {oserror_text(err)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(f"{self.output}: another prompt-runner (pid {self.holder() or '?'}) is running on it") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        for leftover in [*self.parts.glob(".*.tmp-*"), *self.path.glob(STREAM_TMP.format("*"))]:
            leftover.unlink(missing_ok=True)
        self._next_part = 1 + max((self._part_number(p) for p in self._part_files()), default=0)
        try:
            self.log.open()
        except OSError as err:
            raise OutputError(f"{self.log.path}: cannot create the run's log: {oserror_text(err)}") from None

    def release(self) -> None:
        if self._stream is not None:
            self._stream.abort()
            self._stream = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def holder(self) -> int | None:
        """The pid of the process running this run, if one is."""
        try:
            fd = os.open(self.path / "lock", os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return int(os.read(fd, 32) or b"0") or None
            except ValueError:
                return None
        finally:
            os.close(fd)
        return None

    # -- parts -----------------------------------------------------------------------------

    @staticmethod
    def _part_number(path: Path) -> int:
        try:
            return int(path.stem.split("-")[1])
        except (IndexError, ValueError):
            return 0

    def _part_files(self) -> list[Path]:
        if not self.parts.is_dir():
            return []
        return sorted(self.parts.glob("part-*.parquet"), key=self._part_number)

    def readable_parts(self) -> list[Path]:
        """Part files that open as Parquet; a torn file is skipped, never fatal."""
        return [path for path, _ in self._readable_footers()]

    def _readable_footers(self) -> list[tuple[Path, pq.FileMetaData]]:
        good = []
        for path in self._part_files():
            try:
                good.append((path, pq.read_metadata(path)))
            except (OSError, pa.ArrowException):
                continue
        return good

    def logged(self) -> pa.Table:
        """The log's latest result of each row (`_row` and the result columns; the engine adds
        their cost, `pricing.with_cost`)."""
        return self.log.read()

    def latest(self, columns: list[str] | None = None, logged: pa.Table | None = None) -> pl.DataFrame:
        """The latest result of every row so far (all columns, or the ones named), from the
        parts and, when given, the `logged` results, which win."""
        frame = self._latest_in_parts(columns)
        if logged is None or not logged.num_rows:
            return frame
        log = pl.from_arrow(logged if columns is None else logged.select([c for c in columns if c in logged.column_names]))
        assert isinstance(log, pl.DataFrame)
        if frame.height:
            frame = frame.filter(~pl.col("_row").is_in(log["_row"].implode()))
        return pl.concat([frame, log], how="diagonal_relaxed")

    def _latest_in_parts(self, columns: list[str] | None) -> pl.DataFrame:
        frames = []
        for path in self.readable_parts():
            try:
                frames.append(pl.read_parquet(path, columns=columns))
            except (OSError, pl.exceptions.ComputeError):
                continue
        if not frames:
            return pl.DataFrame({"_row": pl.Series([], dtype=pl.Int64)})
        merged = pl.concat(frames, how="diagonal_relaxed")
        return merged.unique(subset="_row", keep="last", maintain_order=True)

    def saved(self, retry_failed: bool = True, logged: pa.Table | None = None) -> tuple[set[int], float]:
        """What the parts (and the `logged` results) hold, in one read: the rows not to send
        again (the ok ones, and the failed ones too unless retried) and the USD spent on the rows
        saved so far."""
        latest = self.latest(["_row", "status", "cost_usd"], logged)
        if not latest.height or "status" not in latest.columns:
            return set(), 0.0
        spent = float(latest["cost_usd"].sum() or 0.0)
        keep = latest if not retry_failed else latest.filter(pl.col("status") == "ok")
        return set(keep["_row"].to_list()), spent

    def stream_output(self, rows: int) -> bool:
        """Writes the output while the run goes on (see runner.store.output_stream), when this run
        hands out every one of rows `0 .. rows-1` itself: there are no parts yet (rows read back
        from the log are handed out again). Returns whether it does."""
        if self._part_files():
            return False
        self._stream = OutputStream(self.output, self.path / STREAM_TMP.format(os.getpid()), rows)
        return True

    def append(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._stream is not None:
            self._stream.add(table)

    def flush_due(self) -> bool:
        return bool(self._pending) and (
            self._pending_rows >= self.flush_rows or time.monotonic() - self._last_flush >= FLUSH_SECONDS
        )

    def seconds_to_flush(self, longest: float) -> float:
        """How long the run loop may wait for results before waiting rows must be written."""
        if not self._pending:
            return longest
        return max(0.0, min(longest, FLUSH_SECONDS - (time.monotonic() - self._last_flush)))

    def flush(self, sealed: Sequence[Path] = (), recovered: bool = False) -> None:
        """Writes the waiting rows as the next part file. `sealed`: log segments whose rows are
        all waiting or in parts, deleted once the part is written; `recovered`: every row read
        back from the log at the start is too (see RunLog.folded)."""
        self._last_flush = time.monotonic()
        if self._pending:
            self._write_part(concat_rows(self._pending))
            self._pending.clear()
            self._pending_rows = 0
            if len(self._small) >= MERGE_PARTS:
                self._merge_small()
        self.log.folded(list(sealed), recovered)

    def _write_part(self, table: pa.Table) -> None:
        dest = self.parts / f"part-{self._next_part:06d}.parquet"
        table = table.combine_chunks()
        try:
            write_atomic(table, dest, self.guard, **PART_OPTIONS)
        except OSError as err:
            raise OutputError(f"{dest}: cannot write results: {oserror_text(err)}") from None
        self._next_part += 1
        if table.num_rows < SMALL_PART_ROWS:
            self._small.append(dest)

    def _merge_small(self) -> None:
        """Replaces this process's small parts by one. The merged part is written (with a
        higher number) before the small ones go, so a crash in between only duplicates rows,
        and the duplicates hold the same results."""
        small, self._small = self._small, []
        self._write_part(concat_rows([pq.ParquetFile(path).read() for path in small]))
        for path in small:
            path.unlink(missing_ok=True)

    def compact(self, metadata: dict[bytes, bytes], empty: Callable[[], pa.Schema] | None = None) -> pa.Table:
        """Replaces OUTPUT atomically with the latest result of every row, in input order.

        A streamed output (`stream_output`) that holds every row is put in place as it is;
        otherwise the parts are compacted, in windows of rows. Parts are read once each, in the
        order of their first row, when the window reaches it; rows beyond the window wait for
        theirs. Memory is bounded by the window and the parts that span it, not by the run's
        size. Returns the columns a summary needs (status, error_type, tokens, latency) for all
        rows. `empty` gives the output's schema when no row has a result (a run stopped at its
        first rows), so that even then the output has its columns.
        """
        if self.guard is not None:
            self.guard()
        if self._stream is not None:
            stream, self._stream = self._stream, None
            summaries = stream.finish(metadata, self.guard)
            if summaries is not None:
                return summaries
        pool = pa.default_memory_pool()
        pool.release_unused()
        footers = self._readable_footers()
        parts = [path for path, _ in footers]
        spans = [_row_span(meta) for _, meta in footers]
        schemas = [meta.schema.to_arrow_schema() for _, meta in footers]
        if not schemas and empty is not None:
            schemas = [empty()]
        schema = target_schema(schemas).with_metadata(metadata)
        out_schema = schema.remove(schema.get_field_index("_row")) if "_row" in schema.names else schema
        summary_columns = [c for c in SUMMARY_COLUMNS if c in out_schema.names]
        summaries: list[pa.Table] = []
        try:
            with atomic_file(self.output, self.guard) as fh:
                with pq.ParquetWriter(fh, out_schema, **OUTPUT_OPTIONS) as writer:
                    # The next window is read and sorted on a thread while this one is written
                    # (100k benchmark rows: 0.55 s -> 0.39 s).
                    for window in _prefetched(_windows(parts, spans, schema)):
                        window = window.replace_schema_metadata(metadata)
                        writer.write_table(window)
                        summaries.append(window.select(summary_columns))
                        del window
                        pool.release_unused()  # keep the peak at a window or two, not the sum of them
        except OSError as err:
            raise OutputError(f"{self.output}: cannot write the output: {oserror_text(err)}") from None
        if not summaries:
            return pa.table({c: pa.array([], out_schema.field(c).type) for c in summary_columns})
        return pa.concat_tables(summaries)


def _windows(parts: list[Path], spans: list[tuple[int, int]], schema: pa.Schema) -> Iterator[pa.Table]:
    """The latest result of every row, in `_row` order, in windows of COMPACT_WINDOW rows
    (without `_row`). Parts are read once each, in the order of their first row, when the window
    reaches it; rows beyond the window wait for theirs."""
    order = sorted(range(len(parts)), key=lambda i: spans[i][0])
    waiting: list[pa.Table] = []  # rows read, not yet handed out
    start = spans[order[0]][0] if order else 0
    while waiting or order:
        stop = start + COMPACT_WINDOW
        while order and spans[order[0]][0] < stop:
            i = order.pop(0)
            waiting.append(_with_part(conform(pq.ParquetFile(parts[i]).read(), schema), i))
        pending = pa.concat_tables(waiting) if waiting else None
        waiting = []
        if pending is not None and pending.num_rows:
            mine = pc.less(pending.column("_row"), stop)
            later = pending.filter(pc.invert(mine))
            if later.num_rows:
                waiting.append(later)
            window = _latest_sorted(pending.filter(mine))
            del pending, later
            if window.num_rows:
                yield window.drop_columns(["_row"])
            del window
        if waiting or not order:
            start = stop
        else:  # nothing read is waiting: skip to the next part's first row
            start = max(stop, spans[order[0]][0])


T = TypeVar("T")


def _prefetched(items: Iterator[T]) -> Iterator[T]:
    """`items`, produced one ahead on a thread (pyarrow releases the GIL while it reads, sorts
    and writes). The producer's exception is raised here; stopping early stops the producer."""
    ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand("item", item):
                    return
            hand("end", None)
        except BaseException as err:  # handed to the consumer
            hand("error", err)

    thread = threading.Thread(target=produce, name="compact-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


#: Rows per compaction window: memory is bounded by this, not by the run's size.
COMPACT_WINDOW = 10_000
def _row_span(meta: pq.FileMetaData) -> tuple[int, int]:
    """The smallest and largest `_row` in a part, from its footer statistics."""
    index = meta.schema.to_arrow_schema().get_field_index("_row")
    lo, hi = None, None
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(index).statistics
        if stats is None or not stats.has_min_max:
            return (0, 2**62)  # no statistics: assume it overlaps everything
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    return (lo if lo is not None else 0, hi if hi is not None else -1)


def _with_part(table: pa.Table, index: int) -> pa.Table:
    return table.append_column("_part", pa.array([index] * table.num_rows, pa.int32()))


def _latest_sorted(table: pa.Table) -> pa.Table:
    """Rows sorted by `_row`, keeping for each row the one from the latest part. The order and
    the choice are made on the indices, then the rows are gathered once, from contiguous
    columns (a take from a table of many chunks is ~6x slower: 0.26 s instead of 0.04 s for
    100k benchmark rows)."""
    order = pc.sort_indices(table, [("_row", "ascending"), ("_part", "ascending")])
    rows = table.column("_row").take(order).combine_chunks()
    following = pa.concat_arrays([rows.slice(1), pa.array([-1], rows.type)])
    order = order.filter(pc.not_equal(rows, following))
    return table.drop_columns(["_part"]).combine_chunks().take(order)


def target_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema for all parts: types promoted where they can be, JSON text where not
    (an input column holding objects in one chunk and lists in another)."""
    fields: dict[str, pa.Field] = {}
    for schema in schemas:
        for field in schema:
            if field.name not in fields:
                fields[field.name] = field
                continue
            try:
                merged = pa.unify_schemas(
                    [pa.schema([fields[field.name]]), pa.schema([field])], promote_options="permissive"
                )
                fields[field.name] = merged.field(0)
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                fields[field.name] = pa.field(field.name, pa.large_string())
    return pa.schema(list(fields.values()))


def concat_rows(tables: list[pa.Table]) -> pa.Table:
    """Tables of rows as one; an input column typed differently in two of them (numbers in one
    input chunk, text in another) gets one type, as in the output."""
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        schema = target_schema([t.schema for t in tables])
        return pa.concat_tables([conform(t, schema) for t in tables])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns and types (missing ones null)."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if column.type == field.type:
            columns.append(column)
        elif pa.types.is_large_string(field.type) and not _castable(column.type, field.type):
            columns.append(_json_text(column))
        else:
            columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    return pa.types.is_string(source) or pa.types.is_large_string(source) or pa.types.is_null(source) or (
        pa.types.is_integer(source) or pa.types.is_floating(source) or pa.types.is_boolean(source)
    )


def _json_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Values as JSON text (nulls stay null)."""
    values = [None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in column.to_pylist()]
    return pa.chunked_array([pa.array(values, pa.large_string())])
