"""The run's write-ahead log: what a `kill -9` leaves in it, read back by a real resume.

Runs are real processes killed with SIGKILL once the mock server has counted a share of the
rows' requests; the server's count tells what was sent again.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import polars as pl
from e2e import cli, mock, read_output, spawn, stats, write_jsonl
from test_resume import CONCURRENCY, assert_complete, prompts, run_args

ROWS = 1500


def killed_run(tmp_path: Path, texts: list[str], share: float, *extra: str) -> tuple[Path, Path, object, int]:
    """Starts a run of `texts` and kills it once `share` of them were requested; the input,
    the output, the server and the requests it had counted."""
    server = mock(latency_ms=20, latency_jitter_ms=40)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts])
    out = tmp_path / "out.parquet"
    proc = spawn(*run_args(path, out, server, *extra), env={"OPENAI_API_KEY": server.api_key})
    deadline = time.monotonic() + 60
    while stats(server)["requests"] < share * len(texts) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    sent = stats(server)["requests"]
    assert 0 < sent < len(texts), "the kill must land mid-run"
    return path, out, server, sent


def segments(out: Path) -> list[Path]:
    return sorted((out.with_name(out.name + ".run") / "log").glob("*.wal"))


def test_status_after_a_kill_counts_the_rows_in_the_log(tmp_path: Path) -> None:
    path, out, server, sent = killed_run(tmp_path, prompts(ROWS), 0.5)
    assert segments(out), "a killed run leaves its log"
    status = json.loads(cli("status", str(out), "--json").stdout)
    # Every request but those on the wire at the kill was answered, and is saved.
    assert sent - CONCURRENCY <= status["done"] <= sent, (sent, status["done"])
    assert status["state"].startswith("stopped") and status["pending"] == ROWS - status["done"]
    assert status["prompt_tokens"] > 0


def test_a_torn_log_tail_is_ignored(tmp_path: Path) -> None:
    texts = prompts(ROWS)
    path, out, server, sent = killed_run(tmp_path, texts, 0.4)
    torn = segments(out)[-1]
    data = torn.read_bytes()
    # A power loss can cut the last record and leave zeros after it.
    torn.write_bytes(data[:-7] + bytes(4096))
    res = cli(*run_args(path, out, server), env={"OPENAI_API_KEY": server.api_key})
    assert res.code == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert_complete(out, texts)
    resent = stats(server)["requests"] - ROWS
    assert 0 <= resent <= CONCURRENCY + 1, resent  # + the row whose record was cut
    assert not segments(out), "the log is folded into parts and deleted at the end"


def test_a_row_in_both_the_log_and_the_parts_gives_one_row(tmp_path: Path) -> None:
    texts = prompts(ROWS)
    path, out, server, sent = killed_run(tmp_path, texts, 0.6)
    saved = {p.name: p.read_bytes() for p in segments(out)}
    assert saved
    env = {"OPENAI_API_KEY": server.api_key}
    assert cli("resume", str(out), env=env).code == 0
    first = read_output(out)
    # The log's rows are in parts now; put the segments back, as a crash between writing a
    # part and deleting them would leave them.
    for name, data in saved.items():
        (out.with_name(out.name + ".run") / "log" / name).write_bytes(data)
    requests = stats(server)["requests"]
    res = cli("resume", str(out), env=env)
    assert res.code == 0, res.stderr
    assert f"resuming: {ROWS} of {ROWS} rows are settled" in res.stderr
    assert stats(server)["requests"] == requests, "nothing is sent again"
    again = assert_complete(out, texts)
    assert again["id"].n_unique() == ROWS
    assert again.drop("run_id").equals(first.drop("run_id"))


def test_failed_rows_in_the_log_are_sent_again_and_ok_rows_are_not(tmp_path: Path) -> None:
    texts = [t + (" [[bad]]" if i % 10 == 0 else "") for i, t in enumerate(prompts(ROWS))]
    path, out, server, sent = killed_run(tmp_path, texts, 0.5)
    env = {"OPENAI_API_KEY": server.api_key}
    assert cli("resume", str(out), "--no-retry-failed", env=env).code == 1
    resent = stats(server)["requests"] - ROWS
    assert 0 <= resent <= CONCURRENCY, resent
    df = read_output(out)
    assert df.height == ROWS and df["id"].n_unique() == ROWS
    bad = df.filter(pl.col("status") == "error")
    assert bad.height == ROWS // 10 and (bad["http_status"] == 400).all()
    before = stats(server)["requests"]
    assert cli("resume", str(out), env=env).code == 1
    assert stats(server)["requests"] - before == ROWS // 10  # only the failed rows


def test_a_long_run_keeps_its_log_small(tmp_path: Path) -> None:
    """Segments go once their rows are in a part: a run's log holds about a second of rows."""
    server = mock(latency_ms=10)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in prompts(6000)])
    out = tmp_path / "out.parquet"
    proc = spawn(*run_args(path, out, server), env={"OPENAI_API_KEY": server.api_key})
    most = 0
    while proc.poll() is None:
        most = max(most, len(segments(out)))
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert 1 <= most <= 3, most
    assert not segments(out)
    assert read_output(out).height == 6000


def test_each_model_of_a_matrix_has_its_log(tmp_path: Path) -> None:
    server = mock(latency_ms=20, latency_jitter_ms=40)
    texts = prompts(800)
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts])
    out = tmp_path / "out.parquet"
    models = "".join(
        f"""
[[models]]
provider = "{provider}"
model = "{model}"
api_base = "{server.url}{'/v1' if provider == 'openai' else ''}"
api_key_env = "MOCK_KEY"
concurrency = 16
"""
        for provider, model in (("openai", "model-a"), ("anthropic", "model-b"))
    )
    job = tmp_path / "job.toml"
    job.write_text(f'input = "{data}"\noutput = "{out}"\n[request]\ntemplate = "{{{{ prompt }}}}"\n{models}')
    env = {"MOCK_KEY": server.api_key}
    proc = spawn("run", "--job", str(job), env=env)
    # A lane's segment exists from its first record after a roll until the next part folds it,
    # so the lanes seen are gathered while the run goes (at one instant a slow lane may have none).
    seen: set[str] = set()
    while stats(server)["requests"] < 800 and proc.poll() is None:
        seen |= {p.name.split("-")[1] for p in segments(out)}
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    seen |= {p.name.split("-")[1] for p in segments(out)}
    assert seen == {"l000", "l001"}
    res = cli("run", "--job", str(job), env=env)
    assert res.code == 0, res.stderr
    resent = stats(server)["requests"] - 2 * len(texts)
    assert 0 <= resent <= 32, resent  # 16 on the wire per model
    df = read_output(out)
    assert df.height == 2 * len(texts)
    assert df.select("id", "model").n_unique() == 2 * len(texts)
    assert (df["status"] == "ok").all()
