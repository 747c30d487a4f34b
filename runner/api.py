"""The Python batch API: `runner.run(data, ...)` runs a dataset like `prompt-runner run` and
returns the results as a polars DataFrame.

It is synchronous and never touches asyncio, so it works the same in a script and in a notebook
whose event loop is already running (the loop simply waits while the batch runs; use `arun` to
keep the loop responsive). Ctrl-C (or a Jupyter interrupt) on the main thread stops the run
cleanly: finished rows are kept in ``output`` and :class:`KeyboardInterrupt` is raised.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import RunnerError

if TYPE_CHECKING:
    import polars as pl

__all__ = ["arun", "run"]

#: RunSpec fields that `run` does not take as keyword options (it sets them itself).
_FIXED = {"input", "output", "provider", "model", "dry_run"}


def run(
    data: str | Path | pl.DataFrame | Sequence[Mapping[str, Any]],
    provider: str = "openai",
    model: str | None = None,
    *,
    output: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> pl.DataFrame:
    """Runs every row of ``data`` against ``provider``/``model``; returns one result row per input
    row with the output schema (``id``, the input columns, ``status``, ``output``, ...).

    ``data``: a path or glob (``.jsonl``, ``.jsonl.gz``, ``.parquet``), a polars DataFrame, or a
    list of dicts (these two are written to a temporary Parquet file first). ``output``: where
    the Parquet output and its run state go (as with the CLI, running again with the same
    output continues the run); by default a temporary directory, removed afterwards.
    ``options``: any ``prompt-runner run`` option by its Python name, e.g. ``template``,
    ``system``, ``concurrency``, ``rpm``, ``tpm``, ``max_retries``, ``timeout``, ``stream``,
    ``temperature``, ``max_tokens``, ``api_base``, ``api_key_env``, ``id_column``, ``limit``.
    ``progress=False`` silences the progress and summary lines (written to stderr otherwise).

    Raises :class:`runner.errors.InputError` for bad input or options (nothing sent),
    :class:`RunnerError` when the run was stopped (a wrong key, quota) and
    :class:`KeyboardInterrupt` when it was interrupted.
    """
    import polars as pl

    from runner.engine.pipeline import run_spec
    from runner.engine.spec import RunSpec
    from runner.engine.outcome import Reporter, Stop

    known = {f.name for f in dataclasses.fields(RunSpec)} - _FIXED
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"run() got unknown options: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    if options.get("wait") is False:
        raise TypeError("run() waits for its results: submit without waiting with `prompt-runner run --batch-api --no-wait`")
    scratch = Path(tempfile.mkdtemp(prefix="prompt-runner-"))
    try:
        source = _input_path(data, scratch)
        target = Path(output) if output is not None else scratch / "output.parquet"
        opts = RunSpec(input=source, output=target, provider=provider, model=model, **options)
        outcome = run_spec(opts, Reporter(sys.stderr if progress else _Silent()))
        if outcome.stop is Stop.INTERRUPTED:
            raise KeyboardInterrupt(f"run interrupted; finished rows are saved in {target}")
        if outcome.stop is Stop.WRITE_ERROR:
            raise RunnerError(outcome.message or "the run could not write its results")
        if not target.exists():
            raise RunnerError(f"the run ended without output ({outcome.stop.value})")
        frame = pl.read_parquet(target)
        if outcome.stop is Stop.STOPPED:
            raise RunnerError(f"run stopped: {outcome.message}")
        return frame
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def arun(
    data: str | Path | pl.DataFrame | Sequence[Mapping[str, Any]],
    provider: str = "openai",
    model: str | None = None,
    **options: Any,
) -> pl.DataFrame:
    """:func:`run` in a worker thread, so the event loop keeps serving while the batch runs."""
    return await asyncio.to_thread(run, data, provider, model, **options)


def _input_path(data: Any, scratch: Path) -> str:
    """A path the reader takes: paths as they are, frames and row lists as temporary Parquet."""
    import polars as pl

    if isinstance(data, (str, Path)):
        return str(data)
    if isinstance(data, pl.DataFrame):
        frame = data
    elif isinstance(data, Sequence) and all(isinstance(row, Mapping) for row in data):
        if not data:
            raise RunnerError("data: the list of rows is empty")
        frame = pl.DataFrame([dict(row) for row in data])
    else:
        raise TypeError(f"data: expected a path, a polars DataFrame or a list of dicts, got {type(data).__name__}")
    path = scratch / "input.parquet"
    frame.write_parquet(path)
    return str(path)


class _Silent(io.StringIO):
    """Where the lines of a run with ``progress=False`` go: nowhere."""

    def write(self, text: str) -> int:
        return len(text)
