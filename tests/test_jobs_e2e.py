"""End to end: job files, a model matrix, thresholds, reports, the cache, the budget, Batch API input."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl
from e2e import REPO, base_for, cli, expected_reply, mock, read_output, stats, write_jsonl


def write_job(tmp: Path, body: str) -> Path:
    path = tmp / "job.toml"
    path.write_text(body)
    return path


def echo_eval(tmp: Path) -> Path:
    shutil.copy(REPO / "examples/data/echo_eval.jsonl", tmp / "echo.jsonl")
    return tmp / "echo.jsonl"


def matrix_job(tmp: Path, server, min_pass_rate: float) -> Path:
    data = echo_eval(tmp)
    return write_job(
        tmp,
        f"""
name = "matrix"
input = "{data}"
output = "{tmp / 'out.parquet'}"

[request]
template = "{{{{ question }}}}"

[[models]]
provider = "openai"
model = "model-a"
api_base = "{base_for(server, 'openai')}"
api_key_env = "MOCK_KEY"

[[models]]
provider = "anthropic"
model = "model-b"
api_base = "{base_for(server, 'anthropic')}"
api_key_env = "MOCK_KEY"
concurrency = 2

[score]
expected_column = "answer"
method = "contains"
min_pass_rate = {min_pass_rate}

[report]
markdown = "{tmp / 'report.md'}"
junit = "{tmp / 'report.xml'}"
json = "{tmp / 'report.json'}"
""",
    )


def test_two_model_matrix_with_known_pass_rates_and_reports(tmp_path: Path) -> None:
    server = mock()
    job = matrix_job(tmp_path, server, 0.7)
    res = cli("run", "--job", str(job), env={"MOCK_KEY": server.api_key})
    assert res.code == 0, res.stderr
    df = read_output(tmp_path / "out.parquet")
    assert df.height == 40 and stats(server)["requests"] == 40
    assert sorted(df["model"].unique().to_list()) == ["model-a", "model-b"]
    assert sorted(df["provider"].unique().to_list()) == ["anthropic", "openai"]
    for model in ("model-a", "model-b"):
        rows = df.filter(pl.col("model") == model)
        assert rows.height == 20 and rows["id"].n_unique() == 20
        assert rows["passed"].sum() == 15  # the dataset's documented pass rate: 0.75
    questions = {r["id"]: r["question"] for r in df.iter_rows(named=True)}
    assert df["output"].to_list() == [expected_reply(questions[i]) for i in df["id"]]
    suites = ET.parse(tmp_path / "report.xml").getroot()
    cases = suites.findall(".//testcase")
    assert len(cases) == 40
    assert {c.get("classname") for c in cases} == {"model-a", "model-b"}
    assert sum(1 for c in cases if c.find("failure") is not None) == 10
    assert "75.0%" in (tmp_path / "report.md").read_text()
    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary  # per-model stats are there


def test_missed_threshold_exits_1_and_names_the_model(tmp_path: Path) -> None:
    server = mock()
    job = matrix_job(tmp_path, server, 0.9)
    res = cli("run", "--job", str(job), env={"MOCK_KEY": server.api_key})
    assert res.code == 1, res.stderr
    assert "model-a" in res.stderr and "0.75" in res.stderr and "0.90" in res.stderr


def test_cli_flags_override_the_job(tmp_path: Path) -> None:
    server = mock()
    job = matrix_job(tmp_path, server, 0.7)
    out = tmp_path / "other.parquet"
    res = cli("run", "--job", str(job), "-o", str(out), "--limit", "5", "--min-pass-rate", "0.1",
              env={"MOCK_KEY": server.api_key})
    assert res.code == 0, res.stderr
    assert read_output(out).height == 10  # 5 rows x 2 models


def test_job_mistakes_are_reported_with_key_paths(tmp_path: Path) -> None:
    job = write_job(
        tmp_path,
        """
