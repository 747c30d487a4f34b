"""The run's provider batches (Batch API runs), one durable record each in `OUTPUT.run/batches/`.

A record is written (fsynced, renamed into place) at each step of a batch's life, so a crash at
any moment leaves the last step taken:

- `intent`: the rows are about to be submitted (written before any call that could create a
  batch; an OpenAI record also keeps the uploaded file's id as soon as it is known);
- `submitted`: the provider's batch id is known (created, or found again after a crash);
- `collected`: every row's result is in a checkpoint part;
- `abandoned`: never created, and never will be (cancelled before it was).

A record's rows are the run's `_row` numbers; their custom ids are `r<row>`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runner.store.checkpoint import OutputError, oserror_text
from runner.store.files import write_json_atomic

__all__ = ["BatchRecord", "Ledger", "custom_id", "row_of"]

INTENT, SUBMITTED, COLLECTED, ABANDONED = "intent", "submitted", "collected", "abandoned"


def custom_id(row: int) -> str:
    """A row's custom id: valid for both providers (`^[a-zA-Z0-9_-]{1,64}$`)."""
    return f"r{row}"


def row_of(custom: str) -> int | None:
    try:
        return int(custom[1:]) if custom.startswith("r") else None
    except ValueError:
        return None


@dataclass
class BatchRecord:
    key: str
    lane: int
    rows: list[int]
    state: str = INTENT
    #: When the intent was recorded (seconds since the epoch): a lost batch is looked for after it.
    intent_at: float = field(default_factory=time.time)
    bytes: int = 0
    #: The estimated cost at the batch price (USD), counted against --max-cost until collected.
    estimate: float = 0.0
    file_id: str | None = None
    batch_id: str | None = None
    #: The provider's last known state and counts (for `status`).
    status: str | None = None
    done: int = 0
    ok: int = 0
    failed: int = 0
    checked_at: float | None = None
    #: How the batch id became known: "created", or "found" after a crash.
    how: str | None = None
    #: Batches found for this record that turned out to hold other rows: never taken again.
    passed_over: list[str] = field(default_factory=list)

    @property
    def open(self) -> bool:
        """Whether the record still holds rows the run is waiting for."""
        return self.state in (INTENT, SUBMITTED)


class Ledger:
    """The records of one run directory, read once: the run holding the directory's lock is
    the only writer, and every change goes through `save`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "batches"
        self._records: dict[str, BatchRecord] | None = None

    def records(self) -> list[BatchRecord]:
        if self._records is None:
            self._records = {r.key: r for r in self._read()}
        return sorted(self._records.values(), key=lambda r: r.key)

    def _read(self) -> list[BatchRecord]:
        if not self.path.is_dir():
            return []
        out = []
        for file in self.path.glob("*.json"):
            try:
                out.append(BatchRecord(**json.loads(file.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # a record is only ever replaced whole; an unreadable one is not ours
        return out

    def next_key(self, lane: int) -> str:
        taken = [r.key for r in self.records() if r.lane == lane]
        number = 1 + max((int(k.rsplit("-", 1)[1]) for k in taken), default=0)
        return f"m{lane}-{number:05d}"

    def save(self, record: BatchRecord) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(asdict(record), self.path / f"{record.key}.json")
        except OSError as err:
            raise OutputError(f"{self.path}: cannot record batch {record.key}: {oserror_text(err)}") from None
        if self._records is not None:
            self._records[record.key] = record

    def open_batches(self) -> list[BatchRecord]:
        """Records whose batch exists, or may exist, at the provider and is not collected."""
        return [r for r in self.records() if r.open]

    def claimed(self, record: BatchRecord) -> set[str]:
        """Batch ids `record` may not take: every other record's, and those it passed over."""
        return {r.batch_id for r in self.records() if r.batch_id} | set(record.passed_over)

    def update(self, record: BatchRecord, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(record, name, value)
        self.save(record)
