"""The live engine: one run of a spec as concurrent requests. Preflight, one lane per model,
the run directory and its log, budget, the final output; it returns a `RunOutcome` and writes
its lines to the `Reporter` it is given (see ARCHITECTURE.md, "The run")."""

from __future__ import annotations

import json
import shlex
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.compute as pc

from runner import __version__, memory
from runner.engine import endpoint, observability
from runner.store.checkpoint import FLUSH_ROWS, OutputError, RunDir, digests_in_background, oserror_text
from runner.inputs.dataset import iter_chunks, resolve_inputs, scan
from runner.errors import InputError
from runner.engine.lane import LaneRun
from runner.engine.spec import RunOptions
from runner.engine.outcome import Reporter, RunOutcome, Stop
from runner.engine.pricing import price_of
from runner.engine.progress import Progress, pace_text, summary
from runner.inputs.render import RequestSpec, plan
from runner.schema import META_CONFIG, META_SUMMARY
from runner.engine.shutdown import Shutdown, stop_signals

#: How long one poll of the executors waits at most; also the pace of progress.
POLL_SECONDS = 0.2

__all__ = ["Batch", "resume_command"]


class Batch:
    """One `run`: owns the lanes (one per model), the run directory and the run loop."""

    def __init__(self, opts: RunOptions, reporter: Reporter | None = None) -> None:
        opts.check()
        self.opts = opts
        self.reporter = reporter or Reporter()
        self.say = self.reporter.say
        self.paths = resolve_inputs(opts.input)
        self.spec = RequestSpec(template=opts.template, system=opts.system, id_column=opts.id_column)
        self.lanes = opts.lanes()
        self.run_id = uuid.uuid4().hex[:12]

    # -- preflight -------------------------------------------------------------------------

    def request_fingerprint(self) -> dict[str, Any]:
        """Everything that changes what is sent for a row; a saved run must match it."""
        o = self.opts
        return {
            "models": [
                [lane.provider, lane.model, None if lane.provider == "mock" else lane.api_base] for lane in self.lanes
            ],
            "template": o.template,
            "system": o.system,
            "id_column": self.spec.id_column,
            "temperature": o.temperature,
            "max_tokens": o.max_tokens,
        }

    def record(self, total: int, inputs: list[dict[str, Any]], saved: dict[str, Any] | None) -> dict[str, Any]:
        """run.json: the options, the fingerprints and the row count (never a key)."""
        return {
            "run_id": self.run_id,
            "version": __version__,
            "created_at": (saved or {}).get("created_at") or datetime.now(timezone.utc).isoformat(),
            "updated_at": datetime.now(timezone.utc).isoformat(),
            "rows": total * len(self.lanes),
            "input_rows": total,
            "options": self.opts.saved(),
            "fingerprint": {"input": inputs, "request": self.request_fingerprint()},
        }

    def _check_same_run(self, saved: dict[str, Any], inputs: list[dict[str, Any]]) -> None:
        """Refuses to mix two different runs in one output."""
        old = saved.get("fingerprint", {})
        changed = [k for k, v in self.request_fingerprint().items() if old.get("request", {}).get(k) != v]
        same_input = [(f["size"], f["sha256"]) for f in old.get("input", [])] == [(f["size"], f["sha256"]) for f in inputs]
        if not same_input:
            changed.insert(0, "input")
        if changed:
            raise InputError(
                f"{self.opts.output}: the saved run differs in {', '.join(changed)}; "
                "pass --restart to start over, or write to another output"
            )

    def dry_run(self, rows: int) -> RunOutcome:
        """Counts, shows the first request, and estimates tokens and cost; sends nothing."""
        chars, first = 0, None
        renderers: dict[Path, Any] = {}
        seen = 0
        for chunk in iter_chunks(self.paths):
            if seen >= rows:
                break
            table = chunk.table.slice(0, rows - seen)
            if chunk.path not in renderers:
                renderers[chunk.path] = plan(table.column_names, self.spec, str(chunk.path))
            payloads = renderers[chunk.path].render(table, chunk)
            if first is None and payloads:
                first = payloads[0]
            chars += sum(len(p) for p in payloads)
            seen += table.num_rows
        system_chars = len(self.opts.system or "") * rows
        prompt_tokens = (chars + system_chars) // 4
        completion_tokens = (self.opts.max_tokens or 0) * rows
        self.say(f"{rows} rows × {len(self.lanes)} model(s); nothing was sent.")
        for lane in self.lanes:
            price = price_of(lane.model, self.opts.prices)
            cost = (
                "unknown (no price for this model)"
                if price is None
                else f"${(prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6:.4f}"
                + ("" if self.opts.max_tokens else " + output (no --max-tokens to bound it)")
            )
            self.say(
                f"{lane.provider}/{lane.model}: ~{prompt_tokens:,} prompt tokens, "
                f"≤{completion_tokens:,} completion tokens, estimated cost {cost}"
            )
        if first is not None:
            request = {"model": self.lanes[0].model, "messages": json.loads(first)}
            if self.opts.system:
                request["system"] = self.opts.system
            self.say("first request: " + json.dumps(request, ensure_ascii=False, indent=2))
        return RunOutcome(self.opts.output, Stop.DRY_RUN, rows=rows * len(self.lanes))

    # -- run -------------------------------------------------------------------------------

    def run(self) -> RunOutcome:
        """Runs the spec; user mistakes raise `RunnerError` before anything is sent."""
        digests = None if self.opts.dry_run else digests_in_background(self.paths)
        summary_scan = scan(self.paths, self.spec)
        total = summary_scan.rows if self.opts.limit is None else min(summary_scan.rows, self.opts.limit)
        if digests is None:
            return self.dry_run(total)
        run_dir = RunDir(self.opts.output)
        try:
            self.opts.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"{self.opts.output}: cannot create its directory: {oserror_text(err)}") from None
        inputs = digests()
        saved = run_dir.record()
        if self.opts.restart:
            if (pid := run_dir.holder()) is not None:
                raise InputError(f"{self.opts.output}: another prompt-runner (pid {pid}) is running on it")
            run_dir.remove()
            saved = None
        elif saved is not None:
            self._check_same_run(saved, inputs)
            self.run_id = saved.get("run_id", self.run_id)
        endpoints: list[endpoint.Endpoint] = []
        try:
            for lane in self.lanes:
                endpoints.append(endpoint.resolve(lane.provider, lane.api_base, lane.api_key_env, self.opts.mock_config))
            run_dir.prepare()
            try:
                run_dir.write_record(self.record(total, inputs, saved))
                # The feeders read the input again with the types the scan found.
                return self._run(endpoints, run_dir, total, summary_scan.schemas)
            finally:
                run_dir.release()
        finally:
            for ep in endpoints:
                ep.close()

    def _open_cache(self) -> Any:
        if not self.opts.cache:
            return None
        from runner.store.cache import ResponseCache

        return ResponseCache.open()

    def _run(
        self, endpoints: list[endpoint.Endpoint], run_dir: RunDir, total: int, schemas: dict[Path, list[Any]]
    ) -> int:
        o = self.opts
        # Never hold back more than 0.5 % of the rows (nor a second's worth) out of a part.
        run_dir.flush_rows = min(FLUSH_ROWS, max(1, total * len(self.lanes) // 200))
        logged = run_dir.logged([lane.model for lane in self.lanes], total, o.prices)
        settled, spent = run_dir.saved(o.retry_failed, logged)
        # Rows the log holds reach a part through the lanes again, with their input columns.
        recovered = logged.filter(pc.equal(logged.column("status"), "ok")) if o.retry_failed else logged
        skip = settled.difference(recovered.column("_row").to_pylist())
        grand_total = total * len(self.lanes)
        to_send = grand_total - sum(1 for r in settled if r < grand_total)
        if settled:
            self.say(f"resuming: {grand_total - to_send} of {grand_total} rows are settled and will not be sent again")
        if o.max_cost is not None and spent >= o.max_cost:
            message = f"the budget of ${o.max_cost:g} is already spent (${spent:.4f})"
            return self._end(run_dir, RunOutcome(o.output, Stop.BUDGET, rows=grand_total, message=message))
        if len(self.lanes) == 1:  # a matrix's rows finish lane by lane out of order: it compacts
            run_dir.stream_output(grand_total)
        cache = self._open_cache()
        lanes = [
            LaneRun(lane, o, self.paths, self.spec, total, ep, self.run_id, cache, schemas)
            for lane, ep in zip(self.lanes, endpoints)
        ]
        for lane in lanes:
            lane.start(skip, recovered, run_dir.log.prefix(lane.lane.index))
        metrics_server = observability.start_metrics(
            o.metrics_port, [(lane.executor, lane.lane.provider, lane.lane.model) for lane in lanes], self.reporter.stream
        )
        started = time.monotonic()
        stop = Shutdown([lane.executor for lane in lanes], o.grace_period, self.reporter.stream)
        write_error: OutputError | None = None
        over_budget = False
        label = f"{self.lanes[0].provider}/{self.lanes[0].model}" if len(lanes) == 1 else f"{len(lanes)} models"
        active = list(lanes)

        def take(lane: LaneRun, wait: float) -> None:
            """Adds the lane's results that are ready to the rows waiting for a part."""
            nonlocal spent
            tables = lane.poll(wait)
            if tables is None:
                active.remove(lane)
                return
            if write_error is not None:
                return  # stopping: nothing more can be saved
            for table in tables:
                run_dir.append(table)
                if o.max_cost is not None:
                    spent += pc.sum(table.column("cost_usd")).as_py() or 0.0

        def flush() -> None:
            """Seals the lanes' log segments, takes every row they hold, and writes the waiting
            rows as a part; then the sealed segments can go."""
            sealed = [Path(p) for lane in lanes if (p := lane.executor.roll_log()) is not None]
            for lane in list(active):
                take(lane, 0)
            run_dir.flush(sealed, recovered=all(lane.recovered_left == 0 for lane in lanes))

        with Progress(total=to_send, label=label, stream=self.reporter.stream) as progress, stop_signals(stop):
            while active:
                wait = run_dir.seconds_to_flush(POLL_SECONDS) / len(active)
                for lane in list(active):
                    take(lane, wait)
                stop.check()
                if o.max_cost is not None and spent >= o.max_cost and not over_budget:
                    over_budget = True
                    for lane in lanes:
                        lane.executor.drain()
                    self.say(f"\nbudget reached: ${spent:.4f} of ${o.max_cost:g}; no new requests are sent")
                if write_error is None:
                    try:
                        if run_dir.flush_due():
                            flush()
                    except OutputError as err:
                        write_error = err
                        for lane in lanes:
                            lane.executor.cancel()
                self._progress(progress, lanes)
                memory.trim()
        if write_error is None:
            try:
                flush()
            except OutputError as err:
                write_error = err
        observability.stop_metrics(metrics_server)
        for lane in lanes:
            lane.join_feeder()
        if cache is not None:
            cache.close()
        elapsed = time.monotonic() - started
        for lane in lanes:
            if lane.feed_error is not None:
                raise lane.feed_error
        if write_error is not None:
            return self._end(run_dir, RunOutcome(o.output, Stop.WRITE_ERROR, rows=grand_total, message=str(write_error)))
        if stop.requested:
            logged = run_dir.logged([lane.model for lane in self.lanes], total, o.prices)
            ok, failed = _counts(run_dir.latest(["_row", "status"], logged))
            saved_rows = len(run_dir.saved(o.retry_failed, logged)[0])
            message = f"{saved_rows} of {grand_total} rows are saved in {run_dir.path}"
            return self._end(run_dir, RunOutcome(o.output, Stop.INTERRUPTED, grand_total, 0, ok, failed, message))
        fatal = [lane.executor.fatal_error() for lane in lanes if lane.executor.fatal_error()]
        table = run_dir.compact(self._metadata(run_dir, lanes, elapsed), lambda: lanes[0].empty_output().schema)
        self.say(summary(table, elapsed))
        if (pace := self._pace(lanes, [lane.executor.stats() for lane in lanes])) is not None:
            self.say(f"pacing: {pace}")
        if any(lane.cache_hits for lane in lanes):
            self.say(f"cache: {sum(lane.cache_hits for lane in lanes)} rows answered from the cache")
        ok, failed = _counts(pl.from_arrow(table.select(["status"])))
        outcome = RunOutcome(o.output, Stop.COMPLETED, grand_total, table.num_rows, ok, failed)
        if fatal:
            outcome.stop, outcome.message = Stop.STOPPED, fatal[0]
        elif over_budget:
            outcome.stop, outcome.message = Stop.BUDGET, "stopped at the budget"
        return self._end(run_dir, outcome)

    @staticmethod
    def _end(run_dir: RunDir, outcome: RunOutcome) -> RunOutcome:
        """Keeps how the run ended in its run state, for `status` (best effort: a full disk
        may refuse it, and the state stays as it was)."""
        record = run_dir.record()
        if record is not None:
            try:
                run_dir.write_record({**record, "outcome": outcome.record()})
            except OutputError:
                pass
        return outcome

    @staticmethod
    def _progress(progress: Progress, lanes: list[LaneRun]) -> None:
        totals = dict.fromkeys(("done", "ok", "failed", "retrying", "prompt_tokens", "completion_tokens"), 0)
        stats = [lane.executor.stats() for lane in lanes]
        for lane, s in zip(lanes, stats):
            for key in totals:
                totals[key] += s[key]
            totals["done"] += lane.cache_hits
            totals["ok"] += lane.cache_hits
        progress.pace = Batch._pace(lanes, stats)
        progress.update(**totals)

    @staticmethod
    def _pace(lanes: list[LaneRun], stats: list[dict[str, Any]]) -> str | None:
        """The pace of each lane that is paced by the server (from its executor's `stats`),
        prefixed by its model in a matrix."""
        paces = [(lane.lane.model, pace_text(s)) for lane, s in zip(lanes, stats)]
        shown = [f"{model}: {text}" if len(lanes) > 1 else text for model, text in paces if text]
        return "; ".join(shown) or None

    def _metadata(self, run_dir: RunDir, lanes: list[LaneRun], elapsed: float) -> dict[bytes, bytes]:
        record = run_dir.record() or {}
        metrics: dict[str, Any] = {"elapsed_s": round(elapsed, 3), "models": {}}
        for lane in lanes:
            metrics["models"][lane.lane.model] = {
                **lane.executor.stats(),
                **observability.run_metrics(lane.executor),
                "cache_hits": lane.cache_hits,
            }
        return {META_CONFIG: json.dumps(record).encode(), META_SUMMARY: json.dumps(metrics).encode()}


def _counts(frame: Any) -> tuple[int, int]:
    """Rows ok and failed in a frame's `status` column."""
    if "status" not in frame.columns:
        return 0, 0
    return int((frame["status"] == "ok").sum()), int((frame["status"] == "error").sum())


def resume_command(output: Path) -> str:
    """The command that continues this run from its saved state."""
    return shlex.join(["prompt-runner", "resume", str(output)])
