"""Helpers for end-to-end tests: the CLI as a real subprocess, the mock server, datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from runner._native import MockServer

REPO = Path(__file__).resolve().parent.parent


def mock(**config: Any) -> MockServer:
    return MockServer(json.dumps(config))


def stats(server: MockServer) -> dict[str, Any]:
    return json.loads(server.stats_json())


def base_for(server: MockServer, provider: str) -> str:
    return f"{server.url}/v1" if provider == "openai" else server.url


def expected_reply(last_user_text: str, max_tokens: int | None = None) -> str:
    """The mock's documented rule: 'Echo: ' + the last user message, cut to max_tokens words."""
    words = ("Echo: " + last_user_text).split()
    if max_tokens is not None and len(words) > max_tokens:
        words = words[:max_tokens]
    return " ".join(words)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> Result:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=REPO,
    )


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_output(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path)


def provider_env(server: MockServer, provider: str) -> dict[str, str]:
    """The key for `provider` in its usual variable, as a user would export it."""
    name = "OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY"
    return {name: server.api_key}
