"""One spec in, one outcome out: what every engine shares, and the seam an engine plugs into.

`run_spec` checks the spec, scans the input, opens (or resumes) the run directory under its
lock, records the run, works out what is already settled and what was spent, refuses a spent
budget, then hands a `Prepared` run to an `Engine` and keeps its `RunOutcome` in the run state.
The live engine (`live.LiveEngine`) sends requests as they go; other engines (the providers'
Batch APIs, shards) implement the same `execute`. See ARCHITECTURE.md, "Engines".
"""

from __future__ import annotations

import json
import shlex
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from runner import __version__
from runner.engine import endpoint
from runner.engine.base import Engine, Prepared
from runner.engine.outcome import Reporter, RunOutcome, Stop
from runner.engine.pricing import BATCH_DISCOUNT, price_of, with_cost
from runner.engine.spec import Lane, RunSpec
from runner.errors import InputError
from runner.inputs.dataset import iter_chunks, resolve_inputs, scan
from runner.inputs.render import RequestSpec, plan
from runner.store.ledger import Ledger
from runner.store.checkpoint import FLUSH_ROWS, OutputError, RunDir, digests_in_background, oserror_text

__all__ = ["resume_command", "run_spec"]


def run_spec(spec: RunSpec, reporter: Reporter | None = None, engine: Engine | None = None) -> RunOutcome:
    """Runs `spec` with `engine` (the live one by default); user mistakes raise `RunnerError`
    before anything is sent."""
    spec.check()
    reporter = reporter or Reporter()
    paths = resolve_inputs(spec.input)
    request = RequestSpec(template=spec.template, system=spec.system, id_column=spec.id_column)
    digests = None if spec.dry_run else digests_in_background(paths)
    found = scan(paths, request)
    spec = _batch_model(spec, found.batch_models)
    lanes = spec.lanes()
    spec.check_lanes(lanes)
    total = found.rows if spec.limit is None else min(found.rows, spec.limit)
    if spec.shard is not None:  # the shard's share of those rows (runner.engine.shard)
        from runner.engine.shard import parse_shard, shard_total

        total = shard_total(paths, request, found.schemas, spec.limit, parse_shard(spec.shard))
    if digests is None:
        return dry_run(spec, paths, request, lanes, total, reporter)
    run_dir = RunDir(spec.output)
    try:
        spec.output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{spec.output}: cannot create its directory: {oserror_text(err)}") from None
    inputs = digests()
    saved = run_dir.record()
    run_id = uuid.uuid4().hex[:12]
    if spec.restart:
        if (pid := run_dir.holder()) is not None:
            raise InputError(f"{spec.output}: another prompt-runner (pid {pid}) is running on it")
        if open_batches := Ledger(run_dir.path).open_batches():
            raise InputError(f"--restart: {len(open_batches)} batches of this run are open at the provider and billed; "
                             f"`prompt-runner cancel {spec.output}` first, or `prompt-runner resume {spec.output}` to collect them")
        run_dir.remove()
        saved = None
    elif saved is not None:
        _check_same_run(spec, request, lanes, saved, inputs)
        _check_open_batches(spec, lanes, run_dir)
        run_id = saved.get("run_id", run_id)
    endpoints: list[endpoint.Endpoint] = []
    try:
        for lane in lanes:
            endpoints.append(
                endpoint.resolve(lane.provider, lane.api_base, lane.api_key_env, spec.mock_config, spec.api_version)
            )
        run_dir.prepare()
        try:
            run_dir.write_record(_record(spec, request, lanes, run_id, total, inputs, saved))
            run = Prepared(spec, paths, request, lanes, endpoints, run_dir, run_id, total, found.schemas)
            outcome = _settle(run, reporter) or (engine or _engine(run)).execute(run, reporter)
            return _kept(run_dir, outcome)
        finally:
            run_dir.release()
    finally:
        for ep in endpoints:
            ep.close()


def _check_open_batches(spec: RunSpec, lanes: list[Lane], run_dir: RunDir) -> None:
    """A model whose rows are in batches open at the provider is never sent live as well."""
    batched = {lane.index for lane in lanes if lane.batch}
    if waiting := [r for r in Ledger(run_dir.path).open_batches() if r.lane not in batched]:
        raise InputError(f"{spec.output}: {sum(len(r.rows) for r in waiting)} rows are in batches open at the provider; "
                         f"`prompt-runner resume {spec.output}` collects them, `prompt-runner cancel {spec.output}` cancels them")


