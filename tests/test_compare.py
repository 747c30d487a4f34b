"""`prompt-runner compare`: rows matched by id and model, deltas, regressions and the exit code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from e2e import cli, write_jsonl
from outputs import output_table

from runner.evals import compare
from runner.evals.score import ScoreSpec, score_table

XSS = "<script>alert(1)</script>"


def table(rows: list[dict[str, Any]], scored: bool = True) -> pa.Table:
    out = output_table(rows, {"answer": pa.string()})
    return score_table(out, ScoreSpec(method="exact", expected_column="answer")) if scored else out


def base_rows() -> list[dict[str, Any]]:
    return [{"id": f"q{i}", "model": m, "answer": "yes", "output": "yes" if i < 3 else "no", "latency_ms": 100.0, "cost_usd": 0.01}
            for m in ("a", "b") for i in range(5)]


def test_regressions_fixes_errors_changes_and_rows_in_one_file_only() -> None:
    old = base_rows()
    new = [dict(r) for r in old if not (r["id"] == "q4" and r["model"] == "b")]
    new[0]["output"] = "no"  # a/q0: regression
    new[3]["output"] = "yes"  # a/q3: fix
    new[6].update(status="error", output=None, error_type="timeout", error="slow")  # b/q1: regression and new error
    new[7]["output"] = "YES"  # b/q2: regression, changed
    new.append({"id": "q9", "model": "b", "answer": "yes", "output": "yes", "latency_ms": 300.0, "cost_usd": 0.03})
    c = compare.compare_tables(table(old), table(new))
    assert c.scored and c.matched == 9
    key = lambda rows: sorted((r["model"], r["id"]) for r in rows)  # noqa: E731
    assert key(c.regressions) == [("a", "q0"), ("b", "q1"), ("b", "q2")]
    assert key(c.fixes) == [("a", "q3")]
    assert key(c.new_errors) == [("b", "q1")]
    assert key(c.changed) == [("a", "q0"), ("a", "q3"), ("b", "q2")]
    assert key(c.only_baseline) == [("b", "q4")] and key(c.only_new) == [("b", "q9")]
    assert c.regressions[0]["baseline"]["passed"] is True and c.regressions[0]["new"]["passed"] is False
    models = {m["model"]: m for m in c.models}
    assert models["a"]["pass_rate_baseline"] == pytest.approx(0.6) and models["a"]["pass_rate_delta"] == pytest.approx(0.0)
    assert models["b"]["pass_rate_new"] == pytest.approx(2 / 5) and models["b"]["pass_rate_delta"] == pytest.approx(-0.2)
    assert models["b"]["cost_usd_delta"] == pytest.approx(0.02)  # q4 (0.01) gone, q9 (0.03) new


def test_repeated_ids_pair_up_in_order_and_unscored_files_compare_by_status() -> None:
    old = [{"id": "x", "output": "one"}, {"id": "x", "output": "two"}]
    new = [{"id": "x", "output": "one"}, {"id": "x", "status": "error"}]
    c = compare.compare_tables(table(old, scored=False), table(new, scored=False))
    assert not c.scored and c.matched == 2
    assert [r["baseline"]["output"] for r in c.regressions] == ["two"] and len(c.new_errors) == 1 and not c.changed


def test_markdown_escapes_untrusted_text_and_caps_the_lists() -> None:
    old = [{"id": f"r{i}", "answer": "yes", "output": "yes"} for i in range(60)]
    new = [{"id": f"r{i}", "answer": "yes", "output": XSS + " | *x*"} for i in range(60)]
    text = compare.markdown(compare.compare_tables(table(old), table(new)))
    assert XSS not in text and "\\<script\\>alert(1)\\</script\\> \\| \\*x\\*" in text
    assert "### Regressions (passed before, not now): 60" in text and "… and 10 more (`--json` lists them all)." in text
    assert "| `mock-echo` | 60 → 60 | 100.0% → 0.0% | -100.0 pp |" in text


def run_job(tmp_path: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    out = tmp_path / f"{name}.parquet"
    job = tmp_path / f"{name}.toml"
    job.write_text(
        f'input = "{data}"\noutput = "{out}"\n[request]\ntemplate = "{{{{ q }}}}"\n'
        '[[models]]\nprovider = "mock"\nmodel = "m1"\n[[models]]\nprovider = "mock"\nmodel = "m2"\n'
        '[score]\nmethod = "contains"\nexpected_column = "answer"\n'
    )
    cli("run", "--job", str(job))
    assert out.is_file()
    return out


def test_the_cli_on_real_outputs(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "q": f"say {i}", "answer": f"{i}"} for i in range(8)]
    base = run_job(tmp_path, "base", rows)
    rows[2]["answer"] = "nope"  # regression in both models
    rows[5]["q"] = "say [[bad]] 5"  # a new error (and a regression)
    rows[6]["q"] = "say 6 again"  # changed output, still passing
    new = run_job(tmp_path, "new", rows[1:] + [{"id": "r99", "q": "new", "answer": "new"}])
    md, page, js = tmp_path / "c.md", tmp_path / "c.html", tmp_path / "c.json"
    done = cli("compare", str(base), str(new), "--markdown", str(md), "--html", str(page), "--json", str(js))
    assert done.code == 1, done.stderr
    assert done.stderr.strip() == "4 regressions, more than --max-regressions 0"
    assert "4 regressions, 0 fixes, 2 newly erroring rows, 2 changed outputs, 2 rows only in the baseline, 2 rows only in the new output" in done.stdout
    report = json.loads(js.read_text())
    assert report["counts"] == {"regressions": 4, "fixes": 0, "new_errors": 2, "changed": 2, "only_baseline": 2, "only_new": 2}
    assert sorted(r["id"] for r in report["only_new"]) == ["r99", "r99"]
    assert md.read_text().startswith("## prompt-runner compare")
    assert 'id="count-regressions"><b class="bad">4</b>' in page.read_text()
    assert cli("compare", str(base), str(new), "--max-regressions", "4").code == 0
    assert cli("compare", str(base), str(base)).code == 0


def test_bad_inputs_are_one_line_naming_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(table(base_rows()), good)
    done = cli("compare", str(good), str(tmp_path / "nope.parquet"))
    assert done.code == 2 and done.stderr.strip() == f"error: {tmp_path / 'nope.parquet'}: no such file"
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    done = cli("compare", str(tmp_path / "other.parquet"), str(good))
    assert done.code == 2 and done.stderr.strip() == f"error: {tmp_path / 'other.parquet'}: not a prompt-runner output (no 'id' column)"


def test_the_nightly_example_compares_into_the_step_summary() -> None:
    """examples/ci/nightly.yml compares with the last good night (linted in tests/test_workflows.py)."""
    from e2e import REPO

    text = (REPO / "examples" / "ci" / "nightly.yml").read_text()
    assert "prompt-runner compare baseline/openai-qa.parquet runs/openai-qa.parquet" in text and "GITHUB_STEP_SUMMARY" in text
