"""A LiteLLM proxy on loopback for benchmark scenarios: prompt-runner behind the gateway many
teams use, whose model has a requests-per-minute limit. Fully offline: the model answers with
LiteLLM's `mock_response`, no upstream call is made, and nothing but 127.0.0.1 is reached.

    from benches.litellm_gateway import litellm_proxy
    with litellm_proxy(rpm=60) as (base_url, api_key, model):
        ...  # base_url ends in /v1; send `Authorization: Bearer <api_key>`, "model": model

    python benches/litellm_gateway.py                 # self-check: ~70 requests, 60 pass, rest 429
    python benches/litellm_gateway.py --check-window  # also show the window is the calendar minute

LiteLLM lives in its own virtualenv, .venv-litellm/ beside the project's .venv (about 750 MB,
~120 packages), created and filled on first use with a pinned `litellm[proxy]`.

How the limit behaves (LiteLLM 1.108.7, observed; see `ModelRateLimitingCheck` in
litellm/router_utils/pre_call_checks/model_rate_limit_check.py):
- configured as a deployment `rpm` plus `router_settings.optional_pre_call_checks:
  ["enforce_model_rate_limits"]`; no database, no Redis, no virtual keys;
- the counter is keyed by the UTC calendar minute (`%H-%M`): a fixed window that resets at
  every :00, not a sliding one. A burst straddling :00 can get up to 2 x rpm through in a
  few seconds, and a client that was refused at :59 is served again one second later;
- every request is counted, refused ones too (the count is incremented before it is compared),
  and exactly `rpm` requests per calendar minute get 200;
- the excess get HTTP 429 whose only retry hint is `llm_provider-retry-after: 60` (always 60,
  whatever is left of the minute); there is no `retry-after` and no `x-ratelimit-*` header on a
  429. Body: {"error": {"message": "litellm.RateLimitError: Model rate limit exceeded. RPM
  limit=60, current usage=61 ...", "type": "throttling_error", "param": null, "code": "429"}};
- 200 responses carry `x-ratelimit-limit-requests: 60` and `x-ratelimit-remaining-requests`
  counting down to 0 within the minute (from the router's usage counter, which can lag the
  limiter's by the requests in flight);
- `"stream": true` is answered with SSE (`text/event-stream`, `data: {...chunk...}` lines, then
  `data: [DONE]`); a refused stream is a plain JSON 429, as above, before any event.
Network: under strace the proxy's only connect() calls are two refused ones to the placeholder
api_base 127.0.0.1:9 at start-up, and it sends no DNS query (OFFLINE_ENV below).

The alternative `router_settings.enable_pre_call_checks: true` (without the optional check)
also refuses at 60 but with a 429 that has no retry header at all and the body "No deployments
available for selected model.", so it does not match the gateway in the report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-litellm"
# 1.108.7 is the newest whose [proxy] extra resolves from the registry here: 1.110.x needs a
# `litellm-proxy` package that is not published, 1.108.8 to 1.109.x pin litellm-enterprise /
# litellm-proxy-extras versions that are not served. 1.82.7, 1.82.8 and 1.107.0 were
# compromised uploads (withdrawn): never pin those.
LITELLM_VERSION = "1.108.7"
MODEL_NAME = "gw-model"
WARMUP_MODEL = "gw-model-warmup"  # the same mock without a limit: warms the proxy up without using the budget
MASTER_KEY = "sk-bench-gateway"
MOCK_RESPONSE = "This is a mock answer from the gateway."

# Everything LiteLLM would otherwise fetch at start-up or on first use comes from its package.
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_TELEMETRY_DISABLED": "True",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "DISABLE_SCHEMA_UPDATE": "True",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
# Inherited variables that would make the proxy reach for a database, Redis, a real provider,
# an HTTP proxy or another Python environment.
DROPPED_ENV = (
    "DATABASE_URL", "DIRECT_URL", "STORE_MODEL_IN_DB", "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD",
    "REDIS_URL", "LITELLM_MASTER_KEY", "LITELLM_LICENSE", "OPENAI_API_KEY", "OPENAI_BASE_URL",
    "OPENAI_API_BASE", "ANTHROPIC_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
    "https_proxy", "all_proxy", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
)


def _installed_version() -> str | None:
    for meta in VENV.glob("lib/python3*/site-packages/litellm-*.dist-info"):
        return meta.name.removeprefix("litellm-").removesuffix(".dist-info")
    return None


def ensure_venv(verbose: bool = True) -> Path:
    """Create .venv-litellm and install the pinned litellm[proxy] into it if needed; returns the
    `litellm` executable. Roughly 75 s on first use (2 cores), instant afterwards."""
    exe = VENV / "bin" / "litellm"
    if exe.exists() and _installed_version() == LITELLM_VERSION:
        return exe
    python = shutil.which("python3.11") or sys.executable
    started = time.monotonic()
    if not (VENV / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(VENV)], check=True)
    if verbose:
        print(f"installing litellm[proxy]=={LITELLM_VERSION} into {VENV} ...", file=sys.stderr, flush=True)
    subprocess.run(
        ["nice", "-n", "10", str(VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
         f"litellm[proxy]=={LITELLM_VERSION}"],
        check=True,
    )
    if verbose:
        print(f"installed in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return exe


def proxy_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update(OFFLINE_ENV)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def write_config(directory: Path, rpm: int | None = 60, mock_delay: float | None = None) -> Path:
    """The proxy's config. JSON is YAML, so no YAML library is needed on this side."""
    def deployment(name: str, limit: int | None) -> dict:
        params: dict = {
            "model": f"openai/{name}",
            "api_key": "sk-not-used",  # mock_response: never sent anywhere
            # The proxy opens connections to each api_base at start-up (pre-warming) even for a
            # mock: a closed loopback port keeps that on 127.0.0.1 (without it: api.openai.com).
            "api_base": "http://127.0.0.1:9/v1",
            "mock_response": MOCK_RESPONSE,
        }
        if mock_delay:
            params["mock_delay"] = mock_delay
        if limit is not None:
            params["rpm"] = limit
        return {"model_name": name, "litellm_params": params}

    config = {
        "model_list": [deployment(MODEL_NAME, rpm), deployment(WARMUP_MODEL, None)],
        "router_settings": {
            # ModelRateLimitingCheck: fixed calendar-minute window, 429 + llm_provider-retry-after: 60
            "optional_pre_call_checks": ["enforce_model_rate_limits"],
            "num_retries": 0,  # a 429 goes straight back to the client
        },
        "litellm_settings": {"num_retries": 0},
        # A master key needs no database; any other bearer token gets 400 "No connected db."
        "general_settings": {"master_key": MASTER_KEY},
    }
    path = directory / "litellm_config.yaml"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, key: str | None = None, timeout: float = 2.0) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def chat(base_url: str, api_key: str, model: str, content: str = "hi", stream: bool = False,
         timeout: float = 30.0) -> tuple[int, dict[str, str], str]:
    """One chat completion with urllib: (status, headers lower-cased, body text)."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
    req = urllib.request.Request(
        f"{base_url}/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the proxy's process group (uvicorn and anything it spawned), SIGKILL after 15 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):  # stragglers of the group, if any
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def litellm_proxy(rpm: int | None = 60, *, port: int | None = None, mock_delay: float | None = None,
                  warmup: bool = True, startup_timeout: float = 180.0,
                  log_to: Path | None = None) -> Iterator[tuple[str, str, str]]:
    """Run a LiteLLM proxy on 127.0.0.1 and yield (base_url ending in /v1, api_key, model_name).

    `rpm`: the model's requests-per-minute limit (None: no limit). `mock_delay`: seconds the mock
    waits before answering. `warmup`: send one request to an unlimited twin of the model first, so
    the first measured request is not slowed by lazy imports and the minute's budget is untouched.
    The proxy's log goes to `log_to` (default: a temporary file, shown if start-up fails)."""
    exe = ensure_venv()
    with tempfile.TemporaryDirectory(prefix="litellm-gw-") as tmp:
        config = write_config(Path(tmp), rpm=rpm, mock_delay=mock_delay)
        port = port or free_port()
        log_path = log_to or Path(tmp) / "proxy.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                 "--num_workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=proxy_env(),
                cwd=tmp, start_new_session=True,
            )
        try:
            root = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + startup_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"litellm exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
                with contextlib.suppress(OSError):
                    if _get(f"{root}/health/liveliness") == 200 and _get(f"{root}/v1/models", MASTER_KEY) == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"litellm did not answer in {startup_timeout:.0f} s:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.25)
            base_url = f"{root}/v1"
            if warmup:
                for stream in (False, True):
                    status, _, body = chat(base_url, MASTER_KEY, WARMUP_MODEL, "warm-up", stream=stream)
                    if status != 200:
                        raise RuntimeError(f"warm-up request failed: {status} {body[:500]}")
            yield base_url, MASTER_KEY, MODEL_NAME
        finally:
            _stop(proc)


