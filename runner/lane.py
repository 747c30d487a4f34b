"""One model's share of a run: its executor, the feeder thread, cache look-ups, and joining each
result to its input row."""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from runner.cache import ResponseCache, cache_keys, hits_chunk
from runner.dataset import iter_chunks
from runner.endpoint import Endpoint
from runner.options import Lane, RunOptions
from runner.pricing import cost_column
from runner.render import RequestSpec, Renderer, plan
from runner.schema import RESULT_FIELDS, TS, input_column_name


#: While requests take at least this long (the mean of recent ones), a lane sends a row only
#: when fewer than its concurrency are unlogged (see Credits) ...
GATE_SECONDS = 0.040
#: ... and stops doing so below this (a fast server: the wait for the run loop would cost more
#: than a few percent of the throughput, and a kill there costs little time to send again).
UNGATE_SECONDS = 0.030
#: Lanes with a higher concurrency are never gated: the rows out would not fit the executor's
#: queue (4,096), and the run loop must never wait to submit.
GATE_MAX_CONCURRENCY = 4096
#: The latency that gates is a moving mean over about this many results (or twice the concurrency).
LATENCY_ROWS = 64
#: The run loop waits at most this share of the requests' latency for results (so a result
#: waits in the executor about 1 % of a request's time before it is logged) ...
WAIT_SHARE = 0.01
#: ... and at least this long (a fast run: results arrive in batches anyway).
SHORTEST_WAIT = 0.001


class Credits:
    """Rows a lane may send before the results of earlier ones are in the log.

    Gated, a lane's rows submitted and not yet logged never outnumber its concurrency, so a
    `kill -9` re-sends at most the concurrency: the requests on the wire and the results the
    executor holds or the run loop is writing are all among them. The feeder leaves the rows it
    may not send yet here, and the run loop, once it has logged results, submits as many of
    them itself (no thread to wake: a slot waits only for its result to be polled and logged,
    ~1 % of a request's latency plus a millisecond; see LaneRun.poll_wait). Gating is on only
    while requests are slow (GATE_SECONDS); a fast run sends freely, as does a stopping run.
    """

    def __init__(self, concurrency: int) -> None:
        self._cond = threading.Condition()
        self._concurrency = max(1, concurrency)
        self._gateable = self._concurrency <= GATE_MAX_CONCURRENCY
        self._limit: int | None = self._concurrency if self._gateable else None  # None: not gated
        self._open = False  # stopping: no limit any more
        self._out = 0  # rows submitted, not yet logged
        self._backlog: list[list[Any]] = []  # [rows, payloads] the feeder left, oldest first
        self._handing = 0  # slices the run loop took from the backlog and is submitting
        self._refused: BaseException | None = None  # what submitting raised on the run loop

    @property
    def limited(self) -> bool:
        """Gated by latency (whether or not the run is stopping)."""
        return self._limit is not None

    @property
    def gateable(self) -> bool:
        return self._gateable

    @property
    def gated(self) -> bool:
        return self._limit is not None and not self._open

    def _room(self) -> int | None:
        """Rows that may be sent now (None: any number)."""
        if self._limit is None or self._open:
            return None
        return max(0, self._limit - self._out)

    def _take(self, most: int | None) -> list[tuple[Any, Any]]:
        """Slices of the backlog, `most` rows at most (all with None); counted as out."""
        taken: list[tuple[Any, Any]] = []
        while self._backlog and (most is None or most > 0):
            rows, payloads = self._backlog[0]
            n = len(rows) if most is None else min(most, len(rows))
            taken.append((rows[:n], payloads[:n]))
            if n == len(rows):
                self._backlog.pop(0)
            else:
                self._backlog[0] = [rows[n:], payloads[n:]]
            self._out += n
            if most is not None:
                most -= n
        return taken

    def send(self, rows: Any, payloads: Any, submit: Callable[[Any, Any], None], stopped: Callable[[], bool]) -> None:
        """Feeder thread: hands `rows` (an Arrow array or a list, with their payloads) to
        `submit`, as many as may go at once and the rest through the run loop (`give`).
        Returns once all are submitted; raises what submitting them raised."""
        if not len(rows):
            return
        with self._cond:
            self._backlog.append([rows, payloads])
        while True:
            with self._cond:
                if self._refused is not None:
                    raise self._refused
                if not self._backlog and not self._handing:
                    return
                room = self._room()
                if room == 0 or not self._backlog:
                    # Woken when the run loop has submitted what it took, or the gate opens;
                    # a run that stops on its own is noticed within 0.1 s.
                    if not self._cond.wait(0.1) and room == 0 and stopped():
                        self._open = True
                    continue
                taken = self._take(room)
            for r, p in taken:  # outside the lock: submit may wait for room in the executor
                submit(r, p)

    def give(self, n: int, submit: Callable[[Any, Any], None]) -> None:
        """Run loop: `n` more rows are logged; submits as many of the waiting ones."""
        if not n:
            return
        with self._cond:
            self._out = max(0, self._out - n)
            room = self._room()
            taken = self._take(room) if room and self._refused is None else []
            self._handing += bool(taken)
        if not taken:
            return
        try:
            # Never blocks: fewer than the concurrency are out, so the executor's queue has room.
            for r, p in taken:
                submit(r, p)
        except BaseException as err:  # RunStopped: the run is stopping; the feeder ends with it
            with self._cond:
                self._refused = err
        finally:
            with self._cond:
                self._handing -= 1
                if not self._backlog or self._refused is not None:
                    self._cond.notify_all()  # the feeder's rows are all submitted (or refused)

    def gate(self, on: bool) -> None:
        with self._cond:
            self._limit = self._concurrency if on and self._gateable else None
            self._cond.notify_all()

    def open(self) -> None:
        """The run is stopping: the feeder must reach the executor's refusal, not wait here."""
        with self._cond:
            self._open = True
            self._cond.notify_all()


