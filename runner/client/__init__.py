"""The async model client: one chat request at a time from asyncio, on the native runtime
(`models.py`). Its names are those of `runner` itself (`runner.ModelClient`, ...)."""

from runner.client.models import (
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
]