def seconds_left_in_window() -> float:
    """Seconds until the limit's window (the UTC calendar minute) resets."""
    return 60.0 - (time.time() % 60.0)


def _burst(base_url: str, api_key: str, model: str, n: int, concurrency: int = 8) -> list[tuple[int, dict, str]]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(concurrency) as ex:
        return list(ex.map(lambda i: chat(base_url, api_key, model, f"question {i}"), range(n)))


def self_check(rpm: int = 60, extra: int = 10, check_window: bool = False) -> None:
    t0 = time.monotonic()
    ensure_venv()
    t_install = time.monotonic() - t0
    t1 = time.monotonic()
    with litellm_proxy(rpm=rpm) as (base_url, key, model):
        t_start = time.monotonic() - t1
        print(f"venv ready in {t_install:.1f} s; proxy up and warmed in {t_start:.1f} s at {base_url}")
        # The whole check must sit inside one calendar minute.
        if seconds_left_in_window() < 20:
            wait = seconds_left_in_window() + 0.5
            print(f"waiting {wait:.0f} s for a fresh minute")
            time.sleep(wait)
        window = int(time.time() // 60)

        status, headers, body = chat(base_url, key, model, "stream please", stream=True)
        events = [line for line in body.splitlines() if line.startswith("data: ")]
        assert status == 200, (status, body[:500])
        assert headers.get("content-type", "").startswith("text/event-stream"), headers
        assert events and events[-1] == "data: [DONE]", body[-300:]
        text = "".join(
            (json.loads(e[6:])["choices"][0]["delta"].get("content") or "") for e in events[:-1]
            if json.loads(e[6:])["choices"]
        )
        assert text == MOCK_RESPONSE, text
        print(f"stream: 200 {headers['content-type']}, {len(events) - 1} chunks + [DONE], text {text!r}")

        started = time.monotonic()
        results = _burst(base_url, key, model, rpm + extra - 1)
        elapsed = time.monotonic() - started
        assert int(time.time() // 60) == window, "the burst crossed a minute boundary: run again"
        ok = sum(1 for s, _, _ in results if s == 200) + 1  # + the stream
        refused = [(s, h, b) for s, h, b in results if s == 429]
        others = [s for s, _, _ in results if s not in (200, 429)]
        print(f"burst: {rpm + extra} requests in {elapsed:.2f} s (stream included): {ok} x 200, "
              f"{len(refused)} x 429, others {others}")
        remaining = sorted({int(h["x-ratelimit-remaining-requests"]) for s, h, _ in results if s == 200})
        print(f"x-ratelimit-remaining-requests seen on the 200s: {remaining}")
        assert ok == rpm and len(refused) == extra and not others
        s, h, b = refused[0]
        print("a 429's headers:")
        for k, v in h.items():
            print(f"  {k}: {v}")
        print(f"a 429's body: {b}")
        assert h.get("llm_provider-retry-after") == "60" and "retry-after" not in h, h

        if check_window:
            wait = seconds_left_in_window() + 1.0
            print(f"waiting {wait:.0f} s for the next calendar minute (a sliding window would refuse "
                  f"until {60:.0f} s after the burst)")
            time.sleep(wait)
            since = time.monotonic() - started
            s2, _, b2 = chat(base_url, key, model, "new minute")
            print(f"{since:.0f} s after the burst started, in the next minute: {s2}")
            assert s2 == 200, b2
            print("window: fixed, the UTC calendar minute")
    print("self-check passed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rpm", type=int, default=60)
    ap.add_argument("--check-window", action="store_true", help="also wait for :00 to show the window resets then")
    args = ap.parse_args()
    self_check(rpm=args.rpm, check_window=args.check_window)


if __name__ == "__main__":
    main()
