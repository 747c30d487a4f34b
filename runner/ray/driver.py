"""`prompt-runner run ... --ray [--ray-address ADDR] --shards N`: the run split into N shards, each
a Ray task writing its own resumable run directory beside the output (`OUTPUT.shards/`, on
storage every node sees), all under one rate limit (`runner.ray.permits`), then merged into
OUTPUT (`runner.merge`). Running the same command again resumes every shard."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from runner.engine.outcome import Reporter, RunOutcome, Stop
from runner.engine.spec import RunSpec
from runner.errors import InputError

__all__ = ["cluster_runner", "run_cluster"]

#: CPUs a shard asks of Ray: its work is waiting on the network, so several fit on one CPU.
SHARD_CPUS = 0.25
#: Ray runs a shard again this many times after its worker died (each time a resume).
MAX_RETRIES = 3


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("--ray: Ray is not installed here: pip install 'prompt-runner[ray]'") from None
    return ray


def check(spec: RunSpec, shards: int | None, ray: bool = True) -> int:
    """The cluster flags, checked; the number of shards."""
    if not ray:
        raise InputError("--ray-address and --shards apply to Ray runs: add --ray")
    if shards is None:
        raise InputError("--ray: give the number of shards with --shards N")
    if shards < 1:
        raise InputError(f"--shards: must be at least 1, got {shards}")
    if spec.shard is not None:
        raise InputError("--shard: a --ray run makes its shards itself; leave --shard out")
    if spec.batch_api or any((m.get("mode") == "batch") for m in spec.models or []):
        raise InputError("--ray: a Batch API run is not rate-limited; run it without --ray")
    return shards


def cluster_runner(spec: RunSpec, ray: bool, address: str | None, shards: int | None) -> Callable[[RunSpec], RunOutcome]:
    """What `prompt-runner run --ray` runs instead of a single-process run."""
    n = check(spec, shards, ray)
    _import_ray()
    return lambda s: run_cluster(s, n, address)


def _absolute(spec: RunSpec) -> RunSpec:
    """Paths as every node's workers see them (they do not share the driver's directory)."""
    def absolute(value: str | None) -> str | None:
        return None if value is None else os.path.abspath(value)

    return replace(spec, input=absolute(spec.input) or spec.input, output=Path(os.path.abspath(spec.output)),
                   response_format=absolute(spec.response_format), tools=absolute(spec.tools))


def run_cluster(spec: RunSpec, shards: int, address: str | None = None, reporter: Reporter | None = None,
                max_retries: int = MAX_RETRIES) -> RunOutcome:
    """Runs `spec` as `shards` Ray tasks on the cluster at `address` (else RAY_ADDRESS, else the
    one this process is connected to, else a new local one), then merges their outputs."""
    from runner.engine.pipeline import run_spec
    from runner.engine.shard import Shard, shard_output
    from runner.merge import MergeError, merge_outputs
    from runner.ray.permits import PermitPool, pool_name
    from runner.ray.task import run_shard

    ray = _import_ray()
    check(spec, shards)
    reporter = reporter or Reporter()
    spec = _absolute(spec)
    if spec.dry_run:
        return run_spec(spec, reporter)
    # Every mistake in the input or the options is found here, before any shard starts.
    run_spec(replace(spec, dry_run=True), Reporter(io.StringIO()))
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 configure_logging=False)
    lanes = spec.lanes()
    key = hashlib.sha256(str(spec.output).encode()).hexdigest()[:12]
    # The handle is held for the whole run: the actor lives as long as it.
    actor = ray.remote(num_cpus=0, max_restarts=-1)(PermitPool)
    pool = actor.options(name=pool_name(key), get_if_exists=True).remote([(lane.rpm, lane.tpm) for lane in lanes])
    options = {k: v for k, v in spec.saved().items() if k != "shard"}
    task = ray.remote(run_shard).options(num_cpus=SHARD_CPUS, max_retries=max_retries, retry_exceptions=False,
                                         scheduling_strategy="SPREAD")
    outputs = [shard_output(spec.output, Shard(i, shards)) for i in range(shards)]
    outputs[0].parent.mkdir(parents=True, exist_ok=True)
    reporter.say(f"{shards} shards on Ray ({', '.join(str(o) for o in outputs[:1])} ...), "
                 "rate limits and budget shared by leases from one pool")
    started = time.monotonic()
    refs = {task.remote(options, str(out), f"{i}/{shards}", pool): i for i, out in enumerate(outputs)}
    results: dict[int, dict[str, Any]] = {}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=10.0)
            for ref in done:
                i = refs[ref]
                try:
                    results[i] = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - a shard that failed past its retries
                    results[i] = {"shard": f"{i}/{shards}", "stop": "error", "message": _first_line(err)}
                r = results[i]
                reporter.say(f"shard {r['shard']}: {r['stop']}" + (f" ({r['message']})" if r.get("message") else "")
                             + (f", {r['written']} rows" if "written" in r else ""))
            if not done:
                reporter.say(f"{len(results)} of {shards} shards done ({time.monotonic() - started:.0f} s)")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        return RunOutcome(spec.output, Stop.INTERRUPTED, message=f"the shards' state is kept in {outputs[0].parent}")
    _say_learned(ray, pool, lanes, reporter)
    total_rows = sum(r.get("rows", 0) for r in results.values())
    bad = [r for r in results.values() if r["stop"] != Stop.COMPLETED.value]
    if bad:
        worst = bad[0]
        stop = Stop.INTERRUPTED if worst["stop"] == Stop.INTERRUPTED.value else Stop.BUDGET if worst["stop"] == Stop.BUDGET.value else Stop.STOPPED
        message = f"shard {worst['shard']}: {worst.get('message') or worst['stop']}; run the same command again to resume the shards"
        return RunOutcome(spec.output, stop, rows=total_rows, message=message)
    try:
        merged = merge_outputs(outputs, spec.output)
    except MergeError as err:
        return RunOutcome(spec.output, Stop.STOPPED, rows=total_rows, message=str(err))
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    status = pq.read_table(spec.output, columns=["status"]).column("status")
    ok = int(pc.sum(pc.equal(status, "ok")).as_py() or 0)
    reporter.say(f"merged {shards} shards in {time.monotonic() - started:.1f} s")
    return RunOutcome(spec.output, Stop.COMPLETED, rows=merged.rows, written=merged.rows, ok=ok, failed=merged.rows - ok)


def _say_learned(ray: Any, pool: Any, lanes: list[Any], reporter: Reporter) -> None:
    """The pace the pool learned from the shards' 429s, per model, as a single run says it."""
    try:
        models = ray.get(pool.state.remote(), timeout=10)["models"]
    except Exception:  # noqa: BLE001 - the pool gone: nothing to say
        return
    for lane, model in zip(lanes, models):
        if model.get("learned_rps"):
            reporter.say(f"pacing ({lane.model}): {model['learned_rps']:.1f} requests/s for the cluster, "
                         "learned from the server's 429s")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
