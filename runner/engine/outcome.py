"""What running a spec gives back: `RunOutcome` (counts, why the run ended, the message), and the
`Reporter` an engine writes its progress and lines to. Engines print nothing themselves and
decide no exit code: the edges (`runner.cli`, `runner.api`) turn an outcome into one.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


class Stop(str, enum.Enum):
    """Why a run ended."""

    #: Every row was sent (each ok or failed); the output is written.
    COMPLETED = "completed"
    #: Ctrl-C or SIGTERM; finished rows are saved and `resume` continues.
    INTERRUPTED = "interrupted"
    #: `--max-cost` was reached (or already spent); `resume --max-cost N` continues.
    BUDGET = "budget"
    #: A failure every row would share (wrong key, no quota, fail fast); the message says which.
    STOPPED = "stopped"
    #: The run directory or the output could not be written (a full disk).
    WRITE_ERROR = "write_error"
    #: The run completed and a model missed the job's minimum pass rate.
    THRESHOLD = "threshold"
    #: `--dry-run`: nothing was sent.
    DRY_RUN = "dry_run"
    #: `--batch-api --no-wait`: the rows are in provider batches; `resume` collects them.
    SUBMITTED = "submitted"


@dataclass
class RunOutcome:
    """The end of a run. `rows`: the rows the run owes (input rows x models); `written`: rows in
    the output."""

    output: Path
    stop: Stop
    rows: int = 0
    written: int = 0
    ok: int = 0
    failed: int = 0
    message: str | None = None

    def record(self) -> dict[str, str | None]:
        """How the run ended, as kept in its run state (`status` reads it)."""
        return {"stop": self.stop.value, "message": self.message}


class Reporter:
    """Where an engine's progress and lines go (stderr for the CLI; nowhere for a silent API
    call). `stream` is handed to the progress display."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream: TextIO = stream if stream is not None else sys.stderr

    def say(self, text: str) -> None:
        print(text, file=self.stream)
