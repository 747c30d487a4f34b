"""The live engine: a prepared run sent as concurrent requests, one lane (a native executor)
per model, results appended to the run directory as they settle, the output compacted at the
end. See ARCHITECTURE.md, "The path of a row"."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.compute as pc

from runner import memory
from runner.engine import observability, permits
from runner.engine.base import Prepared
from runner.engine.lane import LaneRun
from runner.engine.outcome import Reporter, RunOutcome, Stop
from runner.engine.pricing import with_cost
from runner.engine.progress import Progress, pace_text, summary
from runner.engine.shutdown import Shutdown, stop_signals
from runner.schema import META_CONFIG, META_SUMMARY
from runner.store.checkpoint import OutputError, RunDir

#: How long one poll of the executors waits at most; also the pace of progress.
POLL_SECONDS = 0.2

__all__ = ["LiveEngine"]


class LiveEngine:
    """Sends every row that is not settled, at the limits of the spec and the servers."""

    def execute(self, run: Prepared, reporter: Reporter) -> RunOutcome:
        o, run_dir, say = run.spec, run.run_dir, reporter.say
        spent, grand_total = run.spent, run.rows
        source = permits.current()  # a shard of a larger run: the budget is the run's
        to_send = grand_total - sum(1 for r in run.settled if r < grand_total)
        if len(run.lanes) == 1 and run.streamable:  # a matrix's rows finish lane by lane out of order: it compacts
            run_dir.stream_output(grand_total)
        from runner.store.cache import open_cache

        cache = open_cache(o.cache)
        lanes = [
            LaneRun(lane, o, run.paths, run.request, run.total, ep, run.run_id, cache, run.schemas)
            for lane, ep in zip(run.lanes, run.endpoints)
        ]
        for lane in lanes:
            lane.start(run.skip, run.recovered, run_dir.log.prefix(lane.lane.index))
        metrics_server = observability.start_metrics(
            o.metrics_port, [(lane.executor, lane.lane.provider, lane.lane.model) for lane in lanes], reporter.stream
        )
        started = time.monotonic()
        stop = Shutdown([lane.executor for lane in lanes], o.grace_period, reporter.stream)
        write_error: OutputError | None = None
        over_budget = False
        label = f"{run.lanes[0].provider}/{run.lanes[0].model}" if len(lanes) == 1 else f"{len(lanes)} models"
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

        with Progress(total=to_send, label=label, stream=reporter.stream) as progress, stop_signals(stop):
            while active:
                wait = run_dir.seconds_to_flush(POLL_SECONDS) / len(active)
                for lane in list(active):
                    take(lane, wait)
                stop.check()
                run_spent = spent if o.max_cost is None or source is None else source.spent(spent)
                if o.max_cost is not None and run_spent >= o.max_cost and not over_budget:
                    over_budget = True
                    for lane in lanes:
                        lane.executor.drain()
                    whose = "" if source is None else " by the whole run"
                    say(f"\nbudget reached: ${run_spent:.4f} of ${o.max_cost:g} spent{whose}; no new requests are sent")
                if write_error is None:
                    try:
                        if run_dir.flush_due():
                            flush()
                    except OutputError as err:
                        write_error = err
                        for lane in lanes:
                            lane.executor.cancel()
                _progress(progress, lanes)
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
            return run.outcome(Stop.WRITE_ERROR, message=str(write_error))
        if stop.requested:
            logged = with_cost(run_dir.logged(), [lane.model for lane in run.lanes], run.total, o.prices)
            ok, failed = _counts(run_dir.latest(["_row", "status"], logged))
            saved_rows = len(run_dir.saved(o.retry_failed, logged)[0])
            message = f"{saved_rows} of {grand_total} rows are saved in {run_dir.path}"
            return run.outcome(Stop.INTERRUPTED, ok=ok, failed=failed, message=message)
        fatal = [lane.executor.fatal_error() for lane in lanes if lane.executor.fatal_error()]
        table = run_dir.compact(_metadata(run_dir, lanes, elapsed), lambda: lanes[0].empty_output().schema)
        say(summary(table, elapsed))
        if (pace := _pace(lanes, [lane.executor.stats() for lane in lanes])) is not None:
            say(f"pacing: {pace}")
        if any(lane.cache_hits for lane in lanes):
            say(f"cache: {sum(lane.cache_hits for lane in lanes)} rows answered from the cache")
        ok, failed = _counts(pl.from_arrow(table.select(["status"])))
        outcome = run.outcome(Stop.COMPLETED, written=table.num_rows, ok=ok, failed=failed)
        if fatal:
            outcome.stop, outcome.message = Stop.STOPPED, fatal[0]
        elif over_budget:
            outcome.stop, outcome.message = Stop.BUDGET, "stopped at the budget"
        return outcome


def _progress(progress: Progress, lanes: list[LaneRun]) -> None:
    totals = dict.fromkeys(("done", "ok", "failed", "retrying", "prompt_tokens", "completion_tokens"), 0)
    stats = [lane.executor.stats() for lane in lanes]
    for lane, s in zip(lanes, stats):
        for key in totals:
            totals[key] += s[key]
        totals["done"] += lane.cache_hits
        totals["ok"] += lane.cache_hits
    progress.pace = _pace(lanes, stats)
    progress.update(**totals)


def _pace(lanes: list[LaneRun], stats: list[dict[str, Any]]) -> str | None:
    """The pace of each lane that is paced by the server (from its executor's `stats`),
    prefixed by its model in a matrix."""
    paces = [(lane.lane.model, pace_text(s)) for lane, s in zip(lanes, stats)]
    shown = [f"{model}: {text}" if len(lanes) > 1 else text for model, text in paces if text]
    return "; ".join(shown) or None


def _metadata(run_dir: RunDir, lanes: list[LaneRun], elapsed: float) -> dict[bytes, bytes]:
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
