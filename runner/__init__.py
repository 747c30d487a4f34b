"""prompt-runner: run prompt datasets against LLM APIs, fast, at the rate limit, resumable."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.api import arun, run
    from runner.client import (
        APIConnectionError,
        AuthenticationError,
        BadRequestError,
        Chunk,
        InvalidResponseError,
        Message,
        ModelClient,
        ModelClientError,
        ModelConfig,
        NotFoundError,
        QuotaExceededError,
        RateLimitError,
        RequestTimeoutError,
        Response,
        RustModelClient,
        RustModelConfig,
        ServerError,
        Usage,
    )

__all__ = [
    "APIConnectionError",
    "AuthenticationError",
    "BadRequestError",
    "Chunk",
    "InvalidResponseError",
    "Message",
    "ModelClient",
    "ModelClientError",
    "ModelConfig",
    "NotFoundError",
    "QuotaExceededError",
    "RateLimitError",
    "RequestTimeoutError",
    "Response",
    "RustModelClient",
    "RustModelConfig",
    "ServerError",
    "Usage",
    "__version__",
    "arun",
    "run",
]


def __getattr__(name: str) -> Any:
    """The public names load on first use, so the CLI does not import the client and the
    notebook API (asyncio and all) to run a batch."""
    if name in ("run", "arun"):
        from runner import api

        return getattr(api, name)
    if name in __all__:
        from runner import client

        return getattr(client, name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
