"""The Batch API engine (`--batch-api`) against the mock's OpenAI Files/Batches and Anthropic
Message Batches endpoints: both providers end to end, splitting, half price, kill -9 at each
phase then a rerun (counted on the mock: no batch created twice), expiry, cancel, --no-wait then
resume, the live fallback, the cache, the budget, and what is refused."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any, Callable

import polars as pl
import pytest

from e2e import base_for, cli, expected_reply, mock, provider_env, read_output, spawn, stats, write_jsonl
from runner._native import MockServer
from runner.engine.pricing import price_of

PROVIDERS = ["openai", "anthropic"]
MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}


def dataset(tmp_path: Path, n: int, bad: set[int] = frozenset()) -> Path:  # type: ignore[assignment]
    rows = [{"id": f"q{i}", "prompt": f"question {i}" + (" [[bad]]" if i in bad else "")} for i in range(n)]
    return write_jsonl(tmp_path / "in.jsonl", rows)


def run_args(server: MockServer, provider: str, data: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(data), "-o", str(out), "--provider", provider, "--model", MODEL[provider],
            "--api-base", base_for(server, provider), "--batch-api", "--max-tokens", "50", *extra]


def batch_stats(server: MockServer) -> dict[str, Any]:
    s = stats(server)
    live = s["by_path"].get("/v1/chat/completions", 0) + s["by_path"].get("/v1/messages", 0)
    return {k: s.get(k, 0) for k in ("batches_created", "batch_requests", "files_uploaded", "batches_cancelled")} | {"live": live}


def check_complete(out: Path, n: int) -> pl.DataFrame:
    df = read_output(out)
    assert df.height == n
    assert sorted(df["id"].to_list()) == sorted(f"q{i}" for i in range(n)), "every input row exactly once"
    return df


@pytest.mark.parametrize("provider", PROVIDERS)
def test_end_to_end_at_half_price(tmp_path: Path, provider: str) -> None:
    server = mock(batch_seconds=1.0)
    n = 30
    data, out = dataset(tmp_path, n, bad={7}), tmp_path / "out.parquet"
    r = cli(*run_args(server, provider, data, out, "--max-failures", "1"), env=provider_env(server, provider))
    assert r.code == 0, r.stderr
    df = check_complete(out, n).sort("id")
    ok = df.filter(pl.col("status") == "ok")
    assert ok.height == n - 1
    for row in ok.iter_rows(named=True):
        assert row["output"] == expected_reply(f"question {row['id'][1:]}", 50)
    bad = df.filter(pl.col("id") == "q7").row(0, named=True)
    assert (bad["status"], bad["error_type"], bad["http_status"]) == ("error", "bad_request", 400)
    assert df["batch_id"].null_count() == 0 and df["batch_id"].n_unique() == 1
    # Half the live price, from the usage in the results.
    price_in, price_out = price_of(MODEL[provider]) or (0.0, 0.0)
    for row in ok.iter_rows(named=True):
        live = (row["prompt_tokens"] * price_in + row["completion_tokens"] * price_out) / 1e6
        cache = row["cached_prompt_tokens"] or row["cache_write_tokens"] or 0
        if not cache:
            assert row["cost_usd"] == pytest.approx(live / 2)
    s = batch_stats(server)
    assert (s["batches_created"], s["batch_requests"], s["live"]) == (1, n, 0)
    assert "batch" in r.stderr and "submitted" in r.stderr


def test_split_into_batches_and_dry_run(tmp_path: Path) -> None:
    server = mock(batch_seconds=0.5)
    n = 25
    data, out = dataset(tmp_path, n), tmp_path / "out.parquet"
    dry = cli(*run_args(server, "openai", data, out, "--batch-size", "10", "--dry-run"), env=provider_env(server, "openai"))
    assert dry.code == 0, dry.stderr
    assert "3 batches of up to 9 requests" in dry.stderr and "Batch API's price" in dry.stderr
    assert batch_stats(server)["batches_created"] == 0
    r = cli(*run_args(server, "openai", data, out, "--batch-size", "10"), env=provider_env(server, "openai"))
    assert r.code == 0, r.stderr
    df = check_complete(out, n)
    assert df["batch_id"].n_unique() == 3
    assert sorted(df.group_by("batch_id").len()["len"].to_list()) == [5, 10, 10]
    assert batch_stats(server)["batches_created"] == 3


def _wait_for(what: Callable[[], bool], proc: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert proc.poll() is None, f"the run ended before the moment to kill it: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.01)


def _records(out: Path) -> list[dict[str, Any]]:
    folder = Path(f"{out}.run") / "batches"
    found = []
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            found.append(json.loads(f.read_text()))
        except ValueError:
            pass
    return found


def _before_create(server: MockServer, out: Path, provider: str) -> bool:
    """The intent is recorded and no batch exists: OpenAI's file upload has been stored and is
    not answered yet; Anthropic's create is waiting before its work."""
    s = batch_stats(server)
    if s["batches_created"]:
        return False
    return s["files_uploaded"] >= 1 if provider == "openai" else bool(_records(out))


