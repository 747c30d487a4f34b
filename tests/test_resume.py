"""Crash safety: real processes killed with real signals, then resumed; changed input; status."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from e2e import base_for, cli, expected_reply, mock, read_output, spawn, stats, write_jsonl

from runner.store.checkpoint import MERGE_PARTS

CONCURRENCY = 32


def prompts(n: int) -> list[str]:
    return [f"question {i} about résumé №{i % 7}" for i in range(n)]


def run_args(path: Path, out: Path, server, *extra: str) -> tuple[str, ...]:
    return (
        "run", str(path), "-o", str(out), "--provider", "openai", "--model", "m",
        "--api-base", base_for(server, "openai"), "--concurrency", str(CONCURRENCY), *extra,
    )


def assert_complete(out: Path, texts: list[str]) -> pl.DataFrame:
    df = read_output(out)
    assert df.height == len(texts)
    assert df["id"].to_list() == [str(i) for i in range(len(texts))]  # one row per input row
    assert (df["status"] == "ok").all()
    assert df["output"].to_list() == [expected_reply(t) for t in texts]
    return df


def wait_for_parts(out: Path, timeout: float = 20) -> None:
    parts = out.with_name(out.name + ".run") / "parts"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if parts.is_dir() and any(parts.glob("part-*.parquet")):
            return
        time.sleep(0.02)
    raise AssertionError("the run wrote no part file")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_moment_then_rerun_completes_with_bounded_resend(tmp_path: Path, seed: int) -> None:
    rows = 3000
    texts = prompts(rows)
    server = mock(latency_ms=60, latency_jitter_ms=80)  # ~320 rows/s at concurrency 32
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts])
    out = tmp_path / "out.parquet"
    env = {"OPENAI_API_KEY": server.api_key}
    proc = spawn(*run_args(path, out, server), env=env)
    wait_for_parts(out)
    moment = random.Random(seed).uniform(0.5, 6.0)
    time.sleep(moment)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    sent_before = stats(server)["requests"]
    assert 0 < sent_before < rows, "the kill must land mid-run"
    res = cli(*run_args(path, out, server), env=env)
    assert res.code == 0, res.stderr
    assert_complete(out, texts)
    resent = stats(server)["requests"] - rows
    # Every answer is in the run's log before its slot is free: only the requests on the wire
    # at the kill are bought again.
    print(f"seed {seed}: killed at {moment:.2f}s after {sent_before} requests; re-sent {resent} (bound {CONCURRENCY})")
    assert 0 <= resent <= CONCURRENCY
    # Flushes every 15 rows (0.5 %) make many small parts; past MERGE_PARTS they are merged.
    parts = list((tmp_path / "out.parquet.run" / "parts").glob("part-*.parquet"))
    assert len(parts) <= 2 * MERGE_PARTS, len(parts)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_graceful_stop_saves_in_flight_work_and_resume_finishes(tmp_path: Path, sig: signal.Signals) -> None:
    rows = 1500
    texts = prompts(rows)
    server = mock(latency_ms=100)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts])
    out = tmp_path / "out.parquet"
    env = {"OPENAI_API_KEY": server.api_key}
    proc = spawn(*run_args(path, out, server), env=env)
    wait_for_parts(out)
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"prompt-runner resume {out}" in err
    sent_before = stats(server)["requests"]
    assert sent_before < rows
    res = cli("resume", str(out), env=env)
    assert res.code == 0, res.stderr
    assert_complete(out, texts)
    resent = stats(server)["requests"] - rows
    assert resent <= CONCURRENCY, resent


def test_second_ctrl_c_abandons_requests_in_flight(tmp_path: Path) -> None:
    server = mock(latency_ms=3000)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in prompts(200)])
    out = tmp_path / "out.parquet"
    proc = spawn(*run_args(path, out, server), env={"OPENAI_API_KEY": server.api_key})
    time.sleep(1.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert time.monotonic() - started < 2.5  # did not wait for the 3 s requests
    res = cli("resume", str(out), env={"OPENAI_API_KEY": server.api_key})
    assert res.code == 0, res.stderr
    assert read_output(out).height == 200


def test_torn_part_file_is_ignored(tmp_path: Path) -> None:
    texts = prompts(400)
    server = mock()
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts])
    out = tmp_path / "out.parquet"
    env = {"OPENAI_API_KEY": server.api_key}
    assert cli(*run_args(path, out, server), env=env).code == 0
    parts = sorted((tmp_path / "out.parquet.run" / "parts").glob("part-*.parquet"))
    victim = parts[len(parts) // 2]
    lost = pl.read_parquet(victim).height
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # torn by a crash
    (victim.parent / "part-999999.parquet").write_bytes(b"PAR1 garbage")  # and a junk one
    out.unlink()
    res = cli(*run_args(path, out, server), env=env)
    assert res.code == 0, res.stderr
    assert_complete(out, texts)
    assert stats(server)["requests"] == 400 + lost  # exactly the torn part's rows again


def test_changed_input_or_model_is_refused_until_restart(tmp_path: Path) -> None:
    server = mock()
    texts = prompts(50)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts])
    out = tmp_path / "out.parquet"
    env = {"OPENAI_API_KEY": server.api_key}
    assert cli(*run_args(path, out, server), env=env).code == 0
    changed = texts[:-1] + ["a different last question"]
    write_jsonl(path, [{"prompt": t} for t in changed])
    res = cli(*run_args(path, out, server), env=env)
    assert res.code == 2 and "input" in res.stderr and "--restart" in res.stderr
    other_model = list(run_args(path, out, server))
    other_model[other_model.index("m")] = "m2"
    res = cli(*other_model, env=env)
    assert res.code == 2 and "model" in res.stderr
    assert stats(server)["requests"] == 50  # nothing was sent by the refused runs
    res = cli(*run_args(path, out, server, "--restart"), env=env)
    assert res.code == 0, res.stderr
    assert_complete(out, changed)
    assert stats(server)["requests"] == 100


def test_no_retry_failed_leaves_failed_rows_alone(tmp_path: Path) -> None:
    server = mock()
    texts = [t + (" [[bad]]" if i % 5 == 0 else "") for i, t in enumerate(prompts(50))]
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts])
    out = tmp_path / "out.parquet"
    env = {"OPENAI_API_KEY": server.api_key}
    assert cli(*run_args(path, out, server), env=env).code == 1
    assert cli("resume", str(out), "--no-retry-failed", env=env).code == 1
    assert stats(server)["requests"] == 50
    assert cli("resume", str(out), env=env).code == 1
    assert stats(server)["requests"] == 60


def test_status_of_finished_running_and_killed_runs(tmp_path: Path) -> None:
    server = mock(latency_ms=100)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in prompts(1200)])
    out = tmp_path / "out.parquet"
    env = {"OPENAI_API_KEY": server.api_key}
    proc = spawn(*run_args(path, out, server), env=env)
    wait_for_parts(out)
    time.sleep(0.5)
    running = json.loads(cli("status", str(out), "--json").stdout)
    assert running["state"].startswith("running") and running["rows"] == 1200
    assert 0 < running["ok"] < 1200 and running["pending"] == 1200 - running["ok"]
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    killed = cli("status", str(out))
    assert killed.code == 0 and "stopped" in killed.stdout and "prompt-runner resume" in killed.stdout
    assert cli("resume", str(out), env=env).code == 0
    done = json.loads(cli("status", str(out), "--json").stdout)
    assert done["state"] == "complete" and done["ok"] == 1200 and done["pending"] == 0
    assert done["latency_ms"]["p50"] >= 100 and done["latency_ms"]["p99"] >= done["latency_ms"]["p50"]
    assert done["prompt_tokens"] > 0 and done["elapsed_s"] > 0
    text = cli("status", str(out)).stdout
    assert "complete" in text and "p95=" in text and "ok=1200" in text


def test_status_of_nothing_is_a_clear_error(tmp_path: Path) -> None:
    res = cli("status", str(tmp_path / "nothing.parquet"))
    assert res.code == 2 and "no run here" in res.stderr


def test_a_second_run_on_the_same_output_is_refused_while_one_runs(tmp_path: Path) -> None:
    server = mock(latency_ms=200)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in prompts(600)])
    out = tmp_path / "out.parquet"
    env = {"OPENAI_API_KEY": server.api_key}
    proc = spawn(*run_args(path, out, server), env=env)
    try:
        wait_for_parts(out)
        res = cli(*run_args(path, out, server), env=env)
        assert res.code == 2 and "another prompt-runner" in res.stderr
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_stops_consistently_and_resumes(tmp_path: Path, small_disk: Path) -> None:
    server = mock()
    # Random text (prompt and echoed output), ~3 MB compressed: five times the disk.
    texts = [f"{i} {random.Random(i).randbytes(400).hex()}" for i in range(4000)]
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts])
    out = small_disk / "out.parquet"
    env = {"OPENAI_API_KEY": server.api_key}
    res = cli(*run_args(path, out, server), env=env)
    assert res.code == 1, res.stderr
    assert "No space left on device" in res.stderr and "resume" in res.stderr
    assert "Traceback" not in res.stderr
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    res = cli("resume", str(out), env=env)
    assert res.code == 0, res.stderr
    assert_complete(out, texts)
