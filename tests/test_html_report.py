"""The HTML report without a browser: what the page holds, its policy, the CLI and job-file ways to it."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from e2e import cli, write_jsonl
from outputs import output_table

from runner.evals.html_report import CELL_CHARS, render_html, row_data
from runner.evals.jobfile import JobFileError, parse_job
from runner.evals.score import ScoreSpec, score_table

XSS = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"


def scored_table() -> pa.Table:
    rows: list[dict[str, Any]] = []
    for model in ("gpt", "claude"):
        for i in range(6):
            row: dict[str, Any] = {"id": f"q{i}", "model": model, "answer": "yes", "output": "yes" if i < 4 else XSS,
                                   "latency_ms": 100.0 + i, "cost_usd": 0.001}
            if model == "claude" and i == 5:
                row.update(status="error", output=None, error_type="bad_request", error=f"HTTP 400: {IMG}")
            rows.append(row)
    table = output_table(rows, {"answer": pa.string()})
    return score_table(table, ScoreSpec(method="exact", expected_column="answer", min_pass_rate=0.5))


def unpack(page: str) -> dict[str, Any]:
    blob = re.search(r'<script type="application/octet-stream" id="report-data"[^>]*>([^<]*)</script>', page)
    assert blob
    return json.loads(gzip.decompress(base64.b64decode(blob.group(1))))


def test_the_page_holds_cards_charts_errors_and_the_rows() -> None:
    page = render_html(scored_table(), title="nightly <qa>", source="out.parquet")
    assert "<title>nightly &lt;qa&gt;</title>" in page
    cards = re.findall(r'<article class="card" data-model="([^"]+)">', page)
    assert cards == ["gpt", "claude"]
    assert '<dd class="big" data-figure="pass-rate">66.7%</dd>' in page  # gpt: 4 of 6
    assert '<dd data-figure="failed" class="bad">1</dd>' in page  # claude's error row
    assert page.count('<rect class="bar"') >= 4  # pass rate, cost and latency bars
    assert "bad_request" in page and "HTTP 400: &lt;img src=x onerror=alert(2)&gt;" in page
    data = unpack(page)
    assert data["models"] == ["gpt", "claude"] and data["expected"] == "answer" and data["scored"]
    cols = data["columns"]
    assert len(cols["id"]) == 12 and cols["output"][4] == XSS and cols["passed"][:5] == [True] * 4 + [False]
    assert cols["ok"][11] is False and cols["error_type"][11] == "bad_request"


def test_untrusted_text_never_reaches_the_markup_unescaped() -> None:
    page = render_html(scored_table(), title="t", source="s")
    assert XSS not in page and IMG not in page
    assert "onerror" not in page.replace("onerror=alert(2)&gt;", "")


def test_the_policy_admits_only_the_pages_own_script_and_style() -> None:
    page = render_html(scored_table(), title="t", source="s")
    policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert policy
    rules = dict(part.strip().split(" ", 1) for part in policy.group(1).replace("&#39;", "'").split(";"))
    assert rules["default-src"] == "'none'" and rules["img-src"] == "data:"
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert len(scripts) == 1 and len(styles) == 1
    digest = lambda text: "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"  # noqa: E731
    assert rules["script-src"] == digest(scripts[0]) and rules["style-src"] == digest(styles[0])
    assert "unsafe-inline" not in policy.group(1) and "http" not in policy.group(1)
    assert not re.search(r"<[^>]*\son[a-z]+=", page)  # no tag has an inline handler


def test_long_cells_are_clipped_and_nested_values_are_json() -> None:
    table = output_table([{"output": "x" * (CELL_CHARS + 10)}], {"messages": pa.list_(pa.string())})
    table = table.set_column(1, "messages", pa.array([["a", "b"]], pa.list_(pa.string())))
    data = row_data(table)
    assert data["columns"]["output"][0].endswith("(10 more characters in the output file)")
    assert data["columns"]["inputs"][data["inputs"].index("messages")][0] == '["a", "b"]'
    assert data["scored"] is False and data["expected"] is None


def test_report_html_from_the_cli_and_from_a_job(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "q": f"say {i}", "answer": f"{i}"} for i in range(6)] + [{"id": "bad", "q": "[[bad]]", "answer": "x"}]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    job = tmp_path / "job.toml"
    job.write_text(
        f'input = "{data}"\noutput = "{tmp_path / "out.parquet"}"\n[request]\ntemplate = "{{{{ q }}}}"\n'
        '[[models]]\nprovider = "mock"\n[score]\nmethod = "contains"\nexpected_column = "answer"\n'
        f'[report]\nhtml = "{tmp_path / "job.html"}"\n'
    )
    done = cli("run", "--job", str(job))
    assert done.code == 1, done.stderr  # the [[bad]] row failed
    assert f"wrote html report to {tmp_path / 'job.html'}" in done.stderr
    assert (tmp_path / "job.html").read_text().startswith("<!DOCTYPE html>")
    done = cli("report", str(tmp_path / "out.parquet"), "--html", str(tmp_path / "sub" / "r.html"))
    assert done.code == 0, done.stderr
    data_ = unpack((tmp_path / "sub" / "r.html").read_text())
    assert len(data_["columns"]["id"]) == 7 and data_["columns"]["error_type"][6] == "bad_request"


def test_report_html_mistakes_are_one_line(tmp_path: Path) -> None:
    done = cli("report", str(tmp_path / "missing.parquet"), "--html", str(tmp_path / "r.html"))
    assert done.code == 2 and done.stderr.strip() == f"error: {tmp_path / 'missing.parquet'}: no such file"
    (tmp_path / "not.parquet").write_text("hello")
    done = cli("report", str(tmp_path / "not.parquet"), "--html", str(tmp_path / "r.html"))
    assert done.code == 2 and len(done.stderr.strip().splitlines()) == 1 and "not.parquet" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_job_file_knows_the_html_key() -> None:
    base = {"input": "in.jsonl", "output": "out.parquet", "models": [{"provider": "mock"}]}
    assert parse_job({**base, "report": {"html": "r.html"}}, "j.toml").report.html == "r.html"
    with pytest.raises(JobFileError, match=r"report.htm: unknown key \(did you mean 'html'\?\)"):
        parse_job({**base, "report": {"htm": "r.html"}}, "j.toml")