input = "x.jsonl"
output = "y.parquet"
[[models]]
provider = "openai"
model = "a"
[[models]]
provider = "cohere"
model = "b"
[limits]
concurency = 4
rpm = "fast"
""",
    )
    res = cli("run", "--job", str(job))
    assert res.code == 2 and "Traceback" not in res.stderr
    assert "models[1].provider" in res.stderr
    assert "limits.concurency" in res.stderr and "concurrency" in res.stderr
    assert "limits.rpm" in res.stderr


def test_cached_rerun_into_a_new_output_sends_nothing(tmp_path: Path) -> None:
    server = mock()
    texts = [f"cached question {i}" for i in range(120)]
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts])
    env = {"OPENAI_API_KEY": server.api_key, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    args = ("--provider", "openai", "--model", "m", "--api-base", base_for(server, "openai"), "--cache")
    first = cli("run", str(path), "-o", str(tmp_path / "a.parquet"), *args, env=env)
    assert first.code == 0, first.stderr
    assert stats(server)["requests"] == 120
    assert (tmp_path / "cache" / "prompt-runner").is_dir()
    second = cli("run", str(path), "-o", str(tmp_path / "b.parquet"), *args, env=env)
    assert second.code == 0, second.stderr
    assert stats(server)["requests"] == 120  # zero new requests
    a, b = read_output(tmp_path / "a.parquet"), read_output(tmp_path / "b.parquet")
    assert b["output"].to_list() == a["output"].to_list() == [expected_reply(t) for t in texts]
    assert not a["cache_hit"].any() and b["cache_hit"].all()
    # A different model is a different request: no hit.
    third = cli("run", str(path), "-o", str(tmp_path / "c.parquet"), *args[:3], "m2", *args[4:], env=env)
    assert third.code == 0 and stats(server)["requests"] == 240


def test_budget_stops_dispatching_and_resume_finishes_without_paying_twice(tmp_path: Path) -> None:
    server = mock(latency_ms=20)
    rows = 400
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"budget question number {i}"} for i in range(rows)])
    out = tmp_path / "out.parquet"
    env = {"OPENAI_API_KEY": server.api_key}
    # gpt-4o-mini: $0.15 / $0.60 per 1M tokens; each row costs ~$0.0000039.
    res = cli("run", str(path), "-o", str(out), "--provider", "openai", "--model", "gpt-4o-mini",
              "--api-base", base_for(server, "openai"), "--concurrency", "4", "--max-cost", "0.0002", env=env)
    assert res.code == 1, res.stderr
    assert "budget" in res.stderr and "prompt-runner resume" in res.stderr
    sent = stats(server)["requests"]
    assert 40 <= sent <= 70, sent  # stopped near $0.0002, not at 400 rows
    res = cli("resume", str(out), "--max-cost", "1", env=env)
    assert res.code == 0, res.stderr
    df = read_output(out)
    assert df.height == rows and (df["status"] == "ok").all()
    assert stats(server)["requests"] == rows  # nothing paid twice
    assert df["cost_usd"].sum() > 0.0002


def test_openai_batch_api_input_runs_as_it_is(tmp_path: Path) -> None:
    server = mock()
    lines = [
        {
            "custom_id": f"request-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"batch prompt {i}"}]},
        }
        for i in range(30)
    ]
    path = write_jsonl(tmp_path / "batch.jsonl", lines)
    out = tmp_path / "out.parquet"
    res = cli("run", str(path), "-o", str(out), "--provider", "openai", "--model", "gpt-4o-mini",
              "--api-base", base_for(server, "openai"), env={"OPENAI_API_KEY": server.api_key})
    assert res.code == 0, res.stderr
    df = read_output(out)
    assert df["id"].to_list() == [f"request-{i}" for i in range(30)]
    assert df["output"].to_list() == [expected_reply(f"batch prompt {i}") for i in range(30)]


def test_dry_run_estimates_and_sends_nothing(tmp_path: Path) -> None:
    server = mock()
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x" * 400} for _ in range(100)])
    res = cli("run", str(path), "-o", str(tmp_path / "o.parquet"), "--provider", "openai", "--model", "gpt-4o-mini",
              "--max-tokens", "50", "--api-base", base_for(server, "openai"), "--dry-run",
              env={"OPENAI_API_KEY": server.api_key})
    assert res.code == 0, res.stderr
    assert "100 rows" in res.stderr and "prompt tokens" in res.stderr and "estimated cost $" in res.stderr
    assert stats(server)["requests"] == 0 and not (tmp_path / "o.parquet").exists()


def test_shipped_offline_jobs_run_green(tmp_path: Path) -> None:
    for name in ("mock-qa", "mock-matrix"):
        out = tmp_path / f"{name}.parquet"
        res = cli("run", "--job", f"jobs/{name}.toml", "-o", str(out), env={"XDG_CACHE_HOME": str(tmp_path)})
        assert res.code == 0, res.stderr
        assert read_output(out)["passed"].mean() == 0.75
