"""Exception types shared by the runner: the base RunnerError and InputError for user mistakes."""

from __future__ import annotations

__all__ = ["InputError", "RunnerError"]


class RunnerError(Exception):
    """Base class of every error the runner raises on purpose (never a bug)."""


class InputError(RunnerError):
    """A mistake in the user's input or configuration; nothing has been sent.

    ``str(err)`` is one line that names the place (``data.jsonl:17: invalid JSON: ...``);
    the CLI prints it as ``error: <msg>`` and exits 2, without a traceback.
    """

    def __init__(self, message: str) -> None:
        # Keep the promise of one line even when a parser's message spans several.
        super().__init__(" ".join(part.strip() for part in str(message).splitlines() if part.strip()))
