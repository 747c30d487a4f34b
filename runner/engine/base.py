"""The seam an engine plugs into: what it is given (`Prepared`: a run checked, its directory
locked, what earlier runs settled) and what it must do (`Engine.execute`, returning a
`RunOutcome`). `pipeline.run_spec` prepares a run and calls an engine; see ARCHITECTURE.md,
"Engines"."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from runner.engine.endpoint import Endpoint
from runner.engine.outcome import Reporter, RunOutcome, Stop
from runner.engine.spec import Lane, RunSpec
from runner.inputs.render import RequestSpec
from runner.store.checkpoint import RunDir

__all__ = ["Engine", "Prepared"]


@dataclass
class Prepared:
    """A run ready for an engine: its spec, input, models and endpoints, its run directory
    (locked), and what earlier runs on it settled."""

    spec: RunSpec
    paths: list[Path]
    request: RequestSpec
    lanes: list[Lane]
    endpoints: list[Endpoint]
    run_dir: RunDir
    run_id: str
    #: Input rows (after --limit); each model answers all of them.
    total: int
    #: The chunk types the scan found, to read the input again as it was checked.
    schemas: dict[Path, list[Any]]
    #: Rows not to send again (in parts or in the log), and the USD they cost.
    settled: set[int] = field(default_factory=set)
    spent: float = 0.0
    #: Logged results to hand out again (they reach a part with their input columns).
    recovered: pa.Table | None = None
    #: Whether the engine may write the output as it goes (not when another engine shares the run).
    streamable: bool = True

    @property
    def rows(self) -> int:
        """The rows the run owes: input rows x models."""
        return self.total * len(self.lanes)

    @property
    def skip(self) -> set[int]:
        """Settled rows that are neither sent nor handed out again."""
        if self.recovered is None:
            return self.settled
        return self.settled.difference(self.recovered.column("_row").to_pylist())

    def outcome(self, stop: Stop, **counts: Any) -> RunOutcome:
        return RunOutcome(self.spec.output, stop, rows=self.rows, **counts)


class Engine(Protocol):
    """Runs a prepared run to its end. It writes its lines and progress to `reporter`, raises
    `RunnerError` for a user's mistake, and returns how the run ended; it owns nothing of the
    run directory but the rows it appends and the output it compacts."""

    def execute(self, run: Prepared, reporter: Reporter) -> RunOutcome: ...
