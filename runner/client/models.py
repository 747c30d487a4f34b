"""The async model client: `ModelClient.run` streams one chat request's answer, `complete` returns it.

Requests run as tasks on the native tokio runtime (no thread or subprocess per request); their
pieces reach the caller's asyncio event loop as they arrive. Failures raise the typed
exceptions below, each with ``.status`` (the HTTP status, or None) and the provider's message
(any key redacted).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from runner import _native

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


# -- configuration and data --------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Where and how to send a request.

    ``api_base`` defaults to ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL``, else the public API
    (an OpenAI base includes ``/v1``, an Anthropic base does not); ``api_key`` defaults to
    ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``. ``timeout`` is seconds per attempt;
    ``max_retries`` retries of transient failures (429, 5xx, timeouts, connection errors).
    """

    api_key: str | None = field(default=None, repr=False)
    api_base: str | None = None
    provider: Literal["openai", "anthropic", "azure"] = "openai"
    model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    stream: bool = False
    max_retries: int = 2
    timeout: float = 60.0
    #: Azure OpenAI's api-version (else OPENAI_API_VERSION); `model` is the deployment.
    api_version: str | None = None

    def to_json(self) -> str:
        """The settings as the native client reads them (the key included: never log this)."""
        if self.provider not in ("openai", "anthropic", "azure"):
            raise ValueError(f"provider: expected 'openai', 'anthropic' or 'azure', got {self.provider!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries: must be 0 or more, got {self.max_retries}")
        return json.dumps(asdict(self))


@dataclass
class Message:
    """One chat message. ``kind="text"``: ``content`` is a string (or a list of content parts)."""

    role: str
    content: str | list[dict[str, Any]]
    kind: str = "text"

    def to_wire(self) -> dict[str, Any]:
        if self.kind != "text":
            raise ValueError(f"Message.kind: only 'text' is supported, got {self.kind!r}")
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Usage:
    """Tokens the provider counted."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # The details below are parts of the two counts above (equality compares the counts only).
    #: Output tokens spent reasoning (inside `completion_tokens`).
    reasoning_tokens: int | None = field(default=None, compare=False)
    #: Prompt tokens read from, and written to, the provider's prompt cache (inside `prompt_tokens`).
    cached_prompt_tokens: int | None = field(default=None, compare=False)
    cache_write_tokens: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Chunk:
    """A piece of an answer. The last chunk of a run carries ``finish_reason`` and ``usage``
    (when streaming its ``content`` is empty: the text came in the chunks before it)."""

    content: str
    finish_reason: str | None = None
    usage: Usage | None = None
    response: Response | None = None

    @property
    def done(self) -> bool:
        """Whether this is the last chunk."""
        return self.response is not None


@dataclass(frozen=True)
class Response:
    """A whole answer, with its timings."""

    content: str
    finish_reason: str | None
    usage: Usage
    latency_ms: float
    ttft_ms: float | None
    attempts: int
    http_status: int
    #: The model's refusal (OpenAI `message.refusal`), and its tool calls as a JSON array.
    refusal: str | None = None
    tool_calls: str | None = None


# -- errors ------------------------------------------------------------------------------------


class ModelClientError(Exception):
    """Base class of the client's errors: ``status`` (HTTP status or None), ``message`` (the
    provider's, key redacted), ``error_type`` (as in the output's ``error_type`` column) and
    ``attempts`` (requests sent)."""

    def __init__(self, message: str, *, status: int | None = None, error_type: str = "", attempts: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.attempts = attempts


class AuthenticationError(ModelClientError):
    """401/403, or no key at all."""


class RateLimitError(ModelClientError):
    """429: too many requests or tokens (after the retries)."""


class QuotaExceededError(RateLimitError):
    """The account is out of credit (``insufficient_quota``, ``billing_error``)."""


class BadRequestError(ModelClientError):
    """A 4xx the request itself caused (invalid body, too long, a conflict)."""


class NotFoundError(BadRequestError):
    """404: wrong base URL or model name."""


class ServerError(ModelClientError):
    """5xx or overloaded (529), after the retries."""


class RequestTimeoutError(ModelClientError, TimeoutError):
    """No complete answer within the timeout (or a 408), after the retries."""


class APIConnectionError(ModelClientError, ConnectionError):
    """The connection failed, or the stream was cut before its end."""


class InvalidResponseError(ModelClientError):
    """A 2xx whose body is not what the provider documents."""


#: The exception class of each native ``error_type``.
ERRORS: dict[str, type[ModelClientError]] = {
    "auth": AuthenticationError,
    "quota": QuotaExceededError,
    "rate_limited": RateLimitError,
    "bad_request": BadRequestError,
    "conflict": BadRequestError,
    "not_found": NotFoundError,
    "server_error": ServerError,
    "overloaded": ServerError,
    "timeout": RequestTimeoutError,
    "connection": APIConnectionError,
    "incomplete_stream": APIConnectionError,
    "invalid_response": InvalidResponseError,
}


def _typed(err: _native.ClientError) -> ModelClientError:
    cls = ERRORS.get(err.error_type, ModelClientError)
    return cls(err.message, status=err.status, error_type=err.error_type, attempts=err.attempts)


# -- the client --------------------------------------------------------------------------------


class ModelClient:
    """An async client for OpenAI and Anthropic chat APIs.

    One instance holds one connection pool; share it between concurrent requests (any number of
    ``run``/``complete`` calls in one event loop).
    """

    def __init__(self, pool_size: int = 128) -> None:
        self._native = _native.ModelClient(pool_size)

    async def run(self, messages: Sequence[Message], config: ModelConfig) -> AsyncIterator[Chunk]:
        """Yields the answer as it arrives: with ``config.stream`` one chunk per piece, then a
        last empty chunk with ``finish_reason``/``usage``; without, one chunk with everything."""
        stream = self._native.stream(config.to_json(), json.dumps([m.to_wire() for m in messages]))
        try:
            async for item in stream:
                if isinstance(item, str):
                    yield Chunk(content=item)
                    continue
                response = _response(item)
                content = "" if config.stream else response.content
                yield Chunk(content, response.finish_reason, response.usage, response)
                return
        except _native.ClientError as err:
            raise _typed(err) from None
        finally:
            stream.cancel()

    async def complete(self, messages: Sequence[Message], config: ModelConfig) -> Response:
        """The whole answer (streamed on the wire if ``config.stream``)."""
        async for chunk in self.run(messages, config):
            if chunk.response is not None:
                return chunk.response
        raise InvalidResponseError("the answer ended without a final chunk", error_type="invalid_response")


def _response(item: dict[str, Any]) -> Response:
    return Response(
        content=item["text"],
        finish_reason=item["finish_reason"],
        usage=Usage(
            item["prompt_tokens"],
            item["completion_tokens"],
            item.get("reasoning_tokens"),
            item.get("cached_prompt_tokens"),
            item.get("cache_write_tokens"),
        ),
        latency_ms=item["latency_ms"],
        ttft_ms=item["ttft_ms"],
        attempts=item["attempts"],
        http_status=item["http_status"],
        refusal=item.get("refusal"),
        tool_calls=item.get("tool_calls"),
    )


#: The names of the client this project grew from.
RustModelClient = ModelClient
RustModelConfig = ModelConfig
