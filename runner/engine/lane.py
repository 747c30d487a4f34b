"""One model's share of a run: its executor, the feeder thread, cache look-ups, rows read back
from the run's log, and joining each result to its input row."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from runner.store.cache import ResponseCache, cache_keys, hits_table
from runner.inputs.dataset import iter_chunks
from runner.engine.endpoint import Endpoint
from runner.engine.request import resolve_headers
from runner.engine.spec import Lane, RunSpec
from runner.engine.shard import parse_shard, shard_rows
from runner.engine import permits
from runner.engine.pricing import row_costs
from runner.inputs.render import RequestSpec, Renderer, plan
from runner.schema import RESULT_FIELDS, input_column_name, result_table


class InFlight:
    """Input chunks whose rows are still out, so each result can be joined to its input row."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: list[list[Any]] = []  # [start, table, ids, rows still out]

    def add(self, start: int, table: pa.Table, ids: pa.Array, outstanding: int) -> None:
        if outstanding:
            with self._lock:
                self._chunks.append([start, table, ids, outstanding])

    def join(self, results: pa.Table) -> list[tuple[pa.Table, pa.Array, pa.Table]]:
        """Splits `results` by input chunk: (input rows, their ids, their results)."""
        rows = results.column("_row")
        pieces = []
        with self._lock:
            for entry in self._chunks:
                start, table, ids, _ = entry
                mask = pc.and_(pc.greater_equal(rows, start), pc.less(rows, start + table.num_rows))
                mine = results.filter(mask)
                if not mine.num_rows:
                    continue
                index = pc.subtract(mine.column("_row"), start)
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
        opts: RunSpec,
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
        #: Results that are not sent: cache hits (True) and rows read back from the log (False).
        self.hits: queue.Queue[tuple[pa.Table, bool]] = queue.Queue()
        self.cache_hits = 0
        #: Rows read back from the run's log (see `start`), and how many are not handed out yet.
        self._recovered: pa.Table | None = None
        self._recovered_at: dict[int, int] = {}
        self.recovered_left = 0
        self._keys: dict[int, str] = {}
        self._keys_lock = threading.Lock()
        self._renderers: dict[Path, Renderer] = {}
        self.feed_error: BaseException | None = None
        self.executor: Any = None
        self._feeder: threading.Thread | None = None

    def owns(self, row: int) -> bool:
        return self.offset <= row < self.offset + self.total

    def native_config(self, resumed: bool = False, log: str | None = None) -> str:
        """The executor's settings. `resumed`: rows of this lane are already settled, so its model
        and key are known to work and a string of alike failures says nothing about the run.
        `log`: where the executor writes the run's log (a segment prefix; see runner.store.runlog)."""
        o, lane = self.opts, self.lane
        config: dict[str, Any] = {
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
            "fail_fast": o.fail_fast and not resumed,
            "log": log,
        }
        # The request surface beyond messages (runner.engine.request), sent when set.
        extra: dict[str, Any] = {
            "params": lane.params,
            "headers": resolve_headers(o.headers),
            "keep_raw": o.keep_raw,
            "api_version": self.ep.api_version,
        }
        config.update({k: v for k, v in extra.items() if v})
        if (source := permits.current()) is not None:  # a shard of a cluster run: its limits are shared
            config.update(source.config(lane))
        return json.dumps(config)

    def renderer(self, path: Path, table: pa.Table) -> Renderer:
        # Planned once per file from its first chunk, as `scan` checked it.
        if path not in self._renderers:
            self._renderers[path] = plan(table.column_names, self.spec, str(path))
        return self._renderers[path]

    def start(self, skip: set[int], recovered: pa.Table | None = None, log: str | None = None) -> None:
        """Starts the executor (logging to `log`, a segment prefix) and the feeder. Rows in
        `skip` are not sent; those of `recovered` (results read back from the log) are handed
        out again when the feeder reaches them, so they reach a part with their input columns.
        """
        from runner._native import Executor

        if recovered is not None:
            rows = recovered.column("_row")
            mine = recovered.filter(pc.and_(pc.greater_equal(rows, self.offset), pc.less(rows, self.offset + self.total)))
            self._recovered = mine
            self._recovered_at = {row: i for i, row in enumerate(mine.column("_row").to_pylist())}
            self.recovered_left = mine.num_rows
        resumed = bool(self._recovered_at) or any(self.owns(row) for row in skip)
        self.executor = Executor(self.native_config(resumed, log))
        if (source := permits.current()) is not None:
            source.attach(self.lane, self.executor)
        self._feeder = threading.Thread(target=self._feed, args=(skip,), daemon=True, name=f"feed-{self.lane.model}")
        self._feeder.start()

    def join_feeder(self) -> None:
        if self._feeder is not None:
            self._feeder.join(timeout=5)

    def _feed(self, skip: set[int]) -> None:
        """Feeder thread: reads, renders and submits rows in chunks; the queue bounds memory."""
        from runner._native import RunStopped

        position = 0
        shard = parse_shard(self.opts.shard)
        try:
            # The lane's rows: the first `total` (a shard's: those of the input's first --limit
            # rows whose id hashes to it, numbered 0.. in the shard; runner.engine.shard).
            for table, ids, chunk in shard_rows(self.paths, self.schemas, self.renderer, self.opts.limit if shard else self.total, shard):
                if position >= self.total:
                    break
                table, ids = table.slice(0, self.total - position), ids.slice(0, self.total - position)
                renderer = self.renderer(chunk.path, table)
                payloads = renderer.render_array(table, chunk)
                start = self.offset + position
                rows = pa.array(range(start, start + table.num_rows), pa.int64())
                if skip:
                    wanted = pa.array([start + i not in skip for i in range(table.num_rows)], pa.bool_())
                    rows, payloads = rows.filter(wanted), payloads.filter(wanted)
                self.inflight.add(start, table, ids, len(rows))
                if self._recovered_at:
                    rows, payloads = self._hand_back(rows, payloads)
                self._submit(rows, payloads)
                position += table.num_rows
        except RunStopped:
            pass
        except BaseException as err:  # surfaced on the main thread after the run stops
            self.feed_error = err
            self.executor.cancel()
        finally:
            self.executor.close_input()

    def _hand_back(self, rows: pa.Array, payloads: pa.Array) -> tuple[pa.Array, pa.Array]:
        """Queues the logged results of `rows` that the log holds; the rest, to be sent."""
        assert self._recovered is not None
        at = self._recovered_at
        listed = rows.to_pylist()
        found = [at[row] for row in listed if row in at]
        if not found:
            return rows, payloads
        self.hits.put((self._recovered.take(found), False))
        unsent = pa.array([row not in at for row in listed], pa.bool_())
        return rows.filter(unsent), payloads.filter(unsent)

    def _submit(self, row_array: pa.Array, payload_array: pa.Array) -> None:
        if not len(row_array):
            return
        if self.cache is None:
            self.executor.submit_arrow(row_array, payload_array)
            return
        rows: list[int] = row_array.to_pylist()
        payloads: list[str] = payload_array.to_pylist()
        o = self.opts
        keys = cache_keys(self.lane.provider, self.ep.api_base if self.lane.provider != "mock" else None,
                          self.lane.model, payloads, o.system, o.temperature, o.max_tokens, self.lane.params)
        found = self.cache.lookup(keys)
        if found:
            self.hits.put((hits_table(rows, keys, found), True))
            self.cache_hits += sum(1 for k in keys if k in found)
        misses = [i for i, k in enumerate(keys) if k not in found]
        with self._keys_lock:
            self._keys.update((rows[i], keys[i]) for i in misses)
        if misses:
            self.executor.submit([rows[i] for i in misses], [payloads[i] for i in misses])

    def poll(self, wait: float) -> list[pa.Table] | None:
        """Output rows that are ready (input columns joined), or None once the lane is done."""
        ready = self._not_sent()
        batch = self.executor.poll(0 if ready else wait)
        if batch is None:
            ready.extend(self._not_sent())
            return ready or None
        if len(batch):
            ready.extend(self._output(pa.Table.from_batches([pa.record_batch(batch)]), cached=False))
        return ready

    def _not_sent(self) -> list[pa.Table]:
        ready = []
        while not self.hits.empty():
            results, cached = self.hits.get_nowait()
            ready.extend(self._output(results, cached=cached, sent=False))
            if not cached:
                self.recovered_left -= results.num_rows
        return ready

    def _output(self, results: pa.Table, cached: bool, sent: bool = True) -> list[pa.Table]:
        if self.cache is not None and sent:
            with self._keys_lock:
                keys = [self._keys.pop(r) for r in results.column("_row").to_pylist()]
            self.cache.store_results(keys, results)
        return [self._output_rows(inputs, ids, res, cached) for inputs, ids, res in self.inflight.join(results)]

    def empty_output(self) -> pa.Table:
        """No output rows, with the output's columns (and `_row`): the input's first chunk's
        columns, then the result columns."""
        chunk = next(iter(iter_chunks(self.paths, schemas=self.schemas)), None)
        inputs = chunk.table.slice(0, 0) if chunk is not None else pa.table({})
        results = result_table({}, rows=0)
        return self._output_rows(inputs, pa.array([], pa.string()), results, cached=False)

    def _output_rows(self, inputs: pa.Table, ids: pa.Array, res: pa.Table, cached: bool) -> pa.Table:
        return output_rows(self.lane, self.opts.prices, self.run_id, inputs, ids, res, cached)


def output_rows(
    lane: Lane,
    prices: dict[str, list[float]],
    run_id: str,
    inputs: pa.Table,
    ids: pa.Array,
    res: pa.Table,
    cached: bool,
    price_factor: float = 1.0,
) -> pa.Table:
    """Output rows: results (`RESULT_SCHEMA`) joined to their input rows and ids, with the
    model, cost (times `price_factor`: a Batch API's discount) and the run's columns."""
    n = res.num_rows
    columns: dict[str, Any] = {"_row": res.column("_row"), "id": ids}
    for name in inputs.column_names:
        columns[input_column_name(name)] = inputs.column(name)
    columns["model"] = pa.array([lane.model] * n, pa.string())
    columns["provider"] = pa.array([lane.provider] * n, pa.string())
    for f in RESULT_FIELDS:
        columns[f.name] = res.column(f.name)
    cost = row_costs(lane.model, res, prices)
    columns["cost_usd"] = cost if price_factor == 1.0 else pc.multiply(cost, price_factor)
    columns["request_hash"] = res.column("request_hash")
    columns["run_id"] = pa.array([run_id] * n, pa.string())
    columns["cache_hit"] = pa.array([cached] * n, pa.bool_())
    return pa.table(columns)
