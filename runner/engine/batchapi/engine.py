"""The Batch API engine: a prepared run's rows submitted to the providers' Batch APIs (half price,
answered within 24 hours), exactly once across crashes, waited for, and their results written
through the same checkpoint parts as live results. See ARCHITECTURE.md, "The Batch API engine".

A batch's life is recorded in the run directory (`runner.store.ledger`) before and after each
call that could create it, so that a rerun finds a batch it created but never recorded instead
of paying for it twice: OpenAI's batches carry the run's id and the record's key as metadata;
Anthropic's have no metadata and are matched by their request count and creation time (and,
once they have ended, by their custom ids).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from typing import Any

import polars as pl
import pyarrow as pa

from runner.engine.base import Prepared
from runner.engine.batchapi import plan
from runner.engine.batchapi.http import BatchApiError, Http
from runner.engine.batchapi.providers import AnthropicBatches, Batch, OpenAIBatches, Provider
from runner.engine.batchapi.rows import LaneInput, Slice
from runner.engine.endpoint import Endpoint
from runner.engine.lane import LaneRun, output_rows
from runner.engine.outcome import Reporter, RunOutcome, Stop
from runner.engine.pricing import BATCH_DISCOUNT
from runner.engine.request import resolve_headers
from runner.engine.shutdown import on_stop_signals
from runner.schema import META_CONFIG, META_SUMMARY
from runner.store.cache import open_cache
from runner.store.ledger import ABANDONED, COLLECTED, INTENT, SUBMITTED, BatchRecord, Ledger, custom_id, row_of

__all__ = ["BatchEngine", "provider_for"]

#: Waits between two looks at the batches: from the first, growing to the last.
FIRST_POLL, LONGEST_POLL = 1.0, 60.0


def provider_for(ep: Endpoint, headers: dict[str, str]) -> Provider:
    """The Batch API client of an endpoint (the mock speaks OpenAI's)."""
    if ep.wire == "anthropic":
        auth = {"x-api-key": ep.api_key, "anthropic-version": "2023-06-01"}
        return AnthropicBatches(Http(ep.api_base, {**headers, **auth}, [ep.api_key, *headers.values()]))
    if ep.wire == "openai":
        auth = {"authorization": f"Bearer {ep.api_key}"}
        return OpenAIBatches(Http(ep.api_base, {**headers, **auth}, [ep.api_key, *headers.values()]))
    raise BatchApiError(f"--batch-api: {ep.provider} has no Batch API here (openai, anthropic and mock have)")


class BatchEngine:
    """Submits every row of the run's batch lanes that is not settled; waits for the batches
    (unless `wait` is off) and collects them. With `cancel`, cancels the run's open batches and
    collects what they finished, submitting nothing."""

    def __init__(self, wait: bool = True, cancel: bool = False) -> None:
        self.wait = wait
        self.cancel = cancel

    def execute(self, run: Prepared, reporter: Reporter) -> RunOutcome:
        with _Batches(run, reporter, self.cancel) as batches:
            try:
                return batches.go(self.wait)
            except BatchApiError as err:
                # Every call is retried first; what still fails (a refused key, a provider down
                # for minutes) stops the run with its state consistent: a rerun goes on.
                run.run_dir.flush()
                return run.outcome(Stop.STOPPED, message=f"the Batch API: {err}")


class _Batches:
    def __init__(self, run: Prepared, reporter: Reporter, cancel: bool) -> None:
        self.run, self.reporter, self.cancelling = run, reporter, cancel
        self.spec = run.spec
        self.ledger = Ledger(run.run_dir.path)
        self.lanes = [lane for lane in run.lanes if lane.batch]
        self.live = [lane for lane in run.lanes if not lane.batch]
        headers = resolve_headers(self.spec.headers)
        self.inputs: dict[int, LaneInput] = {}
        self.clients: dict[int, Provider] = {}
        self.wires: dict[int, str] = {}
        for lane in self.lanes:
            ep = run.endpoints[lane.index]
            lane_run = LaneRun(lane, self.spec, run.paths, run.request, run.total, ep, run.run_id, None, run.schemas)
            self.inputs[lane.index] = LaneInput(lane_run)
            self.clients[lane.index] = provider_for(ep, headers)
            self.wires[lane.index] = ep.wire
        self.cache = open_cache(self.spec.cache)
        self.interrupted = threading.Event()
        self.started = time.monotonic()
        self.shown: dict[str, tuple[str, int]] = {}

    def __enter__(self) -> _Batches:
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self.clients.values():
            client.http.close()
        if self.cache is not None:
            self.cache.close()

    # -- the run ------------------------------------------------------------------------------

    def go(self, wait: bool) -> RunOutcome:
        run, say = self.run, self.reporter.say
        with on_stop_signals(self.interrupted.set):
            self._hand_back()
            records = [r for r in self.ledger.records() if r.open and r.lane in self.inputs]
            if self.cancelling:
                return self._cancel(records)
            self._recover([r for r in records if r.state == INTENT])
            over_budget = self._submit_new()
            if self.live and (stopped := self._run_live()) is not None:
                return stopped
            open_records = [r for r in self.ledger.records() if r.state == SUBMITTED and r.lane in self.inputs]
            if not wait:
                self._look(open_records, once=True)
                if any(r.state == SUBMITTED for r in open_records):
                    self.run.run_dir.flush()
                    waiting = sum(len(r.rows) for r in open_records if r.state == SUBMITTED)
                    message = (f"{waiting} rows are in {sum(r.state == SUBMITTED for r in open_records)} batches at the provider; "
                               f"`prompt-runner status {run.spec.output}` shows them, `prompt-runner resume {run.spec.output}` collects them")
                    return run.outcome(Stop.SUBMITTED, message=message)
            elif not self._look(open_records, once=False):
                self.run.run_dir.flush()
                message = (f"the batches go on at the provider; `prompt-runner resume {run.spec.output}` collects them, "
                           f"`prompt-runner cancel {run.spec.output}` cancels them")
                return run.outcome(Stop.INTERRUPTED, message=message)
            if self.spec.fallback == "live":
                self._fallback()
            outcome = self._finish()
            if over_budget and outcome.stop is Stop.COMPLETED:
                outcome.stop, outcome.message = Stop.BUDGET, over_budget
            say(f"batches: {self._count_line()}")
            return outcome

    def _hand_back(self) -> None:
        """Results a live run left in the run's log (not in a part yet) go to a part."""
        recovered = self.run.recovered
        if recovered is None or not recovered.num_rows:
            return
        for lane in self.lanes:
            mine = {r for r in recovered.column("_row").to_pylist() if lane.index * self.run.total <= r < (lane.index + 1) * self.run.total}
            if not mine:
                continue
            table = recovered.filter(pa.array([r in mine for r in recovered.column("_row").to_pylist()]))
            results = table.drop_columns(["cost_usd"]) if "cost_usd" in table.column_names else table
            self._write(lane.index, results, None, price_factor=1.0)
        self.run.run_dir.flush(recovered=not self.live)

    # -- submitting -----------------------------------------------------------------------------

    def _recover(self, intents: list[BatchRecord]) -> None:
        """Records whose batch may or may not exist (a crash between intent and record): the
        batch found at the provider is adopted; else the rows are submitted again."""
        for record in intents:
            client = self.clients[record.lane]
            found = client.find(self._tag(record), record.intent_at, len(record.rows), self.ledger.claimed(record))
            if found is not None:
                self.ledger.update(record, state=SUBMITTED, batch_id=found.id, how="found", status=found.status)
                self.reporter.say(f"batch {record.key}: found {found.id}, created before the last run stopped; not submitted again")
                continue
            _, lines = self._lines(record.lane, set(record.rows), from_cache=False)
            self._create(record, lines)

    def _submit_new(self) -> str | None:
        """Submits the rows no record holds and no part settles, in batches within the limits
        and the budget. Returns why it stopped short (the budget), if it did."""
        run, o = self.run, self.spec
        held = {row for r in self.ledger.records() if r.open for row in r.rows}
        committed = run.spent + sum(r.estimate for r in self.ledger.records() if r.open)
        skip = run.skip | held | (set(run.recovered.column("_row").to_pylist()) if run.recovered is not None else set())
        for lane in self.lanes:
            max_requests, max_bytes = plan.limits(self.wires[lane.index], o.batch_size)
            wanted = {r for r in range(lane.index * run.total, (lane.index + 1) * run.total) if r not in skip}
            if not wanted:
                continue
            rows, lines = self._lines(lane.index, wanted, from_cache=True)
            for part in plan.split(rows, lines, max_requests, max_bytes):
                cost = plan.estimate(lane.model, o.prices, sum(len(line) for line in part.lines), len(part.rows), o.max_tokens) or 0.0
                if o.max_cost is not None and committed + cost > o.max_cost:
                    unsent = len(rows) - rows.index(part.rows[0])
                    why = (f"the budget of ${o.max_cost:g} does not cover the next batch (estimated ${cost:.4f} at the batch price, "
                           f"${committed:.4f} spent or committed); {unsent} rows of {lane.model} were not submitted")
                    self.reporter.say(why)
                    return why
                committed += cost
                record = BatchRecord(key=self.ledger.next_key(lane.index), lane=lane.index, rows=part.rows, bytes=part.bytes, estimate=cost)
                self.ledger.save(record)  # the intent, durable before anything can create the batch
                self._create(record, part.lines)
        return None

    def _lines(self, lane_index: int, wanted: set[int], from_cache: bool) -> tuple[list[int], list[str]]:
        """The Batch API lines of a lane's `wanted` rows, in input order, with their rows; with
        `from_cache`, rows the cache answers go to a part instead."""
        lane_input, client = self.inputs[lane_index], self.clients[lane_index]
        rows: list[int] = []
        lines: list[str] = []
        for piece in lane_input.slices(wanted):
            piece_rows, payloads = self._from_cache(lane_index, piece) if from_cache else (piece.rows, piece.payloads)
            for row, (body, _) in zip(piece_rows, lane_input.bodies(payloads)):
                rows.append(row)
                lines.append(client.line(custom_id(row), body))
        return rows, lines

    def _create(self, record: BatchRecord, lines: list[str]) -> None:
        client = self.clients[record.lane]
        name = f"{self.run.run_id}-{record.key}"

        def uploaded(file_id: str) -> None:
            self.ledger.update(record, file_id=file_id)

        batch = client.create(name, lines, self._tag(record), uploaded, record.file_id)
        self.ledger.update(record, state=SUBMITTED, batch_id=batch.id, how="created", status=batch.status, checked_at=time.time())
        lane = self.run.lanes[record.lane]
        self.reporter.say(f"batch {record.key}: {len(record.rows)} rows of {lane.model} submitted as {batch.id}"
                          f" (estimated ${record.estimate:.4f} at the batch price)")

    def _tag(self, record: BatchRecord) -> dict[str, str]:
        """The metadata that names a batch as this run's (OpenAI; Anthropic has no metadata)."""
        return {"prompt_runner_run": self.run.run_id, "prompt_runner_batch": record.key}

    def _from_cache(self, lane_index: int, piece: Slice) -> tuple[list[int], list[str]]:
        """Rows answered from the cache go to a part; the others are returned to be sent."""
        rows, payloads = piece.rows, piece.payloads
        if self.cache is None:
            return rows, payloads
        from runner.store.cache import hits_table

        keys = self._cache_keys(lane_index, payloads)
        found = self.cache.lookup(keys)
        if found:
            hits = hits_table(rows, keys, found)
            at = pa.array([i for i, k in enumerate(keys) if k in found], pa.int64())
            self._write(lane_index, hits, None, cached=True, inputs=(piece.inputs.take(at), piece.ids.take(at)))
        misses = [i for i, k in enumerate(keys) if k not in found]
        return [rows[i] for i in misses], [payloads[i] for i in misses]

    def _cache_keys(self, lane_index: int, payloads: list[str]) -> list[str]:
        from runner.store.cache import cache_keys

        lane, o = self.run.lanes[lane_index], self.spec
        ep = self.run.endpoints[lane_index]
        return cache_keys(lane.provider, ep.api_base if lane.provider != "mock" else None, lane.model, payloads,
                          o.system, o.temperature, o.max_tokens, lane.params)

    # -- waiting and collecting -----------------------------------------------------------------

    def _look(self, records: list[BatchRecord], once: bool) -> bool:
        """Follows the batches until every one has ended and is collected (or, `once`, looks
        once and collects those that ended). False when interrupted first."""
        pending = [r for r in records if r.state == SUBMITTED]
        delay = FIRST_POLL
        while pending:
            for record in list(pending):
                if self.interrupted.is_set():
                    return False
                batch = self._get(record)
                if batch is None:
                    pending.remove(record)
                    continue
                self._show(record, batch)
                self.ledger.update(record, status=batch.status, done=batch.done, ok=batch.ok, failed=batch.failed, checked_at=time.time())
                if batch.ended:
                    self._collect(record, batch)
                    pending.remove(record)
            if once or not pending:
                return True
            if self.interrupted.wait(delay):
                return False
            delay = min(LONGEST_POLL, delay * 1.5)
        return True

    def _get(self, record: BatchRecord) -> Batch | None:
        assert record.batch_id is not None
        try:
            return self.clients[record.lane].get(record.batch_id)
        except BatchApiError as err:
            if err.status != 404 or self.run.lanes[record.lane].provider != "mock":
                raise
        # The built-in mock's batches end with the process that started it: submit them again.
        self.ledger.update(record, state=ABANDONED, status="lost with the built-in mock")
        self.reporter.say(f"batch {record.key}: {record.batch_id} ended with the built-in mock server of an earlier run; "
                          "its rows are submitted again on the next resume")
        return None

    def _show(self, record: BatchRecord, batch: Batch) -> None:
        seen = (batch.status, batch.done)
        if self.shown.get(record.key) == seen:
            return
        self.shown[record.key] = seen
        total = batch.total or len(record.rows)
        self.reporter.say(f"batch {record.key} ({batch.id}): {batch.status}, {batch.done}/{total} done"
                          + (f", {batch.failed} failed" if batch.failed else ""))

    def _collect(self, record: BatchRecord, batch: Batch) -> None:
        """Reads an ended batch's results into checkpoint parts (a row missing from them is an
        error row, sent again on a resume), then records the batch as collected."""
        client, lane_input = self.clients[record.lane], self.inputs[record.lane]
        wanted = set(record.rows)
        answers: dict[int, tuple[Any, ...]] = {}
        foreign = 0
        for custom, status, body, kind, error in client.results(batch):
            row = row_of(custom)
            if row in wanted:
                answers[row] = (status, body, kind, error)
            else:
                foreign += 1
        if foreign and record.how == "found" and not answers:
            # Not ours after all (Anthropic, matched by size and time): look again next time.
            self.ledger.update(record, state=INTENT, batch_id=None, how=None, passed_over=[*record.passed_over, batch.id])
            self.reporter.say(f"batch {record.key}: {batch.id} holds other rows; it is not this run's")
            return
        missing = _missing(batch)
        started = int(batch.created_at * 1e6) if batch.created_at else int(record.intent_at * 1e6)
        finished = int(time.time() * 1e6)
        for piece in lane_input.slices(wanted):
            items = []
            for row, (_, digest) in zip(piece.rows, lane_input.bodies(piece.payloads)):
                status, body, kind, error = answers.get(row, missing)
                items.append((row, digest, status, body, kind, error, started, finished))
            results = lane_input.results(items)
            if self.cache is not None:
                self.cache.store_results(self._cache_keys(record.lane, piece.payloads), results)
            self._write(record.lane, results, batch.id, inputs=(piece.inputs, piece.ids))
        self.run.run_dir.flush()
        self.ledger.update(record, state=COLLECTED, status=batch.status, ok=batch.ok, failed=batch.failed)

    def _write(self, lane_index: int, results: pa.Table, batch_id: str | None, cached: bool = False,
               inputs: tuple[pa.Table, pa.Array] | None = None, price_factor: float = BATCH_DISCOUNT) -> None:
        """Result rows joined to their input rows, appended to the run directory."""
        lane = self.run.lanes[lane_index]
        if inputs is None:
            order = {row: i for i, row in enumerate(results.column("_row").to_pylist())}
            for piece in self.inputs[lane_index].slices(set(order)):
                mine = results.take(pa.array([order[row] for row in piece.rows], pa.int64()))
                self._write(lane_index, mine, batch_id, cached, (piece.inputs, piece.ids), price_factor)
            return
        table = output_rows(lane, self.spec.prices, self.run.run_id, inputs[0], inputs[1], results, cached, price_factor)
        table = table.append_column("batch_id", pa.array([batch_id] * table.num_rows, pa.string()))
        self.run.run_dir.append(table)

    # -- the rest -----------------------------------------------------------------------------

    def _cancel(self, records: list[BatchRecord]) -> RunOutcome:
        """Cancels every open batch (an intent's batch, if it was created after all), then
        collects what the batches finished."""
        for record in records:
            client = self.clients[record.lane]
            if record.state == INTENT:
                found = client.find(self._tag(record), record.intent_at, len(record.rows), self.ledger.claimed(record))
                if found is None:
                    self.ledger.update(record, state=ABANDONED, status="never created")
                    continue
                self.ledger.update(record, state=SUBMITTED, batch_id=found.id, how="found")
            assert record.batch_id is not None
            batch = client.cancel(record.batch_id) if not self._ended(record) else None
            self.reporter.say(f"batch {record.key} ({record.batch_id}): " + (f"{batch.status}" if batch else "already ended"))
        if not records:
            self.reporter.say("no batch of this run is open at the provider")
        if not self._look([r for r in records if r.state == SUBMITTED], once=False):
            return self.run.outcome(Stop.INTERRUPTED, message="the cancelled batches are still ending; `prompt-runner cancel` again collects them")
        return self._finish()

    def _ended(self, record: BatchRecord) -> bool:
        assert record.batch_id is not None
        return self.clients[record.lane].get(record.batch_id).ended

    def _run_live(self) -> RunOutcome | None:
        """The run's live models (a job's `mode = "live"` beside batch ones) are sent as usual;
        their outcome when they stopped the run."""
        from runner.engine.live import LiveEngine

        sub = replace(self.run, lanes=self.live, streamable=False)
        outcome = LiveEngine().execute(sub, self.reporter)
        return None if outcome.stop in (Stop.COMPLETED, Stop.BUDGET) else outcome

    def _fallback(self) -> None:
        """Rows the batches could not run in time (expired, cancelled) are sent live."""
        from runner.engine.live import LiveEngine

        latest = self.run.run_dir.latest(["_row", "status", "error_type"])
        if not latest.height or "error_type" not in latest.columns:
            return
        late = latest.filter(pl.col("error_type").is_in(["expired", "cancelled"]))["_row"].to_list()
        late = [r for r in late if any(lane.index * self.run.total <= r < (lane.index + 1) * self.run.total for lane in self.lanes)]
        if not late:
            return
        self.reporter.say(f"--fallback live: sending {len(late)} rows the batches did not run")
        everything = set(range(self.run.rows))
        sub = replace(self.run, lanes=self.lanes, settled=everything - set(late), recovered=None, streamable=False)
        LiveEngine().execute(sub, self.reporter)

    def _finish(self) -> RunOutcome:
        """Compacts the output from the parts, and counts."""
        from runner.engine.progress import summary

        run_dir = self.run.run_dir
        run_dir.flush()
        open_rows = sum(len(r.rows) for r in self.ledger.records() if r.open)
        elapsed = time.monotonic() - self.started
        record = run_dir.record() or {}
        metadata = {META_CONFIG: json.dumps(record).encode(), META_SUMMARY: json.dumps({"elapsed_s": round(elapsed, 3), "batches": self._counts()}).encode()}
        table = run_dir.compact(metadata, lambda: self._empty_schema())
        self.reporter.say(summary(table, elapsed))
        statuses = table.column("status").to_pylist() if "status" in table.column_names else []
        ok, failed = statuses.count("ok"), statuses.count("error")
        outcome = self.run.outcome(Stop.COMPLETED, written=table.num_rows, ok=ok, failed=failed)
        if open_rows:
            outcome.stop, outcome.message = Stop.INTERRUPTED, f"{open_rows} rows are still in open batches"
        return outcome

    def _empty_schema(self) -> pa.Schema:
        lane = next(iter(self.inputs.values())).lane
        return lane.empty_output().append_column("batch_id", pa.array([], pa.string())).schema

    def _counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.ledger.records():
            counts[record.state] = counts.get(record.state, 0) + 1
        return counts

    def _count_line(self) -> str:
        records = self.ledger.records()
        created = sum(1 for r in records if r.batch_id)
        return f"{created} created for this run in all, " + ", ".join(f"{n} {state}" for state, n in self._counts().items())


def _missing(batch: Batch) -> tuple[Any, ...]:
    """The answer of a row a batch's results leave out."""
    if batch.status == "expired":
        return (None, None, "expired", "the batch expired before this request ran")
    if batch.status in ("cancelled", "cancelling", "canceling"):
        return (None, None, "cancelled", "the batch was cancelled before this request ran")
    if batch.status == "failed":
        return (400, None, "bad_request", f"the batch failed validation: {batch.errors or 'no reason given'}")
    return (None, None, "invalid_response", f"missing from the results of batch {batch.id}")
