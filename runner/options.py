"""`RunOptions`: everything `prompt-runner run` takes, checked; light to import (the CLI's start-up)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runner.errors import InputError


@dataclass
class RunOptions:
    """Everything `prompt-runner run` takes."""

    input: str
    output: Path
    provider: str
    model: str | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    concurrency: int = 32
    rpm: int | None = None
    tpm: int | None = None
    max_retries: int = 6
    timeout: float = 60.0
    stream: bool = False
    template: str | None = None
    system: str | None = None
    id_column: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    limit: int | None = None
    dry_run: bool = False
    mock_config: str = "{}"
    restart: bool = False
    retry_failed: bool = True
    grace_period: float = 30.0

    def saved(self) -> dict[str, Any]:
        """The options as kept in run.json, enough for `resume` to run them again."""
        keep = {k: v for k, v in asdict(self).items() if k not in ("output", "dry_run", "restart")}
        return keep

    def check(self) -> None:
        for name in ("concurrency", "rpm", "tpm", "limit", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')}: must be at least 1, got {value}")
        if self.max_retries < 0:
            raise InputError(f"--max-retries: must be 0 or more, got {self.max_retries}")
        if self.timeout <= 0:
            raise InputError(f"--timeout: must be a positive number of seconds, got {self.timeout}")
        if self.grace_period < 0:
            raise InputError(f"--grace-period: must be 0 or more seconds, got {self.grace_period}")
        if self.provider != "mock" and not self.model:
            raise InputError(f"--model is required with --provider {self.provider}")
