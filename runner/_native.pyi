"""Type stub of the native module `runner._native` (built from native/src/python.rs).

Checked against the compiled module by `tests/test_stubs.py` (mypy.stubtest).
"""

from collections.abc import Awaitable
from typing import Any, Self, final

# The native errors are runner.errors' RunnerError subclasses, re-exported here.
from runner.errors import ClientError as ClientError
from runner.errors import ConfigError as ConfigError
from runner.errors import NativeError as NativeError
from runner.errors import RunStopped as RunStopped

__all__ = [
    "ChunkStream",
    "ClientError",
    "ConfigError",
    "Executor",
    "MetricsServer",
    "MockServer",
    "ModelClient",
    "NativeError",
    "RunStopped",
    "__version__",
    "batch_requests",
    "batch_results",
    "init_logging",
    "is_reasoning_model",
    "read_log",
    "result_schema",
]

__version__: str

@final
class ResultBatch:
    def __len__(self) -> int: ...
    def __arrow_c_array__(self, requested_schema: object | None = None) -> tuple[object, object]: ...

@final
class ResultSchema:
    """The Arrow schema of every poll's ResultBatch: ``pyarrow.schema(result_schema())``."""

    def __arrow_c_schema__(self) -> object: ...

@final
class Executor:
    def __new__(cls, config_json: str) -> Self: ...
    def submit(self, rows: list[int], payloads: list[str]) -> None:
        """``payloads[i]``: a JSON array of messages, or ``{"messages": [...], "params": {...}}``
        (the row's params override the run's; they may set ``model``)."""
    def submit_arrow(self, rows: Any, payloads: Any) -> None: ...
    def close_input(self) -> None: ...
    def poll(self, timeout: float) -> ResultBatch | None: ...
    def roll_log(self) -> str | None: ...
    def cancel(self) -> None: ...
    def drain(self) -> None: ...
    def fatal_error(self) -> str | None: ...
    def grant(self, requests_per_second: float, tokens_per_second: float, seconds: float) -> None:
        """A lease of permits from outside (an executor configured ``granted``)."""
    def take_answers(self) -> tuple[int, int]:
        """Answers and 429s since the last call (a ``granted`` executor's pace is learned outside)."""
    def stats(self) -> dict[str, int]: ...
    def metrics(self) -> dict[str, Any]: ...
    def metrics_text(self) -> str: ...

@final
class MockServer:
    def __new__(cls, config_json: str = "{}", host: str = "127.0.0.1", port: int = 0) -> Self: ...
    @property
    def port(self) -> int: ...
    @property
    def url(self) -> str: ...
    @property
    def api_key(self) -> str: ...
    def stats_json(self) -> str: ...
    def reset_stats(self) -> None: ...
    def stop(self) -> None: ...

@final
class ModelClient:
    def __new__(cls, pool_size: int = 128) -> Self: ...
    def stream(self, config_json: str, messages_json: str) -> ChunkStream: ...

@final
class ChunkStream:
    def __aiter__(self) -> Self: ...
    def __anext__(self) -> Awaitable[str | dict[str, Any]]: ...
    def cancel(self) -> None: ...

@final
class MetricsServer:
    def __new__(
        cls,
        port: int = 0,
        executor: Executor | None = None,
        host: str = "127.0.0.1",
        *,
        runs: list[tuple[Executor, list[tuple[str, str]]]] | None = None,
    ) -> Self: ...
    def watch(
        self, executor: Executor | None = None, *, runs: list[tuple[Executor, list[tuple[str, str]]]] | None = None
    ) -> None: ...
    @property
    def port(self) -> int: ...
    @property
    def url(self) -> str: ...
    def stop(self) -> None: ...

def batch_requests(config_json: str, payloads: list[str]) -> list[tuple[str, str]]:
    """Per payload (as ``Executor.submit`` takes it): ``(body, request_hash)``, the JSON request body
    the live executor would send (never streamed; ``stream: true`` is a ConfigError) and its hash.
    A bad payload raises ConfigError naming its index."""
def batch_results(
    config_json: str,
    items: list[tuple[int, str, int | None, str | None, str | None, str | None, int, int]],
) -> ResultBatch:
    """The result rows of Batch API answers, in order, as ``Executor.poll`` returns them. Each item:
    ``(row, request_hash, http_status, body, error_type, error, started_at_us, finished_at_us)``;
    ``error_type`` (an output ``error_type`` name, e.g. ``"expired"``) wins, else a 2xx body is
    parsed as a live answer, else the status and body are classified as a live error."""
def init_logging(level: str = "info", json: bool = False) -> bool: ...
def is_reasoning_model(name: str) -> bool:
    """Whether ``name`` is an OpenAI reasoning model (o1, o3, o4, gpt-5 and their dated or
    suffixed variants): sent ``max_completion_tokens``, refuses a non-default temperature."""
def read_log(segments: list[str]) -> tuple[ResultBatch, int]: ...
def result_schema() -> ResultSchema: ...

@final
class PaceLearner:
    """The pace learned from 429s, fed answers counted elsewhere (a cluster's permit pool), a
    time bin at a time; ``start`` and ``at`` are the caller's clock in seconds, never going back."""
    def __new__(cls, start: float) -> Self: ...
    def record(self, answers: int, limited: int, at: float) -> None: ...
    @property
    def rate(self) -> float | None: ...
