"""The end of an eval job: score the finished output in place, write its reports, check thresholds."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from runner.store.files import write_atomic
from runner.engine.request import load_json
from runner.errors import InputError
from runner.evals.jobfile import Job
from runner.evals.html_report import write_html
from runner.evals.report import model_stats, score_record, write_json, write_junit, write_markdown
from runner.evals.score import score_table

__all__ = ["evaluate", "write_reports"]


def evaluate(job: Job, output: str | Path | None = None, err: TextIO | None = None) -> list[str]:
    """Scores ``output`` (default ``job.output``) with ``job.score`` and rewrites it atomically
    with ``score``/``passed`` columns (metadata kept), writes ``job.report``'s files, and prints
    one line per model below ``min_pass_rate``. Returns those lines (empty: no threshold missed).

    Without a ``[score]`` section only the reports are written. Raises InputError for a
    scoring mistake (missing expected column, failing user function).
    """
    err = err or sys.stderr
    path = Path(output if output is not None else job.output)
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the output to score it: {exc}") from None
    score = job.score
    if score is not None and score.method == "json" and score.schema is None and job.request.response_format:
        # The answers were asked to match the response format's schema (the job's, or
        # --response-format's): check that they do.
        schema = load_json(job.request.response_format, "--response-format")
        score = replace(score, schema=schema, schema_file=job.request.response_format)
    if score is not None:
        table = score_table(table, score)
        write_atomic(table, path)
    _, missed = write_reports(
        table,
        markdown_path=job.report.markdown,
        junit_path=job.report.junit,
        json_path=job.report.json,
        html_path=job.report.html,
        min_pass_rate=job.score.min_pass_rate if job.score else None,
        title=f"prompt-runner: {job.name}",
        source=str(path),
    )
    for message in missed:
        print(f"below the minimum pass rate: {message}", file=err)
    if job.score is not None and job.score.min_pass_rate is not None and not missed:
        print(f"every model reaches the minimum pass rate {job.score.min_pass_rate:.2f}", file=err)
    for name in ("markdown", "junit", "json", "html"):
        target = getattr(job.report, name)
        if target:
            print(f"wrote {name} report to {target}", file=err)
    return missed


def write_reports(
    table: pa.Table,
    *,
    markdown_path: str | Path | None = None,
    junit_path: str | Path | None = None,
    json_path: str | Path | None = None,
    html_path: str | Path | None = None,
    min_pass_rate: float | None = None,
    title: str = "prompt-runner report",
    source: str = "",
) -> tuple[list[dict[str, Any]], list[str]]:
    """Everything the run loop needs after a scored run: writes the requested reports and
    returns (stats, threshold messages). ``min_pass_rate`` defaults to the scored one."""
    from runner.evals.score import check_thresholds

    if min_pass_rate is None:
        min_pass_rate = score_record(table).get("min_pass_rate")
    stats = model_stats(table)
    missed = check_thresholds(table, min_pass_rate) if "passed" in table.column_names else []
    if markdown_path:
        write_markdown(stats, markdown_path, missed, title=title, min_pass_rate=min_pass_rate if "passed" in table.column_names else None)
    if junit_path:
        write_junit(table, junit_path)
    if json_path:
        write_json(stats, json_path, min_pass_rate=min_pass_rate, thresholds_missed=missed)
    if html_path:
        write_html(table, html_path, title=title, source=source)
    return stats, missed
