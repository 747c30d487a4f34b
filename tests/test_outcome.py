"""End to end: how a run ends. Exit codes and `--max-failures`, a stop kept in the run state for
`status`, the output's columns when no row has a result, and the `developer` role."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from e2e import base_for, cli, expected_reply, mock, read_output, stats, write_jsonl


def bad_rows(tmp_path: Path, n: int = 20, bad: int = 3) -> Path:
    rows = [{"question": f"question {i}" + (" [[bad]]" if i < bad else "")} for i in range(n)]
    return write_jsonl(tmp_path / "in.jsonl", rows)


def run_args(path: Path, out: Path, server, *extra: str) -> tuple[str, ...]:
    return ("run", str(path), "-o", str(out), "--provider", "openai", "--model", "m",
            "--api-base", base_for(server, "openai"), "--template", "{{ question }}",
            "--no-fail-fast", *extra)


def test_max_failures_on_the_command_line(tmp_path: Path) -> None:
    server = mock()
    path = bad_rows(tmp_path)
    env = {"OPENAI_API_KEY": server.api_key}
    within = cli(*run_args(path, tmp_path / "a.parquet", server, "--max-failures", "3"), env=env)
    assert within.code == 0, within.stderr
    assert "3 rows failed, within --max-failures 3" in within.stderr
    beyond = cli(*run_args(path, tmp_path / "b.parquet", server, "--max-failures", "2"), env=env)
    assert beyond.code == 1
    assert cli(*run_args(path, tmp_path / "c.parquet", server), env=env).code == 1  # default 0
    refused = cli(*run_args(path, tmp_path / "d.parquet", server, "--max-failures", "-1"), env=env)
    assert refused.code == 2 and "--max-failures: must be 0 or more" in refused.stderr
    assert stats(server)["requests"] == 60


def test_max_failures_in_a_job_file_and_on_resume(tmp_path: Path) -> None:
    server = mock()
    path = bad_rows(tmp_path)
    out = tmp_path / "out.parquet"
    job = tmp_path / "job.toml"
    job.write_text(
        f'input = "{path}"\noutput = "{out}"\n[request]\ntemplate = "{{{{ question }}}}"\n'
        f'[[models]]\nprovider = "openai"\nmodel = "m"\napi_base = "{base_for(server, "openai")}"\n'
        f'api_key_env = "MOCK_KEY"\n[limits]\nmax_failures = 3\n'
    )
    env = {"MOCK_KEY": server.api_key}
    res = cli("run", "--job", str(job), "--no-fail-fast", env=env)
    assert res.code == 0, res.stderr
    assert read_output(out).filter(pl.col("status") == "error").height == 3
    # The limit is part of the saved run: a resume (which retries the 3 rows) keeps it.
    again = cli("resume", str(out), env=env)
    assert again.code == 0, again.stderr
    assert stats(server)["requests"] == 23


def test_a_run_stopped_by_a_wrong_key_keeps_why_and_its_columns(tmp_path: Path) -> None:
    server = mock(api_key="the-right-key")
    path = write_jsonl(tmp_path / "in.jsonl", [{"question": f"q{i}", "topic": "x"} for i in range(200)])
    out = tmp_path / "out.parquet"
    res = cli(*run_args(path, out, server, "--concurrency", "1"), env={"OPENAI_API_KEY": "sk-wrong-0000"})
    assert res.code == 1
    assert "error: run stopped:" in res.stderr and "Traceback" not in res.stderr
    schema = pq.read_schema(out)
    assert {"id", "question", "topic", "status", "output", "error_type", "cost_usd"} <= set(schema.names)
    status = json.loads(cli("status", str(out), "--json").stdout)
    assert status["state"].startswith("stopped (a failure every row would share):"), status["state"]
    assert "401" in status["state"] and "prompt-runner resume" in status["state"]
    assert "sk-wrong" not in status["state"]
    # Resumed with the right key, it completes, and status says so.
    done = cli("resume", str(out), env={"OPENAI_API_KEY": "the-right-key"})
    assert done.code == 0, done.stderr
    assert json.loads(cli("status", str(out), "--json").stdout)["state"] == "complete"


def test_the_developer_role_reaches_both_providers(tmp_path: Path) -> None:
    server = mock()
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    path = write_jsonl(tmp_path / "in.jsonl", [{"messages": messages}])
    for provider in ("openai", "anthropic"):
        out = tmp_path / f"{provider}.parquet"
        res = cli("run", str(path), "-o", str(out), "--provider", provider, "--model", "m",
                  "--api-base", base_for(server, provider),
                  env={"OPENAI_API_KEY": server.api_key, "ANTHROPIC_API_KEY": server.api_key})
        assert res.code == 0, res.stderr
        df = read_output(out)
        assert df["status"].to_list() == ["ok"], df["error"].to_list()
        assert df["output"].to_list() == [expected_reply("hello there")]
