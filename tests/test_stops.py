"""End to end: runs that must stop or slow down: a wrong key, a rate limit, Ctrl-C."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import polars as pl
from e2e import base_for, cli, expected_reply, mock, read_output, spawn, stats, write_jsonl

SECRET = "sk-live-Zq8w3XkT9pLm2Vb7Nc4Rf6Hd1Jy5"


def test_wrong_key_stops_the_run_quickly_and_never_shows_the_key(tmp_path: Path) -> None:
    server = mock(api_key="the-right-key")
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"question {i}"} for i in range(3000)])
    out = tmp_path / "out.parquet"
    started = time.monotonic()
    res = cli(
        "run", str(path), "-o", str(out), "--provider", "openai", "--model", "m",
        "--api-base", base_for(server, "openai"), "--concurrency", "8",
        env={"OPENAI_API_KEY": SECRET},
    )
    elapsed = time.monotonic() - started
    assert res.code == 1
    assert elapsed < 15
    assert "auth" in res.stderr and "401" in res.stderr
    assert "Traceback" not in res.stderr
    requests = stats(server)["requests"]
    assert 1 <= requests <= 2 * 8, requests  # about one concurrency window, not 3000
    # The mock echoes the key in its 401 message, as OpenAI does; none of it may leak.
    leaked = [SECRET, SECRET[:12], SECRET[-10:]]
    everything = res.stdout + res.stderr
    for f in [out, *out.parent.rglob("*")]:
        if f.is_file():
            everything += f.read_bytes().decode("latin-1")
    for fragment in leaked:
        assert fragment not in everything


def test_anthropic_wrong_key_stops_too(tmp_path: Path) -> None:
    server = mock(api_key="the-right-key")
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"question {i}"} for i in range(500)])
    res = cli(
        "run", str(path), "-o", str(tmp_path / "out.parquet"), "--provider", "anthropic", "--model", "m",
        "--api-base", base_for(server, "anthropic"), "--concurrency", "4", "--stream",
        env={"ANTHROPIC_API_KEY": SECRET},
    )
    assert res.code == 1 and "auth" in res.stderr
    assert stats(server)["requests"] <= 8
    assert SECRET not in res.stderr


def test_quota_exhaustion_stops_the_run(tmp_path: Path) -> None:
    server = mock(quota_exhausted=True)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"question {i}"} for i in range(500)])
    res = cli(
        "run", str(path), "-o", str(tmp_path / "out.parquet"), "--provider", "openai", "--model", "m",
        "--api-base", base_for(server, "openai"), "--concurrency", "4",
        env={"OPENAI_API_KEY": server.api_key},
    )
    assert res.code == 1 and "quota" in res.stderr
    assert stats(server)["requests"] <= 8


def test_runs_just_under_the_servers_rate_limit(tmp_path: Path) -> None:
    rate, rows = 40, 240
    server = mock(rate_limit_rps=rate)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"question {i}"} for i in range(rows)])
    out = tmp_path / "out.parquet"
    res = cli(
        "run", str(path), "-o", str(out), "--provider", "openai", "--model", "m",
        "--api-base", base_for(server, "openai"), "--concurrency", "32", "--rpm", str(rate * 60),
        env={"OPENAI_API_KEY": server.api_key},
    )
    assert res.code == 0, res.stderr
    df = read_output(out)
    assert df.height == rows and (df["status"] == "ok").all()
    span = (df["finished_at"].max() - df["started_at"].min()).total_seconds()
    ideal = rows / rate
    assert 0.85 * ideal <= span <= 1.25 * ideal, span
    s = stats(server)
    too_many = s["by_status"].get("429", 0)
    assert too_many <= 0.01 * rows, s
    print(f"rate limit: {rows} rows at {rate}/s in {span:.2f}s (ideal {ideal:.1f}s), 429s: {too_many}")


def test_backs_off_when_no_limit_is_set(tmp_path: Path) -> None:
    rate, rows = 50, 300
    server = mock(rate_limit_rps=rate)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"question {i}"} for i in range(rows)])
    out = tmp_path / "out.parquet"
    res = cli(
        "run", str(path), "-o", str(out), "--provider", "anthropic", "--model", "m",
        "--api-base", base_for(server, "anthropic"), "--concurrency", "64", "--max-retries", "20",
        env={"ANTHROPIC_API_KEY": server.api_key},
    )
    assert res.code == 0, res.stderr
    df = read_output(out)
    assert (df["status"] == "ok").all()
    # Without --rpm the client still settles instead of hammering: far fewer 429s than rows.
    assert stats(server)["by_status"].get("429", 0) < rows


def test_ctrl_c_stops_cleanly_and_the_rerun_completes(tmp_path: Path) -> None:
    server = mock(latency_ms=100)
    rows = 600
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"question {i}"} for i in range(rows)])
    out = tmp_path / "out.parquet"
    args = (
        "run", str(path), "-o", str(out), "--provider", "openai", "--model", "m",
        "--api-base", base_for(server, "openai"), "--concurrency", "8",
    )
    env = {"OPENAI_API_KEY": server.api_key}
    proc = spawn(*args, env=env)
    time.sleep(2.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "resume" in err
    sent_first = stats(server)["requests"]
    assert 0 < sent_first < rows
    res = cli(*args, env=env)
    assert res.code == 0, res.stderr
    df = read_output(out)
    assert df.height == rows and df["id"].to_list() == [str(i) for i in range(rows)]
    assert df["output"].to_list() == [expected_reply(f"question {i}") for i in range(rows)]
    resent = stats(server)["requests"] - rows
    assert resent <= 8, resent  # at most the requests in flight at the interrupt
    assert df.filter(pl.col("status") != "ok").height == 0