PHASES: dict[str, Callable[[MockServer, Path, str], bool]] = {
    "before_create": _before_create,
    # The provider created the batch; its answer (the id) has not reached the run.
    "between_create_and_record": lambda server, out, provider: batch_stats(server)["batches_created"] >= 1,
    # The id is recorded; the run is waiting for the batch to end.
    "while_polling": lambda server, out, provider: any(r["state"] == "submitted" for r in _records(out)),
    # The batch ended and its results are being downloaded.
    "while_downloading": lambda server, out, provider: any(
        "content" in path or "results" in path for path in stats(server)["by_path"]),
}


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_kill_at_each_phase_then_rerun_submits_nothing_twice(tmp_path: Path, provider: str, phase: str) -> None:
    server = mock(batch_seconds=1.0, batch_delay_ms=1500)
    n = 40
    data, out = dataset(tmp_path, n), tmp_path / "out.parquet"
    env = provider_env(server, provider)
    proc = spawn(*run_args(server, provider, data, out), env=env)
    _wait_for(lambda: PHASES[phase](server, out, provider), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    killed_at = batch_stats(server)
    r = cli("resume", str(out), env=env)
    assert r.code == 0, r.stderr
    check_complete(out, n)
    s = batch_stats(server)
    print(f"{provider} {phase}: at the kill {killed_at}; after the rerun {s}")
    assert s["batches_created"] == 1, f"one batch needed, {s['batches_created']} created"
    assert s["batch_requests"] == n and s["live"] == 0
    if phase == "between_create_and_record":
        assert "not submitted again" in r.stderr


def test_expired_batch_keeps_its_answers_and_resume_resubmits_the_rest(tmp_path: Path) -> None:
    server = mock(batch_seconds=1.0, batch_expire_first=1, batch_expire_fraction=0.5)
    n = 20
    data, out = dataset(tmp_path, n), tmp_path / "out.parquet"
    env = provider_env(server, "openai")
    r = cli(*run_args(server, "openai", data, out), env=env)
    assert r.code == 1, r.stderr
    df = check_complete(out, n)
    assert df.filter(pl.col("status") == "ok").height == n // 2
    assert set(df.filter(pl.col("status") == "error")["error_type"].to_list()) == {"expired"}
    first = df.filter(pl.col("status") == "ok").select("id", "output", "batch_id")
    r = cli("resume", str(out), env=env)
    assert r.code == 0, r.stderr
    df = check_complete(out, n)
    assert df.filter(pl.col("status") == "ok").height == n
    assert first.join(df.select("id", "output", "batch_id"), on="id").filter(
        (pl.col("output") != pl.col("output_right")) | (pl.col("batch_id") != pl.col("batch_id_right"))).height == 0, \
        "answers kept from the expired batch are not asked again"
    s = batch_stats(server)
    assert (s["batches_created"], s["batch_requests"], s["live"]) == (2, n + n // 2, 0)


def test_expired_rows_sent_live_with_fallback(tmp_path: Path) -> None:
    server = mock(batch_seconds=1.0, batch_expire_first=1, batch_expire_fraction=0.5)
    n = 20
    data, out = dataset(tmp_path, n), tmp_path / "out.parquet"
    env = provider_env(server, "anthropic")
    r = cli(*run_args(server, "anthropic", data, out, "--fallback", "live"), env=env)
    assert r.code == 0, r.stderr
    df = check_complete(out, n)
    assert df.filter(pl.col("status") == "ok").height == n
    assert df["batch_id"].null_count() == n // 2, "the rows sent live have no batch"
    s = batch_stats(server)
    assert (s["batches_created"], s["batch_requests"], s["live"]) == (1, n, n // 2)


def test_no_wait_then_status_then_resume(tmp_path: Path) -> None:
    server = mock(batch_seconds=2.0)
    n = 12
    data, out = dataset(tmp_path, n), tmp_path / "out.parquet"
    env = provider_env(server, "openai")
    started = time.monotonic()
    r = cli(*run_args(server, "openai", data, out, "--no-wait"), env=env)
    assert r.code == 0, r.stderr
    assert time.monotonic() - started < 15 and "submitted" in r.stderr
    assert not out.exists()
    st = cli("status", str(out), env=env)
    assert st.code == 0 and "batches open at the provider" in st.stdout
    assert "batch m0-00001 (batch_" in st.stdout
    r = cli("resume", str(out), env=env)
    assert r.code == 0, r.stderr
    check_complete(out, n)
    st = cli("status", str(out), "--json", env=env)
    batches = json.loads(st.stdout)["batches"]
    assert [b["state"] for b in batches] == ["collected"]
    assert batch_stats(server)["batches_created"] == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_cancel_keeps_what_finished(tmp_path: Path, provider: str) -> None:
    server = mock(batch_seconds=6.0)
    n = 60
    data, out = dataset(tmp_path, n), tmp_path / "out.parquet"
    env = provider_env(server, provider)
    r = cli(*run_args(server, provider, data, out, "--no-wait"), env=env)
    assert r.code == 0, r.stderr
    time.sleep(3.0)
    c = cli("cancel", str(out), env=env)
    assert c.code == 1, c.stderr  # rows were cancelled: not every row is ok
    df = check_complete(out, n)
    ok = df.filter(pl.col("status") == "ok").height
    assert 0 < ok < n, f"{ok} rows finished before the cancel"
    assert set(df.filter(pl.col("status") == "error")["error_type"].to_list()) == {"cancelled"}
    assert batch_stats(server)["batches_cancelled"] == 1
    # A resume sends the cancelled rows again, in a new batch.
    r = cli("resume", str(out), env=env)
    assert r.code == 0, r.stderr
    assert check_complete(out, n).filter(pl.col("status") == "ok").height == n
    assert batch_stats(server)["batch_requests"] == 2 * n - ok


def test_cache_hits_are_never_submitted(tmp_path: Path) -> None:
    server = mock(batch_seconds=0.5)
    n = 10
    data = dataset(tmp_path, n)
    env = {**provider_env(server, "openai"), "PROMPT_RUNNER_CACHE_DIR": str(tmp_path / "cache")}
    first = cli(*run_args(server, "openai", data, tmp_path / "a.parquet", "--cache"), env=env)
    assert first.code == 0, first.stderr
    second = cli(*run_args(server, "openai", data, tmp_path / "b.parquet", "--cache"), env=env)
    assert second.code == 0, second.stderr
    df = check_complete(tmp_path / "b.parquet", n)
    assert df["cache_hit"].all()
    assert batch_stats(server)["batches_created"] == 1


def test_budget_is_checked_before_submitting(tmp_path: Path) -> None:
    server = mock(batch_seconds=0.5)
    data, out = dataset(tmp_path, 20), tmp_path / "out.parquet"
    r = cli(*run_args(server, "openai", data, out, "--max-cost", "0.0000001"), env=provider_env(server, "openai"))
    assert r.code == 1
    assert "does not cover the next batch" in r.stderr
    assert batch_stats(server)["batches_created"] == 0


def test_built_in_mock_and_a_job_with_a_live_and_a_batch_model(tmp_path: Path) -> None:
    data = dataset(tmp_path, 8)
    r = cli("run", str(data), "-o", str(tmp_path / "m.parquet"), "--provider", "mock", "--batch-api",
            "--mock-config", json.dumps({"batch_seconds": 0.5}))
    assert r.code == 0, r.stderr
    assert check_complete(tmp_path / "m.parquet", 8)["batch_id"].null_count() == 0
    server = mock(batch_seconds=0.5)
    job = tmp_path / "job.toml"
    job.write_text(f"""
input = "{data}"
output = "{tmp_path / 'j.parquet'}"
[request]
max_tokens = 20
[[models]]
provider = "openai"
model = "gpt-4o-mini"
api_base = "{base_for(server, 'openai')}"
mode = "batch"
[[models]]
provider = "openai"
model = "gpt-4.1-mini"
api_base = "{base_for(server, 'openai')}"
""")
    r = cli("run", "--job", str(job), env=provider_env(server, "openai"))
    assert r.code == 0, r.stderr
    df = read_output(tmp_path / "j.parquet")
    assert df.height == 16 and (df["status"] == "ok").all()
    by_model = {m: d for (m,), d in df.group_by("model")}
    assert by_model["gpt-4o-mini"]["batch_id"].null_count() == 0
    assert by_model["gpt-4.1-mini"]["batch_id"].null_count() == 8
    s = batch_stats(server)
    assert (s["batches_created"], s["batch_requests"], s["live"]) == (1, 8, 8)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--stream"], "--stream"),
        (["--rpm", "100"], "--rpm/--tpm"),
        (["--metrics-port", "0"], "--metrics-port"),
        (["--batch-size", "0"], "--batch-size"),
        (["--fallback", "later"], "--fallback"),
    ],
)
def test_what_a_batch_run_cannot_honour_is_refused(tmp_path: Path, extra: list[str], message: str) -> None:
    server = mock()
    data, out = dataset(tmp_path, 3), tmp_path / "out.parquet"
    r = cli(*run_args(server, "openai", data, out, *extra), env=provider_env(server, "openai"))
    assert r.code == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert batch_stats(server)["batches_created"] == 0


def test_batch_flags_need_batch_api_and_the_mock_cannot_be_left(tmp_path: Path) -> None:
    data, out = dataset(tmp_path, 3), tmp_path / "out.parquet"
    r = cli("run", str(data), "-o", str(out), "--provider", "mock", "--no-wait")
    assert r.code == 2 and "--no-wait applies to Batch API runs" in r.stderr
    r = cli("run", str(data), "-o", str(out), "--provider", "mock", "--batch-api", "--no-wait")
    assert r.code == 2 and "mock-server" in r.stderr


def test_open_batches_are_never_sent_live_nor_forgotten_by_restart(tmp_path: Path) -> None:
    server = mock(batch_seconds=30.0)
    data, out = dataset(tmp_path, 6), tmp_path / "out.parquet"
    env = provider_env(server, "openai")
    r = cli(*run_args(server, "openai", data, out, "--no-wait"), env=env)
    assert r.code == 0, r.stderr
    live = ["run", str(data), "-o", str(out), "--provider", "openai", "--model", MODEL["openai"],
            "--api-base", base_for(server, "openai"), "--max-tokens", "50"]
    r = cli(*live, env=env)
    assert r.code == 2 and "6 rows are in batches open at the provider" in r.stderr
    r = cli(*live, "--restart", env=env)
    assert r.code == 2 and "--restart: 1 batches of this run are open" in r.stderr
    assert batch_stats(server)["live"] == 0
    # The run's saved options are untouched: status and cancel still see a Batch API run.
    assert "batches open at the provider" in cli("status", str(out), env=env).stdout
    assert cli("cancel", str(out), env=env).code == 1
    assert batch_stats(server)["batches_cancelled"] == 1


def test_a_job_file_limits_mode_and_the_python_api(tmp_path: Path) -> None:
    import runner

    data = dataset(tmp_path, 5)
    job = tmp_path / "job.toml"
    body = f'input = "{data}"\noutput = "{tmp_path / "j.parquet"}"\n[[models]]\nprovider = "mock"\n[limits]\nmode = "%s"\n'
    job.write_text(body % "fast")
    r = cli("run", "--job", str(job))
    assert r.code == 2 and "limits.mode" in r.stderr and "'live' or 'batch'" in r.stderr
    job.write_text(body % "batch")
    r = cli("run", "--job", str(job), "--mock-config", json.dumps({"batch_seconds": 0.3}))
    assert r.code == 0, r.stderr
    assert read_output(tmp_path / "j.parquet")["batch_id"].null_count() == 0
    frame = runner.run(str(data), provider="mock", batch_api=True, mock_config=json.dumps({"batch_seconds": 0.3}), progress=False)
    assert frame.height == 5 and frame["batch_id"].null_count() == 0 and (frame["status"] == "ok").all()
    with pytest.raises(TypeError, match="--no-wait"):
        runner.run(str(data), provider="mock", batch_api=True, wait=False)


def test_sigterm_while_waiting_leaves_the_batch_to_resume(tmp_path: Path) -> None:
    server = mock(batch_seconds=3.0)
    data, out = dataset(tmp_path, 10), tmp_path / "out.parquet"
    env = provider_env(server, "anthropic")
    proc = spawn(*run_args(server, "anthropic", data, out), env=env)
    _wait_for(lambda: any(r["state"] == "submitted" for r in _records(out)), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "the batches go on at the provider" in err and "prompt-runner resume" in err
    r = cli("resume", str(out), env=env)
    assert r.code == 0, r.stderr
    check_complete(out, 10)
    assert batch_stats(server)["batches_created"] == 1
