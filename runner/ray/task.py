"""One shard of a cluster run, as a Ray task: a resumable run of its own, on storage every node
sees, that writes only while it owns its run directory and sends only on the permits the run's
pool leases it. Ray retrying the task (its worker died) runs it again on the same output: a
resume, which sends again only what was on the wire (README, "Run state and crash safety")."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from runner.engine.base import Prepared
from runner.engine.outcome import Reporter, RunOutcome
from runner.errors import InputError, RunnerError
from runner.store.owner import OwnerToken

__all__ = ["OwnedEngine", "run_shard"]

#: How long a new attempt waits for an old one still holding the shard's lock (same machine) to
#: notice it lost the shard and stop.
TAKEOVER_SECONDS = 60.0


class OwnedEngine:
    """The live engine, writing each part only while `owner` still owns the run directory."""

    def __init__(self, owner: OwnerToken) -> None:
        self.owner = owner

    def execute(self, run: Prepared, reporter: Reporter) -> RunOutcome:
        from runner.engine.live import LiveEngine

        run.run_dir.guard = self.owner.check
        return LiveEngine().execute(run, reporter)


def run_shard(options: dict[str, Any], output: str, shard: str, pool: Any) -> dict[str, Any]:
    """Runs shard `shard` ("I/N") of the run `options` into `output`; its permits come from the
    run's `PermitPool` actor `pool`. Returns how it ended."""
    from runner.engine import permits
    from runner.engine.pipeline import run_spec
    from runner.engine.spec import RunSpec
    from runner.ray.permits import LeaseKeeper
    from runner.store.checkpoint import RunDir, run_dir_for

    spec = RunSpec(output=Path(output), **{**options, "shard": shard})
    owner = OwnerToken(run_dir_for(spec.output))
    owner.claim()
    source = LeaseKeeper(pool, shard, f"{shard}:{uuid.uuid4().hex[:8]}")
    log = spec.output.with_name(spec.output.name + ".log")
    permits.use(source)
    try:
        with open(log, "a", encoding="utf-8") as stream:
            stream.write(f"--- attempt pid {os.getpid()} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            stream.flush()
            deadline = time.monotonic() + TAKEOVER_SECONDS
            while True:
                try:
                    outcome = run_spec(spec, Reporter(stream), engine=OwnedEngine(owner))
                    break
                except InputError as err:
                    # An older attempt on this machine still holds the lock: it stops at its next
                    # part (it no longer owns the directory); wait for it.
                    if RunDir(spec.output).holder() is None or time.monotonic() > deadline:
                        raise
                    del err
                    time.sleep(0.5)
    except RunnerError as err:
        return {"shard": shard, "output": output, "stop": "error", "message": str(err), "pid": os.getpid()}
    finally:
        source.close()
        permits.use(None)
    return {
        "shard": shard,
        "output": output,
        "stop": outcome.stop.value,
        "message": outcome.message,
        "rows": outcome.rows,
        "written": outcome.written,
        "ok": outcome.ok,
        "failed": outcome.failed,
        "pid": os.getpid(),
        "error": source.error,
    }
