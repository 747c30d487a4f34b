"""prompt-runner on a Ray cluster (`pip install 'prompt-runner[ray]'`): `run(...)` splits a run into
shards, runs each as a Ray task under one cluster-wide rate limit, and merges them (README,
"Shards and Ray"). Importing this package does not import Ray; running does."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

__all__ = ["run"]


def run(
    data: str | Path,
    provider: str = "openai",
    model: str | None = None,
    *,
    output: str | Path,
    shards: int,
    address: str | None = None,
    progress: bool = True,
    **options: Any,
) -> pl.DataFrame:
    """Runs every row of `data` (a path or glob every node can read) as `shards` Ray tasks and
    returns the merged output as a DataFrame. `output` must be on storage every node sees: the
    shards keep their run state beside it, so calling again with the same `output` resumes.
    `address`: the cluster (else RAY_ADDRESS, the one this process is connected to, or a new
    local one). `options`: as for `runner.run`. Raises `InputError` for bad input or options
    (nothing sent), `RunnerError` when a shard stopped or the merge found rows missing."""
    import io

    import polars as pl

    from runner.engine.outcome import Reporter, Stop
    from runner.engine.spec import RunSpec
    from runner.errors import RunnerError
    from runner.ray.driver import run_cluster

    spec = RunSpec(input=str(data), output=Path(output), provider=provider, model=model, **options)
    outcome = run_cluster(spec, shards, address, Reporter(sys.stderr if progress else io.StringIO()))
    if outcome.stop is Stop.INTERRUPTED:
        raise KeyboardInterrupt(outcome.message or "interrupted")
    if outcome.stop is not Stop.COMPLETED:
        raise RunnerError(outcome.message or f"the run ended: {outcome.stop.value}")
    return pl.read_parquet(outcome.output)