class InFlight:
    """Input chunks whose rows are still out, so each result can be joined to its input row."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # [first row, table, ids, rows still out, first row and end as Arrow scalars]
        self._chunks: list[list[Any]] = []

    def add(self, start: int, table: pa.Table, ids: pa.Array, outstanding: int) -> None:
        if outstanding:
            # Scalars made once: compute functions given a Python int convert it on every call
            # (~50 us each without numpy installed, as pyarrow tries to import it each time).
            first, end = pa.scalar(start, pa.int64()), pa.scalar(start + table.num_rows, pa.int64())
            with self._lock:
                self._chunks.append([start, table, ids, outstanding, first, end])

    def join(self, results: pa.Table) -> list[tuple[pa.Table, pa.Array, pa.Table]]:
        """Splits `results` by input chunk: (input rows, their ids, their results)."""
        rows = results.column("_row")
        pieces = []
        with self._lock:
            for entry in self._chunks:
                _, table, ids, _, first, end = entry
                mask = pc.and_(pc.greater_equal(rows, first), pc.less(rows, end))
                mine = results.filter(mask)
                if not mine.num_rows:
                    continue
                index = pc.subtract(mine.column("_row"), first)
                pieces.append((table.take(index), ids.take(index), mine))
                entry[3] -= mine.num_rows
            self._chunks = [e for e in self._chunks if e[3] > 0]
        return pieces


class LaneRun:
    """Runs one model over the input. Rows are numbered `offset + position`, so the lanes of a
    model matrix share one run directory without overlapping."""

    def __init__(
        self,
        lane: Lane,
        opts: RunOptions,
        paths: list[Path],
        spec: RequestSpec,
        total: int,
        ep: Endpoint,
        run_id: str,
        cache: ResponseCache | None,
        schemas: dict[Path, list[Any]] | None = None,
    ) -> None:
        self.lane = lane
        self.schemas = schemas  # the chunk types the preflight scan found
        self.opts = opts
        self.paths = paths
        self.spec = spec
        self.total = total
        self.offset = lane.index * total
        self.ep = ep
        self.run_id = run_id
        self.cache = cache
        self.inflight = InFlight()
        self.hits: queue.Queue[dict[str, list[Any]]] = queue.Queue()
        self.cache_hits = 0
        self._keys: dict[int, str] = {}
        self._keys_lock = threading.Lock()
        self._renderers: dict[Path, Renderer] = {}
        self.feed_error: BaseException | None = None
        self.executor: Any = None
        self._feeder: threading.Thread | None = None
        self.credits = Credits(lane.concurrency)
        self._polled = 0  # rows the executor handed over since the last `logged`
        self._latency: float | None = None  # seconds, a moving mean of recent requests
        self._observed = 0  # results seen
        self._started = time.monotonic()

    def owns(self, row: int) -> bool:
        return self.offset <= row < self.offset + self.total

    def native_config(self) -> str:
        o, lane = self.opts, self.lane
        return json.dumps(
            {
                "provider": self.ep.wire,
                "api_base": self.ep.api_base,
                "api_key": self.ep.api_key,
                "model": lane.model,
                "temperature": o.temperature,
                "max_tokens": o.max_tokens,
                "stream": o.stream,
                "system": o.system,
                "concurrency": lane.concurrency,
                "rpm": lane.rpm,
                "tpm": lane.tpm,
                "max_retries": o.max_retries,
                "timeout": o.timeout,
                "fail_fast": o.fail_fast,
            }
        )

    def renderer(self, path: Path, table: pa.Table) -> Renderer:
        # Planned once per file from its first chunk, as `scan` checked it.
        if path not in self._renderers:
            self._renderers[path] = plan(table.column_names, self.spec, str(path))
        return self._renderers[path]

    def start(self, skip: set[int]) -> None:
        from runner._native import Executor

        self.executor = Executor(self.native_config())
        self._feeder = threading.Thread(target=self._feed, args=(skip,), daemon=True, name=f"feed-{self.lane.model}")
        self._feeder.start()

    def join_feeder(self) -> None:
        if self._feeder is not None:
            self._feeder.join(timeout=5)

    def _feed(self, skip: set[int]) -> None:
        """Feeder thread: reads, renders and submits rows in chunks; the queue bounds memory."""
        from runner._native import RunStopped

        position = 0
        try:
            for chunk in iter_chunks(self.paths, schemas=self.schemas):
                if position >= self.total:
                    break
                table = chunk.table.slice(0, self.total - position)
                renderer = self.renderer(chunk.path, table)
                ids = pa.array(renderer.ids(table, position, chunk), pa.string())
                payloads = renderer.render_array(table, chunk)
                start = self.offset + position
                rows = pa.array(range(start, start + table.num_rows), pa.int64())
                if skip:
                    wanted = pa.array([start + i not in skip for i in range(table.num_rows)], pa.bool_())
                    rows, payloads = rows.filter(wanted), payloads.filter(wanted)
                self.inflight.add(start, table, ids, len(rows))
                self._submit(rows, payloads)
                position += table.num_rows
        except RunStopped:
            pass
        except BaseException as err:  # surfaced on the main thread after the run stops
            self.feed_error = err
            self.executor.cancel()
        finally:
            self.executor.close_input()

    def _stopped(self) -> bool:
        return self.executor.fatal_error() is not None

    def _submit(self, row_array: pa.Array, payload_array: pa.Array) -> None:
        if not len(row_array):
            return
        if self.cache is None:
            self.credits.send(row_array, payload_array, self.executor.submit_arrow, self._stopped)
            return
        rows: list[int] = row_array.to_pylist()
        payloads: list[str] = payload_array.to_pylist()
        o = self.opts
        keys = cache_keys(self.lane.provider, self.ep.api_base if self.lane.provider != "mock" else None,
                          self.lane.model, payloads, o.system, o.temperature, o.max_tokens)
        found = self.cache.lookup(keys)
        if found:
            self.hits.put(hits_chunk(rows, keys, found))
            self.cache_hits += sum(1 for k in keys if k in found)
        misses = [i for i, k in enumerate(keys) if k not in found]
        with self._keys_lock:
            self._keys.update((rows[i], keys[i]) for i in misses)
        self.credits.send([rows[i] for i in misses], [payloads[i] for i in misses], self.executor.submit, self._stopped)

    def poll(self, wait: float) -> list[pa.Table] | None:
        """Output rows that are ready (input columns joined), or None once the lane is done."""
        ready = self._cache_hits()
        if self.credits.gated:
            # Results that arrived while the run loop was busy are taken at once; only when
            # there are none does it wait (the executor hands out what arrives by its end).
            batch = self.executor.poll(0)
            if batch is not None and not len(batch) and not ready and wait > 0:
                batch = self.executor.poll(wait)
        else:  # a fast run: the executor batches results (20 ms), which costs the loop least
            batch = self.executor.poll(0 if ready else wait)
        if batch is None:
            ready.extend(self._cache_hits())
            return ready or None
        if len(batch):
            results = pa.Table.from_batches([pa.record_batch(batch)])
            self._polled += results.num_rows
            self._observe(results)
            ready.extend(self._output(results, cached=False))
        return ready

    def logged(self) -> None:
        """The rows polled so far are in the log: as many more may be sent."""
        polled, self._polled = self._polled, 0
        self.credits.give(polled, self._submit_now)

    def _submit_now(self, rows: Any, payloads: Any) -> None:
        # A few rows at a time: as lists (an Arrow slice of a large chunk costs ~0.2 ms to hand
        # over, whatever its length).
        if isinstance(rows, pa.Array):
            rows, payloads = rows.to_pylist(), payloads.to_pylist()
        self.executor.submit(rows, payloads)

    def poll_wait(self, longest: float) -> float:
        """How long the run loop should wait for this lane's results: gated, about 1 % of a
        request's latency (before the first result, of the time since the start), as each
        result it polls late keeps a slot idle; otherwise `longest`."""
        if not self.credits.gated:
            return longest
        latency = self._latency if self._latency is not None else time.monotonic() - self._started
        return min(longest, max(SHORTEST_WAIT, latency * WAIT_SHARE))

    def _observe(self, results: pa.Table) -> None:
        """Follows the requests' latency (a moving mean over about the last LATENCY_ROWS, or twice
        the concurrency, results), and gates the lane's sending on it (see Credits). Gating
        stops only once that many results are in: the first to come back are the fastest."""
        mean = pc.mean(results.column("latency_ms")).as_py()
        if mean is None:
            return
        seconds, n = mean / 1000, results.num_rows
        window = max(LATENCY_ROWS, 2 * self.lane.concurrency)
        if self._latency is None:
            self._latency = seconds
        else:
            weight = min(1.0, n / min(window, self._observed + n))
            self._latency += weight * (seconds - self._latency)
        self._observed += n
        if self.credits.limited and self._latency < UNGATE_SECONDS and self._observed >= window:
            self.credits.gate(False)
        elif not self.credits.limited and self._latency >= GATE_SECONDS and self.credits.gateable:
            self.credits.gate(True)

    def _cache_hits(self) -> list[pa.Table]:
        ready = []
        while not self.hits.empty():
            ready.extend(self._output(result_table(self.hits.get_nowait()), cached=True))
        return ready

    def _output(self, results: pa.Table, cached: bool) -> list[pa.Table]:
        if self.cache is not None and not cached:
            with self._keys_lock:
                keys = [self._keys.pop(r) for r in results.column("_row").to_pylist()]
            self.cache.store_results(keys, results)
        return [self._output_rows(inputs, ids, res, cached) for inputs, ids, res in self.inflight.join(results)]

    def _output_rows(self, inputs: pa.Table, ids: pa.Array, res: pa.Table, cached: bool) -> pa.Table:
        n = res.num_rows
        columns: dict[str, Any] = {"_row": res.column("_row"), "id": ids}
        for name in inputs.column_names:
            columns[input_column_name(name)] = inputs.column(name)
        columns["model"] = pa.array([self.lane.model] * n, pa.string())
        columns["provider"] = pa.array([self.lane.provider] * n, pa.string())
        for f in RESULT_FIELDS:
            columns[f.name] = res.column(f.name)
        columns["cost_usd"] = cost_column(
            self.lane.model, res.column("prompt_tokens"), res.column("completion_tokens"), self.opts.prices
        )
        columns["request_hash"] = res.column("request_hash")
        columns["run_id"] = pa.array([self.run_id] * n, pa.string())
        columns["cache_hit"] = pa.array([cached] * n, pa.bool_())
        return pa.table(columns)


def result_table(chunk: dict[str, list[Any]]) -> pa.Table:
    """Column lists (cache hits) as the table the executor's polls give: `_row`, the result
    fields, `request_hash`."""
    arrays = {"_row": pa.array(chunk["row"], pa.int64())}
    for f in RESULT_FIELDS:
        values = chunk[f.name]
        if f.type == TS:
            arrays[f.name] = pa.array(values, pa.int64()).cast(TS)
        else:
            arrays[f.name] = pa.array(values, f.type)
    arrays["request_hash"] = pa.array(chunk["request_hash"], pa.string())
    return pa.table(arrays)