def _engine(run: Prepared) -> Engine:
    """The Batch API engine when a model goes through it (it runs the live ones too), else live."""
    if any(lane.batch for lane in run.lanes):
        from runner.engine.batchapi import BatchEngine

        return BatchEngine(wait=run.spec.wait)
    from runner.engine.live import LiveEngine

    return LiveEngine()


def _batch_model(spec: RunSpec, models: set[str]) -> RunSpec:
    """An OpenAI Batch API file runs as written: the model its lines name is the run's (one per
    file, as the Batch API has it); `--model` fills in only for lines that name none."""
    if not models:
        return spec
    if len(models) > 1:
        raise InputError(f"{spec.input}: the Batch API lines name {len(models)} models ({', '.join(sorted(models))}); "
                         "a batch file holds one model")
    (model,) = models
    if spec.models:
        raise InputError(f"{spec.input}: Batch API lines name their model ({model}); run them without a model matrix")
    return replace(spec, model=model)


def _settle(run: Prepared, reporter: Reporter) -> RunOutcome | None:
    """Reads what earlier runs settled (parts and log) into `run`; an outcome when the budget
    is already spent."""
    spec, run_dir = run.spec, run.run_dir
    # Never hold back more than 0.5 % of the rows (nor a second's worth) out of a part.
    run_dir.flush_rows = min(FLUSH_ROWS, max(1, run.rows // 200))
    logged = with_cost(run_dir.logged(), [lane.model for lane in run.lanes], run.total, spec.prices)
    run.settled, run.spent = run_dir.saved(spec.retry_failed, logged)
    run.recovered = logged.filter(pc.equal(logged.column("status"), "ok")) if spec.retry_failed else logged
    settled = sum(1 for r in run.settled if r < run.rows)
    if settled:
        reporter.say(f"resuming: {settled} of {run.rows} rows are settled and will not be sent again")
    if spec.max_cost is not None and run.spent >= spec.max_cost:
        message = f"the budget of ${spec.max_cost:g} is already spent (${run.spent:.4f})"
        return run.outcome(Stop.BUDGET, message=message)
    return None


def _kept(run_dir: RunDir, outcome: RunOutcome) -> RunOutcome:
    """Keeps how the run ended in its run state, for `status` (best effort: a full disk may
    refuse it, and the state stays as it was)."""
    record = run_dir.record()
    if record is not None:
        try:
            run_dir.write_record({**record, "outcome": outcome.record()})
        except OutputError:
            pass
    return outcome


def request_fingerprint(spec: RunSpec, request: RequestSpec, lanes: list[Lane]) -> dict[str, Any]:
    """Everything that changes what is sent for a row; a saved run must match it."""
    return {
        "models": [[lane.provider, lane.model, None if lane.provider == "mock" else lane.api_base] for lane in lanes],
        "template": spec.template,
        "system": spec.system,
        "id_column": request.id_column,
        "temperature": spec.temperature,
        "max_tokens": spec.max_tokens,
        # Added only when used, so that runs saved before they existed still match.
        **({"params": [lane.params for lane in lanes]} if any(lane.params for lane in lanes) else {}),
        **({"headers": dict(spec.headers)} if spec.headers else {}),
        **({"shard": spec.shard} if spec.shard else {}),
    }


def _record(
    spec: RunSpec,
    request: RequestSpec,
    lanes: list[Lane],
    run_id: str,
    total: int,
    inputs: list[dict[str, Any]],
    saved: dict[str, Any] | None,
) -> dict[str, Any]:
    """run.json: the options, the fingerprints and the row count (never a key)."""
    return {
        "run_id": run_id,
        "version": __version__,
        "created_at": (saved or {}).get("created_at") or datetime.now(timezone.utc).isoformat(),
        "updated_at": datetime.now(timezone.utc).isoformat(),
        "rows": total * len(lanes),
        "input_rows": total,
        "options": spec.saved(),
        "fingerprint": {"input": inputs, "request": request_fingerprint(spec, request, lanes)},
    }


def _check_same_run(
    spec: RunSpec, request: RequestSpec, lanes: list[Lane], saved: dict[str, Any], inputs: list[dict[str, Any]]
) -> None:
    """Refuses to mix two different runs in one output."""
    old = saved.get("fingerprint", {})
    now = request_fingerprint(spec, request, lanes)
    changed = [k for k, v in now.items() if old.get("request", {}).get(k) != v]
    same_input = [(f["size"], f["sha256"]) for f in old.get("input", [])] == [(f["size"], f["sha256"]) for f in inputs]
    if not same_input:
        changed.insert(0, "input")
    if changed:
        raise InputError(
            f"{spec.output}: the saved run differs in {', '.join(changed)}; "
            "pass --restart to start over, or write to another output"
        )


def dry_run(
    spec: RunSpec, paths: list[Path], request: RequestSpec, lanes: list[Lane], rows: int, reporter: Reporter
) -> RunOutcome:
    """Counts, shows the first request, and estimates tokens and cost; sends nothing."""
    chars, first = 0, None
    renderers: dict[Path, Any] = {}
    seen = 0
    for chunk in iter_chunks(paths):
        if seen >= rows:
            break
        table = chunk.table.slice(0, rows - seen)
        if chunk.path not in renderers:
            renderers[chunk.path] = plan(table.column_names, request, str(chunk.path))
        payloads = renderers[chunk.path].render_array(table, chunk).to_pylist()
        if first is None and payloads:
            first = payloads[0]
        chars += sum(len(p) for p in payloads)
        seen += table.num_rows
    system_chars = len(spec.system or "") * rows
    prompt_tokens = (chars + system_chars) // 4
    completion_tokens = (spec.max_tokens or 0) * rows
    reporter.say(f"{rows} rows × {len(lanes)} model(s); nothing was sent.")
    for lane in lanes:
        price = price_of(lane.model, spec.prices)
        factor = BATCH_DISCOUNT if lane.batch else 1.0
        cost = (
            "unknown (no price for this model)"
            if price is None
            else f"${(prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6 * factor:.4f}"
            + (" at the Batch API's price (50 %)" if lane.batch else "")
            + ("" if spec.max_tokens else " + output (no --max-tokens to bound it)")
        )
        reporter.say(
            f"{lane.provider}/{lane.model}: ~{prompt_tokens:,} prompt tokens, "
            f"≤{completion_tokens:,} completion tokens, estimated cost {cost}"
        )
        if lane.batch:
            reporter.say(f"{lane.provider}/{lane.model}: {_batch_split(lane, spec, rows, chars + system_chars)}")
    if first is not None:
        payload = json.loads(first)
        row = payload if isinstance(payload, dict) else {"messages": payload}
        message: dict[str, Any] = {"model": lanes[0].model, "messages": row["messages"]}
        if spec.system:
            message["system"] = spec.system
        if spec.temperature is not None:
            message["temperature"] = spec.temperature
        if spec.max_tokens is not None:
            from runner._native import is_reasoning_model

            reasoning = lanes[0].provider != "anthropic" and is_reasoning_model(message["model"])
            message["max_completion_tokens" if reasoning else "max_tokens"] = spec.max_tokens
        message.update({**lanes[0].params, **row.get("params", {})})
        reporter.say("first request: " + json.dumps(message, ensure_ascii=False, indent=2))
        if renderers and next(iter(renderers.values())).source == "batch":
            reporter.say("Batch API lines run as written: every field of their body is sent; flags fill in only what a line lacks")
    return RunOutcome(spec.output, Stop.DRY_RUN, rows=rows * len(lanes))


def _batch_split(lane: Lane, spec: RunSpec, rows: int, chars: int) -> str:
    """How `--dry-run` says a lane's rows would be cut into provider batches."""
    from runner.engine.batchapi.plan import count_batches, limits

    wire = "anthropic" if lane.provider == "anthropic" else "openai"
    max_requests, max_bytes = limits(wire, spec.batch_size)
    size = chars + rows * 300  # each line's own fields, about
    n = count_batches(rows, size, max_requests, max_bytes)
    per = -(-rows // n) if n else 0
    return f"{n} batch{'es' if n != 1 else ''} of up to {per:,} requests (the limit: {max_requests:,} requests, {max_bytes // 2**20} MB)"


def resume_command(output: Path) -> str:
    """The command that continues this run from its saved state."""
    return shlex.join(["prompt-runner", "resume", str(output)])
