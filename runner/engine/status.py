"""`prompt-runner status`: where a run stands, read from its state directory (or its output)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from runner.engine.pricing import with_cost
from runner.stats import row_stats
from runner.store.checkpoint import RunDir
from runner.errors import InputError
from runner.engine.progress import format_duration


def run_status(output: Path) -> dict[str, Any]:
    """Counts, tokens, cost, latencies and state of the run writing `output`.

    Works while the run is going (it reads only whole part files and log records), after it
    finished, and after it was killed.
    """
    run_dir = RunDir(output)
    record = run_dir.record()
    if record is not None:
        models = [m[1] for m in record.get("fingerprint", {}).get("request", {}).get("models", [])]
        prices = record.get("options", {}).get("prices")
        frame = run_dir.latest(logged=with_cost(run_dir.logged(), models, int(record.get("input_rows", 0)), prices))
        total = int(record.get("rows", frame.height))
    elif output.is_file():
        frame = pl.read_parquet(output)
        total = frame.height
    else:
        raise InputError(f"{output}: no run here (no {run_dir.path.name}/ and no output file)")
    stats = row_stats(frame.to_arrow(), by_model=False)[0] if "status" in frame.columns else None
    ok, failed = (stats["ok"], stats["failed"]) if stats else (0, 0)
    holder = run_dir.holder()
    batches = _batches(run_dir, record, fresh=holder is None)
    open_batches = [b for b in batches if b["state"] in ("intent", "submitted")]
    if holder is not None:
        state = f"running (pid {holder})"
    elif open_batches:
        state = (f"{len(open_batches)} batches open at the provider: `prompt-runner resume {output}` waits for them and "
                 f"collects them, `prompt-runner cancel {output}` cancels them")
    elif frame.height >= total and output.is_file() and _output_is_current(run_dir):
        state = "complete" if failed == 0 else "complete with failed rows"
    elif (ended := (record or {}).get("outcome") or {}).get("stop") in _STOPS:
        state = f"stopped ({_STOPS[ended['stop']]}): {str(ended.get('message')).rstrip('.')}; resume with `prompt-runner resume {output}`"
    else:
        state = "stopped (interrupted or killed): resume with `prompt-runner resume " + str(output) + "`"
    status: dict[str, Any] = {
        "output": str(output),
        "state": state,
        "rows": total,
        "done": ok + failed,
        "ok": ok,
        "failed": failed,
        "pending": max(0, total - ok - failed),
        "errors": stats["errors"] if stats else {},
        "prompt_tokens": stats["prompt_tokens"] if stats else 0,
        "completion_tokens": stats["completion_tokens"] if stats else 0,
        "cost_usd": stats["cost_usd"] if stats else None,
        "latency_ms": {f"p{q}": _rounded(stats[f"latency_p{q}_ms"]) if stats else None for q in (50, 95, 99)},
        "elapsed_s": _elapsed(frame),
    }
    status["metrics"] = _metrics(output) if holder is None else {}
    if batches:
        status["batches"] = batches
    return status


def _batches(run_dir: RunDir, record: dict[str, Any] | None, fresh: bool) -> list[dict[str, Any]]:
    """The run's provider batches (Batch API runs): as recorded, and, when `fresh` and the key
    is at hand, the open ones as the provider sees them now."""
    from runner.store.ledger import SUBMITTED, Ledger

    records = Ledger(run_dir.path).records()
    if fresh and record is not None and any(r.state == SUBMITTED for r in records):
        _refresh(records, record)
    return [
        {"key": r.key, "batch_id": r.batch_id, "state": r.state, "status": r.status, "rows": len(r.rows),
         "done": r.done, "ok": r.ok, "failed": r.failed, "checked_at": r.checked_at}
        for r in records
    ]


def _refresh(records: list[Any], record: dict[str, Any]) -> None:
    """Asks the provider about the open batches (best effort: without the key, or on any error,
    the recorded state stands)."""
    import time

    from runner.engine import endpoint
    from runner.engine.batchapi.engine import provider_for
    from runner.engine.request import resolve_headers
    from runner.engine.spec import RunSpec
    from runner.errors import RunnerError

    try:
        spec = RunSpec(output=Path("-"), **record.get("options", {}))
        lanes = spec.lanes()
        clients: dict[int, Any] = {}
        for r in records:
            lane = lanes[r.lane]
            if r.state != "submitted" or lane.provider == "mock":
                continue
            if r.lane not in clients:
                ep = endpoint.resolve(lane.provider, lane.api_base, lane.api_key_env)
                clients[r.lane] = provider_for(ep, resolve_headers(spec.headers))
            batch = clients[r.lane].get(r.batch_id)
            r.status, r.done, r.ok, r.failed, r.checked_at = batch.status, batch.done, batch.ok, batch.failed, time.time()
    except (RunnerError, TypeError, KeyError, IndexError):
        return


#: How a run that ended early says why (run.json's `outcome`, see runner.engine.outcome.Stop).
_STOPS = {"stopped": "a failure every row would share", "budget": "the budget", "write_error": "cannot write"}


def _metrics(output: Path) -> dict[str, Any]:
    """Per-model run metrics from a finished output's summary metadata."""
    if not output.is_file():
        return {}
    import pyarrow.parquet as pq

    from runner.schema import META_SUMMARY

    try:
        meta = pq.read_schema(output).metadata or {}
        return json.loads(meta.get(META_SUMMARY, b"{}")).get("models", {})
    except (OSError, ValueError):
        return {}


def _output_is_current(run_dir: RunDir) -> bool:
    if run_dir.log.segments():  # rows settled after the output was written
        return False
    parts = run_dir.readable_parts()
    return not parts or run_dir.output.stat().st_mtime >= max(p.stat().st_mtime for p in parts)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


def _elapsed(frame: pl.DataFrame) -> float | None:
    if "started_at" not in frame.columns or not frame.height:
        return None
    span = frame["finished_at"].max() - frame["started_at"].min()  # type: ignore[operator]
    return round(span.total_seconds(), 3) if span is not None else None


def format_status(s: dict[str, Any]) -> str:
    lat = s["latency_ms"]
    cost = "unknown" if s["cost_usd"] is None else f"${s['cost_usd']:.4f}"
    errors = ", ".join(f"{k}={v}" for k, v in s["errors"].items()) or "none"
    elapsed = "-" if s["elapsed_s"] is None else format_duration(s["elapsed_s"])
    lines = [
        f"{s['output']}: {s['state']}",
        f"rows: {s['rows']}  done={s['done']} ok={s['ok']} failed={s['failed']} pending={s['pending']}",
        f"errors: {errors}",
        f"tokens: prompt={s['prompt_tokens']:,} completion={s['completion_tokens']:,}  cost: {cost}",
        f"latency: p50={_ms(lat['p50'])} p95={_ms(lat['p95'])} p99={_ms(lat['p99'])}  elapsed: {elapsed}",
    ]
    from runner.engine.observability import format_metrics

    for model, metrics in s.get("metrics", {}).items():
        lines += [f"{model}: {line}" for line in format_metrics(metrics)]
    for b in s.get("batches", []):
        where = b["batch_id"] or "not created"
        counts = f", {b['done']}/{b['rows']} done" + (f", {b['failed']} failed" if b["failed"] else "") if b["status"] else ""
        lines.append(f"batch {b['key']} ({where}): {b['state']}, {b['status'] or '-'}{counts}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


def status_json(s: dict[str, Any]) -> str:
    return json.dumps(s, indent=2)
