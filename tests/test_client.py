"""The async client against the mock server: streaming, concurrency, typed errors, retries."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from e2e import base_for, expected_reply, mock, stats

import runner
from runner import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    Chunk,
    Message,
    ModelClient,
    ModelClientError,
    ModelConfig,
    RateLimitError,
    RequestTimeoutError,
)

SECRET = "sk-live-Qw7eRt9yUi3oPa5sDf1gHj8k"
PROVIDERS = ["openai", "anthropic"]


def config(server: Any, provider: str, **overrides: Any) -> ModelConfig:
    values: dict[str, Any] = {"api_key": server.api_key, "api_base": base_for(server, provider), "provider": provider, "model": "m"}
    return ModelConfig(**{**values, **overrides})


async def collect(client: ModelClient, messages: list[Message], cfg: ModelConfig) -> list[Chunk]:
    return [chunk async for chunk in client.run(messages, cfg)]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streaming_yields_several_chunks_then_the_finish(provider: str) -> None:
    server = mock()
    text = "tell me about the sea and the sky"
    messages = [Message("system", "Be brief."), Message("user", "earlier"), Message("assistant", "ok"), Message("user", text)]
    chunks = asyncio.run(collect(ModelClient(), messages, config(server, provider, stream=True)))
    assert len(chunks) > 3
    assert "".join(c.content for c in chunks) == expected_reply(text)
    assert all(c.finish_reason is None and not c.done for c in chunks[:-1])
    last = chunks[-1]
    assert last.done and last.content == "" and last.finish_reason in ("stop", "end_turn")
    assert last.usage is not None and last.usage.completion_tokens == len(expected_reply(text).split())
    assert last.response is not None and last.response.ttft_ms is not None


@pytest.mark.parametrize("provider", PROVIDERS)
def test_without_streaming_one_chunk_holds_the_whole_answer(provider: str) -> None:
    server = mock()
    chunks = asyncio.run(collect(ModelClient(), [Message("user", "one two three four")], config(server, provider, max_tokens=3)))
    assert len(chunks) == 1
    (chunk,) = chunks
    assert chunk.content == expected_reply("one two three four", max_tokens=3)
    assert chunk.finish_reason in ("length", "max_tokens")
    assert chunk.usage == runner.Usage(prompt_tokens=4, completion_tokens=3)
    assert stats(server)["streamed"] == 0


def test_complete_returns_the_whole_response_streamed_or_not() -> None:
    server = mock()

    async def main() -> list[runner.Response]:
        client = ModelClient()
        return [await client.complete([Message("user", "hello")], config(server, p, stream=s)) for p in PROVIDERS for s in (False, True)]

    responses = asyncio.run(main())
    assert [r.content for r in responses] == [expected_reply("hello")] * 4
    assert all(r.attempts == 1 and r.http_status == 200 and r.latency_ms > 0 for r in responses)


def test_a_hundred_concurrent_runs_in_one_loop() -> None:
    server = mock(latency_ms=50, track_prompts=True)
    client = runner.RustModelClient()
    cfg = runner.RustModelConfig(api_key=server.api_key, api_base=base_for(server, "openai"), provider="openai", model="m", stream=True)

    async def one(i: int) -> str:
        return "".join([c.content async for c in client.run([Message("user", f"question {i}")], cfg)])

    async def main() -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        answers = await asyncio.gather(*(one(i) for i in range(100)))
        return answers, loop.time() - started

    answers, elapsed = asyncio.run(main())
    assert answers == [expected_reply(f"question {i}") for i in range(100)]
    assert stats(server)["requests"] == 100
    # Concurrent, not one after another: 100 x 50 ms in sequence would take 5 s.
    assert elapsed < 2.5, elapsed


def test_the_event_loop_keeps_running_while_requests_wait() -> None:
    server = mock(latency_ms=300)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def main() -> None:
        task = asyncio.create_task(ticker())
        await ModelClient().complete([Message("user", "hi")], config(server, "openai"))
        task.cancel()

    asyncio.run(main())
    assert ticks >= 10


def error_of(cfg: ModelConfig, text: str = "hi") -> ModelClientError:
    async def main() -> None:
        await ModelClient().complete([Message("user", text)], cfg)

    with pytest.raises(ModelClientError) as info:
        asyncio.run(main())
    return info.value


@pytest.mark.parametrize("provider", PROVIDERS)
def test_wrong_key_is_an_authentication_error_without_the_key(provider: str) -> None:
    server = mock(api_key="the-right-key")
    err = error_of(config(server, provider, api_key=SECRET, stream=True))
    assert type(err) is AuthenticationError and err.status == 401 and err.attempts == 1
    for fragment in (SECRET, SECRET[:12], SECRET[-10:]):
        assert fragment not in str(err) and fragment not in repr(err) and fragment not in err.message


def test_bad_request_marker() -> None:
    server = mock()
    err = error_of(config(server, "anthropic"), "please [[bad]]")
    assert type(err) is BadRequestError and err.status == 400 and err.attempts == 1


def test_rate_limit_without_retries() -> None:
    server = mock(fault_rate=1.0, faults=["429"])
    err = error_of(config(server, "openai", max_retries=0))
    assert isinstance(err, RateLimitError) and err.status == 429 and err.attempts == 1
    assert stats(server)["requests"] == 1


def test_transient_errors_are_retried_up_to_max_retries() -> None:
    server = mock(fault_rate=1.0, faults=["500"])
    err = error_of(config(server, "openai", max_retries=2))
    assert isinstance(err, runner.ServerError) and err.attempts == 3
    assert stats(server)["requests"] == 3
    # Half the requests fail: the default two retries get nearly all of them through.
    flaky = mock(fault_rate=0.3, faults=["503", "reset"], seed=3)

    async def main() -> list[runner.Response]:
        client = ModelClient()
        cfg = config(flaky, "anthropic", max_retries=6)
        return await asyncio.gather(*(client.complete([Message("user", f"q{i}")], cfg) for i in range(20)))

    responses = asyncio.run(main())
    assert [r.content for r in responses] == [expected_reply(f"q{i}") for i in range(20)]
    assert any(r.attempts > 1 for r in responses)


def test_timeout_is_a_timeout_error() -> None:
    server = mock(latency_ms=3000)
    err = error_of(config(server, "openai", timeout=0.3, max_retries=0))
    assert isinstance(err, RequestTimeoutError) and isinstance(err, TimeoutError)
    assert err.status is None


def test_connection_refused_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = ModelConfig(api_key="k", api_base=f"http://127.0.0.1:{port}/v1", provider="openai", model="m", max_retries=0)
    err = error_of(cfg)
    assert isinstance(err, APIConnectionError) and isinstance(err, ConnectionError)


def test_base_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    server = mock()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", server.api_key)
    response = asyncio.run(ModelClient().complete([Message("user", "from env")], ModelConfig(provider="anthropic", model="m")))
    assert response.content == expected_reply("from env")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    err = error_of(ModelConfig(provider="anthropic", model="m"))
    assert type(err) is AuthenticationError and "ANTHROPIC_API_KEY" in str(err)
    assert stats(server)["requests"] == 1


def test_leaving_a_stream_early_abandons_the_request() -> None:
    server = mock()

    async def main() -> str:
        client = ModelClient()
        async for chunk in client.run([Message("user", "a b c d e f g")], config(server, "openai", stream=True)):
            return chunk.content
        return ""

    assert asyncio.run(main()) == "Echo:"


def test_config_mistakes_are_value_errors() -> None:
    with pytest.raises(ValueError):
        error_of(ModelConfig(provider="cohere", model="m"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Message("user", "x", kind="image").to_wire()
    with pytest.raises(runner._native.ConfigError):
        ModelClient()._native.stream('{"provider": "openai", "model": ""}', "[]")
