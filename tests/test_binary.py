"""The standalone `model-client-rs` binary with a request file, against the mock server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from e2e import REPO, base_for, expected_reply, mock

SECRET = "sk-live-Bn4mV8cX2zL6kJ0hG5fD3sA9"


@pytest.fixture(scope="session")
def binary() -> Path:
    """The binary `make build` (or `make binary`) built; built here only if it is missing."""
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    path = target / "release" / "model-client-rs"
    if not path.exists():
        subprocess.run(["cargo", "build", "--release", "--bin", "model-client-rs"], cwd=REPO, check=True)
    return path


def request_file(tmp_path: Path, server: Any, provider: str, text: str, **extra: Any) -> Path:
    request = {
        "messages": [{"role": "system", "content": "Be brief.", "kind": "text"}, {"role": "user", "content": text, "kind": "text"}],
        "provider": provider,
        "model": "m",
        "parameters": {"temperature": 0.7, "max_tokens": 64},
        "api_base": base_for(server, provider),
        **extra,
    }
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    return path


def call(binary: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
    return subprocess.run([str(binary), *args], check=False, capture_output=True, text=True, env={**clean, **(env or {})}, timeout=60)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_plain_and_streamed(binary: Path, tmp_path: Path, provider: str) -> None:
    server = mock()
    key = {f"{provider.upper()}_API_KEY": server.api_key}
    path = request_file(tmp_path, server, provider, "hello from the binary")
    plain = call(binary, "--request-file", str(path), env=key)
    assert (plain.returncode, plain.stdout, plain.stderr) == (0, expected_reply("hello from the binary") + "\n", "")
    streamed = call(binary, "--request-file", str(path), "--stream", env=key)
    assert (streamed.returncode, streamed.stdout) == (0, expected_reply("hello from the binary") + "\n")
    assert json.loads(server.stats_json())["streamed"] == 1


def test_stream_arrives_piece_by_piece(binary: Path, tmp_path: Path) -> None:
    server = mock()
    path = request_file(tmp_path, server, "openai", "one two three four five six")
    proc = subprocess.Popen(
        [str(binary), "--request-file", str(path), "--stream"],
        stdout=subprocess.PIPE,
        env={**os.environ, "OPENAI_API_KEY": server.api_key},
    )
    assert proc.stdout is not None
    first = proc.stdout.read1(4096)  # type: ignore[attr-defined]
    rest = proc.stdout.read()
    assert proc.wait(timeout=30) == 0
    assert (first + rest).decode() == expected_reply("one two three four five six") + "\n"


def test_json_output_and_base_url_from_the_environment(binary: Path, tmp_path: Path) -> None:
    server = mock()
    path = request_file(tmp_path, server, "anthropic", "json please")
    request = json.loads(path.read_text())
    del request["api_base"]
    path.write_text(json.dumps(request))
    res = call(binary, "--request-file", str(path), "--stream", "--json", env={"ANTHROPIC_API_KEY": server.api_key, "ANTHROPIC_BASE_URL": server.url})
    assert res.returncode == 0, res.stderr
    answer = json.loads(res.stdout)
    assert answer["text"] == expected_reply("json please") and answer["finish_reason"] == "end_turn"
    assert answer["usage"] == {"prompt_tokens": 4, "completion_tokens": 3}
    assert answer["latency_ms"] > 0 and answer["ttft_ms"] is not None and answer["attempts"] == 1


def test_exit_codes_and_one_line_errors(binary: Path, tmp_path: Path) -> None:
    server = mock(api_key="right")
    path = request_file(tmp_path, server, "openai", "hi")
    wrong = call(binary, "--request-file", str(path), env={"OPENAI_API_KEY": SECRET})
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert wrong.stderr.startswith("error: auth: HTTP 401") and wrong.stderr.count("\n") == 1
    assert SECRET not in wrong.stderr and SECRET[:12] not in wrong.stderr
    missing_key = call(binary, "--request-file", str(path))
    assert (missing_key.returncode, missing_key.stderr) == (2, "error: OPENAI_API_KEY is not set\n")
    bad = tmp_path / "bad.json"
    bad.write_text('{"messages": [], ')
    res = call(binary, "--request-file", str(bad), env={"OPENAI_API_KEY": "k"})
    assert res.returncode == 2 and str(bad) in res.stderr and res.stderr.count("\n") == 1
    assert call(binary, "--stream").returncode == 2
    assert call(binary, "--request-file", str(tmp_path / "nope.json"), env={"OPENAI_API_KEY": "k"}).returncode == 2


def test_json_logs_on_stderr_without_the_key(binary: Path, tmp_path: Path) -> None:
    server = mock(fault_rate=1.0, faults=["503"], api_key=SECRET)
    path = request_file(tmp_path, server, "openai", "hi", parameters={"max_retries": 1})
    res = call(binary, "--request-file", str(path), "--log-level", "debug", "--log-format", "json", env={"OPENAI_API_KEY": SECRET})
    assert res.returncode == 1 and res.stdout == ""
    lines = [line for line in res.stderr.splitlines() if line.startswith("{")]
    events = [json.loads(line) for line in lines]
    assert any(e["fields"].get("message") == "retrying" and e["fields"].get("cause") == "overloaded" for e in events)  # OpenAI's "engine is overloaded" 503
    assert SECRET not in res.stderr


def test_does_not_link_libpython(binary: Path) -> None:
    if shutil.which("ldd") is None:
        pytest.skip("no ldd")
    linked = subprocess.run(["ldd", str(binary)], check=False, capture_output=True, text=True).stdout
    assert "libpython" not in linked


def test_a_stream_answered_with_json_prints_its_text(binary: Path, tmp_path: Path) -> None:
    server = mock(stream_as_json=True)
    path = request_file(tmp_path, server, "openai", "whole json answer")
    streamed = call(binary, "--request-file", str(path), "--stream", env={"OPENAI_API_KEY": server.api_key})
    assert (streamed.returncode, streamed.stdout) == (0, expected_reply("whole json answer") + "\n")
