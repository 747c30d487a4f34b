"""Reports: per-model stats, Markdown, JUnit XML, JSON, and `prompt-runner report` exit codes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from e2e import cli
from outputs import output_table

from runner.evals import report
from runner.evals.score import META_SCORE, ScoreSpec, check_thresholds, score_table


def matrix_rows() -> list[dict[str, Any]]:
    """Two models × 10 questions: gpt passes 8, claude passes 5 and has 2 errors."""
    rows: list[dict[str, Any]] = []
    for i in range(10):
        rows.append({"id": f"q{i}", "model": "gpt-4o-mini", "provider": "openai", "answer": "yes",
                     "output": "yes" if i < 8 else f"no <{i}>", "cost_usd": 0.001, "latency_ms": float(100 + i)})
    for i in range(10):
        row: dict[str, Any] = {"id": f"q{i}", "model": "claude", "provider": "anthropic", "answer": "yes",
                               "output": "yes" if i < 5 else "no", "latency_ms": float(200 + 10 * i)}
        if i >= 8:
            row.update(status="error", output=None, error_type="rate_limited" if i == 8 else "timeout",
                       error="slow down" if i == 8 else "timed out after 60s")
        rows.append(row)
    return rows


@pytest.fixture()
def scored() -> pa.Table:
    table = output_table(matrix_rows(), {"answer": pa.string()})
    return score_table(table, ScoreSpec(method="exact", expected_column="answer", min_pass_rate=0.7))


def test_model_stats(scored: pa.Table) -> None:
    stats = {s["model"]: s for s in report.model_stats(scored)}
    assert list(stats) == ["gpt-4o-mini", "claude"]
    gpt, claude = stats["gpt-4o-mini"], stats["claude"]
    assert (gpt["rows"], gpt["ok"], gpt["failed"], gpt["passed"], gpt["pass_rate"]) == (10, 10, 0, 8, 0.8)
    assert (claude["rows"], claude["ok"], claude["failed"], claude["passed"]) == (10, 8, 2, 5)
    assert claude["errors"] == {"rate_limited": 1, "timeout": 1}
    assert gpt["errors"] == {}
    assert gpt["prompt_tokens"] == 100 and gpt["completion_tokens"] == 50
    assert gpt["cost_usd"] == pytest.approx(0.01) and claude["cost_usd"] is None
    assert gpt["latency_p50_ms"] == pytest.approx(104.5)
    assert claude["latency_p99_ms"] == pytest.approx(200 + 70 * 0.99)  # ok rows only: 200..270
    assert gpt["provider"] == "openai" and gpt["cache_hits"] is None


def test_stats_without_scores() -> None:
    stats = report.model_stats(output_table([{"output": "x"}, {"status": "error"}]))
    assert stats[0]["pass_rate"] is None and stats[0]["passed"] is None
    assert stats[0]["errors"] == {"server_error": 1}


def test_markdown(scored: pa.Table, tmp_path: Path) -> None:
    stats = report.model_stats(scored)
    missed = check_thresholds(scored, 0.7)
    path = tmp_path / "sub" / "report.md"
    report.write_markdown(stats, path, missed, title="nightly-qa", min_pass_rate=0.7)
    text = path.read_text()
    assert text.startswith("## nightly-qa\n")
    lines = text.splitlines()
    assert "| model | rows | ok | failed | pass rate |" in lines[2]
    assert any(line.startswith("| `gpt-4o-mini` | 10 | 10 | 0 | 80.0% (8/10) |") for line in lines)
    assert any(line.startswith("| `claude` | 10 | 8 | 2 | 50.0% (5/10) | rate_limited 1, timeout 1 |") for line in lines)
    assert "**❌ Below the minimum pass rate 0.70:**" in text
    assert "- claude: pass rate 0.50 < 0.70 (short by 0.20)" in text
    report.write_markdown(stats, path, [], title="t", min_pass_rate=0.4)
    assert "✅ Every model reaches the minimum pass rate 0.40." in path.read_text()


def test_junit(scored: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    report.write_junit(scored, path)
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "20" and root.get("failures") == "7"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"gpt-4o-mini", "claude"}
    gpt, claude = suites["gpt-4o-mini"], suites["claude"]
    assert (gpt.get("tests"), gpt.get("failures")) == ("10", "2")
    assert (claude.get("tests"), claude.get("failures")) == ("10", "5")
    cases = gpt.findall("testcase")
    assert [c.get("name") for c in cases] == [f"q{i}" for i in range(10)]
    assert {c.get("classname") for c in cases} == {"gpt-4o-mini"}
    failure = cases[8].find("failure")
    assert failure is not None and failure.get("message") == "expected 'yes', got 'no <8>'"
    assert cases[0].find("failure") is None
    by_id = {c.get("name"): c for c in claude.findall("testcase")}
    error = by_id["q8"].find("failure")
    assert error is not None and error.get("message") == "rate_limited: slow down" and error.get("type") == "rate_limited"
    assert by_id["q9"].find("failure").get("message") == "timeout: timed out after 60s"  # type: ignore[union-attr]
    assert by_id["q5"].find("failure").get("type") == "not_passed"  # type: ignore[union-attr]


def test_junit_truncates_long_outputs_and_handles_unscored(tmp_path: Path) -> None:
    long = "x" * 5000
    table = output_table([{"output": long, "answer": "y"}], {"answer": pa.string()})
    scored = score_table(table, ScoreSpec(method="exact", expected_column="answer"))
    report.write_junit(scored, tmp_path / "j.xml")
    failure = ET.parse(tmp_path / "j.xml").getroot().find("testsuite/testcase/failure")
    assert failure is not None and len(failure.get("message", "")) < 250 and len(failure.text or "") < 2100
    report.write_junit(output_table([{"output": "x"}, {"status": "error"}]), tmp_path / "u.xml")
    root = ET.parse(tmp_path / "u.xml").getroot()
    assert root.get("tests") == "2" and root.get("failures") == "1"


def test_json(scored: pa.Table, tmp_path: Path) -> None:
    stats = report.model_stats(scored)
    report.write_json(stats, tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    assert [m["model"] for m in data["models"]] == ["gpt-4o-mini", "claude"]
    assert data["models"][0]["pass_rate"] == 0.8


def write_output(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path)
    return path


def test_report_command_exit_codes(scored: pa.Table, tmp_path: Path) -> None:
    out = write_output(scored, tmp_path / "out.parquet")
    md, junit, js = tmp_path / "r.md", tmp_path / "r.xml", tmp_path / "r.json"
    # claude (0.50) misses the job's 0.7 recorded when scoring -> exit 1, reports still written
    res = cli("report", str(out), "--markdown", str(md), "--junit", str(junit), "--json", str(js))
    assert res.code == 1, res.stderr
    assert "gpt-4o-mini" in res.stdout and "claude" in res.stdout and "80.0% (8/10)" in res.stdout
    assert "below the minimum pass rate: claude: pass rate 0.50 < 0.70 (short by 0.20)" in res.stderr
    assert md.exists() and junit.exists() and json.loads(js.read_text())["thresholds_missed"]
    assert "Traceback" not in res.stderr
    # an explicit lower threshold passes
    res = cli("report", str(out), "--min-pass-rate", "0.5")
    assert res.code == 0, res.stderr
    assert "every model reaches the minimum pass rate 0.50" in res.stderr


def test_report_command_unscored_output(tmp_path: Path) -> None:
    out = write_output(output_table([{"output": "a"}, {"status": "error"}]), tmp_path / "plain.parquet")
    res = cli("report", str(out))
    assert res.code == 0 and "server_error 1" in res.stdout
    res = cli("report", str(out), "--min-pass-rate", "0.5")
    assert res.code == 2 and res.stderr.strip() == f"error: {out}: --min-pass-rate needs a scored output (no 'passed' column)"


def test_report_command_bad_files(tmp_path: Path) -> None:
    res = cli("report", str(tmp_path / "missing.parquet"))
    assert res.code == 2 and res.stderr.strip() == f"error: {tmp_path / 'missing.parquet'}: no such file"
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    res = cli("report", str(junk))
    assert res.code == 2 and res.stderr.startswith(f"error: {junk}: not a Parquet file")
    assert len(res.stderr.strip().splitlines()) == 1
    other = write_output(pa.table({"a": [1]}), tmp_path / "other.parquet")
    res = cli("report", str(other))
    assert res.code == 2 and res.stderr.strip() == f"error: {other}: not a prompt-runner output (no 'id' column)"


def test_meta_score_key_is_shared() -> None:
    assert report.META_SCORE == META_SCORE
