"""`prompt-runner mock-server` rate-limit and overload flags, through the real console script:
per-minute rate-limit headers, a rate-limit schedule, overload episodes, headers off, bad values."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).with_name("prompt-runner")


@contextmanager
def mock_server(*flags: str) -> Iterator[str]:
    """The CLI's mock server on a free port, as `benches/bench.py` runs it; yields its URL."""
    proc = subprocess.Popen([str(BIN), "mock-server", "--port", "0", *flags], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        match = re.search(r"mock server on (http://127\.0\.0\.1:\d+)", banner)
        assert match, banner
        yield match.group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and "Traceback" not in err, err


def post(url: str, provider: str) -> tuple[int, dict[str, str], Any]:
    """One chat request; (status, lower-cased headers, JSON body), errors included."""
    if provider == "openai":
        path, headers = "/v1/chat/completions", {"authorization": "Bearer mock-key"}
        body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    else:
        path, headers = "/v1/messages", {"x-api-key": "mock-key", "anthropic-version": "2023-06-01"}
        body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.load(resp)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, json.load(err)


def rate_limit_headers(headers: dict[str, str]) -> list[str]:
    return [k for k in headers if k.startswith(("x-ratelimit-", "anthropic-ratelimit-"))]


def test_schedule_changes_the_stated_per_minute_limit() -> None:
    with mock_server("--rate-limit-schedule", "0:3,0.5:1") as url:
        status, headers, _ = post(url, "openai")
        t0 = time.monotonic()  # the schedule's clock started at or before this
        assert status == 200
        assert headers["x-ratelimit-limit-requests"] == "180"
        assert headers["x-ratelimit-remaining-requests"] == "120"
        time.sleep(max(0.0, t0 + 0.6 - time.monotonic()))
        status, headers, _ = post(url, "anthropic")
        assert status == 200
        assert headers["anthropic-ratelimit-requests-limit"] == "60"
        assert headers["anthropic-ratelimit-requests-remaining"] == "0"
        status, headers, body = post(url, "openai")
        assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
        assert headers["x-ratelimit-limit-requests"] == "60"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["retry-after"] == "1" and int(headers["retry-after-ms"]) >= 1


def test_no_rate_limit_headers_leaves_only_retry_after() -> None:
    with mock_server("--rate-limit", "1", "--no-rate-limit-headers") as url:
        status, headers, _ = post(url, "openai")
        assert status == 200 and rate_limit_headers(headers) == []
        for provider in ("openai", "anthropic"):
            status, headers, _ = post(url, provider)
            assert status == 429
            assert headers["retry-after"] == "1"
            assert "retry-after-ms" not in headers
            assert rate_limit_headers(headers) == []


def test_overload_episode() -> None:
    with mock_server("--overload", "0:0.5", "--rate-limit", "5") as url:
        status, headers, body = post(url, "anthropic")
        t0 = time.monotonic()
        assert status == 529
        assert body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        assert "retry-after" not in headers and rate_limit_headers(headers) == []
        status, headers, body = post(url, "openai")
        assert status == 503 and body["error"]["type"] == "server_error"
        assert body["error"]["message"] == "The server is overloaded or not ready yet."
        assert "retry-after" not in headers
        time.sleep(max(0.0, t0 + 0.6 - time.monotonic()))
        status, headers, _ = post(url, "openai")
        assert status == 200 and headers["x-ratelimit-limit-requests"] == "300"
        with urllib.request.urlopen(f"{url}/_mock/stats") as resp:
            by_status = json.load(resp)["by_status"]
        assert by_status == {"200": 1, "503": 1, "529": 1}


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--rate-limit-schedule", "abc"], "--rate-limit-schedule: expected START:RPS"),
        (["--rate-limit-schedule", "0:40,5:2.5"], "--rate-limit-schedule: expected START:RPS"),
        (["--rate-limit-schedule", "0:40,5:0"], "at least 1"),
        (["--rate-limit-schedule", "0:40,5:20,5:30"], "ascending"),
        (["--rate-limit-schedule", "5:20"], "rate_limit_rps"),
        (["--overload", "10"], "--overload: expected START:DURATION"),
        (["--overload", "10:nan"], "--overload: expected START:DURATION"),
        (["--overload", "10:-1"], "duration"),
    ],
)
def test_bad_flag_values_exit_2_with_one_line(flags: list[str], says: str) -> None:
    res = subprocess.run([str(BIN), "mock-server", "--port", "0", *flags], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], res.stderr


def test_stream_as_json_answers_a_stream_with_one_json_body() -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with mock_server("--stream-as-json") as url:
        req = urllib.request.Request(
            url + "/v1/chat/completions", data=json.dumps(body).encode(),
            headers={"content-type": "application/json", "authorization": "Bearer mock-key"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.headers["content-type"].startswith("application/json")
            answer = json.load(resp)
    assert answer["choices"][0]["message"]["content"] == "Echo: hi"
