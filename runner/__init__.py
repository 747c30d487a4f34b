"""prompt-runner: run prompt datasets against LLM APIs, fast, at the rate limit, resumable."""

__version__ = "0.1.0"

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
