"""Exception types shared by the runner: the base RunnerError, InputError for user mistakes, and
the native core's errors (raised by `runner._native`, which re-exports them under the same names)."""

from __future__ import annotations

__all__ = ["ClientError", "ConfigError", "InputError", "NativeError", "RunStopped", "RunnerError"]


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


class NativeError(RunnerError):
    """A failure reported by the native core (`runner._native`); base of its errors."""


class ConfigError(NativeError):
    """A run, mock server or metrics configuration was refused by the native core."""


class RunStopped(NativeError):
    """The run was stopped (auth/quota failure or cancel)."""


class ClientError(NativeError):
    """A model client request failed; `error_type`, `status`, `message` and `attempts` say how.

    ``str(err)`` is ``"<error_type>: <message>"``; `message` is the provider's (key redacted).
    """

    def __init__(
        self, text: str, error_type: str = "", status: int | None = None, message: str = "", attempts: int = 0
    ) -> None:
        super().__init__(text)
        self.error_type = error_type
        self.status = status
        self.message = message
        self.attempts = attempts
