"""An eval end to end on the mock provider: run the shipped job's request, then score and report."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
from e2e import REPO, cli

from runner.evals.evaluate import evaluate
from runner.evals.jobfile import Job, load_job, merge_cli
from runner.schema import META_CONFIG


def run_args(options: dict[str, Any]) -> list[str]:
    """The `run` command line for one model of a job (until `run --job` lands)."""
    args = [options["input"], "-o", str(options["output"]), "--provider", options["provider"], "--model", options["model"]]
    for name in ("template", "system", "max_tokens", "temperature", "concurrency", "max_retries", "timeout"):
        if options[name] is not None:
            args += [f"--{name.replace('_', '-')}", str(options[name])]
    return args


@pytest.fixture()
def job(tmp_path: Path) -> Job:
    loaded = load_job(REPO / "jobs" / "mock-qa.toml")
    job = merge_cli(loaded, {"output": tmp_path / "mock-qa.parquet"})
    from dataclasses import replace

    return replace(
        job,
        report=replace(job.report, markdown=str(tmp_path / "r.md"), junit=str(tmp_path / "r.xml"), json=str(tmp_path / "r.json")),
    )


def test_mock_qa_job_passes_at_its_documented_rate(job: Job, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = cli("run", *run_args(job.run_options(job.models[0])))
    assert res.code == 0, res.stderr
    assert evaluate(job) == []
    err = capsys.readouterr().err
    assert "every model reaches the minimum pass rate 0.70" in err
    table = pq.read_table(job.output)
    assert META_CONFIG in table.schema.metadata  # the run's metadata survives scoring
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    assert frame["passed"].sum() == 15 and frame.height == 20  # 0.75, as jobs/mock-qa.toml says
    assert frame.filter(~pl.col("passed"))["id"].to_list() == ["e003", "e007", "e011", "e015", "e019"]
    stats = json.loads(Path(job.report.json or "").read_text())["models"][0]
    assert stats["model"] == "mock-echo" and stats["pass_rate"] == 0.75
    assert "75.0% (15/20)" in Path(job.report.markdown or "").read_text()
    root = ET.parse(job.report.junit or "").getroot()
    assert root.get("tests") == "20" and root.get("failures") == "5"
    # the report command reads the scored output and agrees
    res = cli("report", str(job.output))
    assert res.code == 0 and "75.0% (15/20)" in res.stdout


def test_a_missed_threshold_returns_1(job: Job, capsys: pytest.CaptureFixture[str]) -> None:
    res = cli("run", *run_args(job.run_options(job.models[0])))
    assert res.code == 0, res.stderr
    strict = merge_cli(job, {"min_pass_rate": 0.8})
    assert len(evaluate(strict)) == 1
    assert "below the minimum pass rate: mock-echo: pass rate 0.75 < 0.80 (short by 0.05)" in capsys.readouterr().err
    assert cli("report", str(job.output)).code == 1  # the recorded threshold is the strict one
