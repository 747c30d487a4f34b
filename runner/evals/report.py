"""Reports of an output file: per-model stats on the terminal, Markdown, JUnit XML and JSON.

Pass rates come from the ``passed`` column (see :mod:`runner.evals.score`); the threshold is the
caller's, else the one recorded when the table was scored. The `report` command is in runner.cli.
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import InputError
from runner.stats import row_stats
from runner.schema import input_column_name

if TYPE_CHECKING:
    import pyarrow as pa

# polars, pyarrow and runner.evals.score are imported where used: this module stays light to import.
META_SCORE = b"prompt_runner.score"  # == runner.evals.score.META_SCORE

__all__ = [
    "load_output",
    "model_stats",
    "score_record",
    "write_json",
    "write_junit",
    "write_markdown",
]

#: Columns every prompt-runner output has (the rest may be absent in older files).
REQUIRED = ("id", "status", "output")
#: How much of an output or expected value a JUnit message quotes.
MESSAGE_CHARS = 200
DETAIL_CHARS = 2000


class ReportError(InputError):
    """The file cannot be reported on."""


def load_output(path: str | Path) -> pa.Table:
    """Reads an output file; one-line ReportError when it is missing or not a runner output."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = Path(path)
    if not file.is_file():
        raise ReportError(f"{file}: no such file")
    try:
        table = pq.read_table(file)
    except (OSError, pa.ArrowException) as err:
        raise ReportError(f"{file}: not a Parquet file ({err})") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ReportError(f"{file}: not a prompt-runner output (no '{missing[0]}' column)")
    return table


def score_record(table: pa.Table) -> dict[str, Any]:
    """How the table was scored (``prompt_runner.score`` metadata), or ``{}``."""
    raw = (table.schema.metadata or {}).get(META_SCORE)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def model_stats(table: pa.Table) -> list[dict[str, Any]]:
    """Per-model stats of an output (see `runner.stats.row_stats`)."""
    return row_stats(table)


# -- formatting ------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _cost(value: float | None) -> str:
    return "–" if value is None else f"${value:,.4f}"


def _rate(stat: dict[str, Any]) -> str:
    if stat["pass_rate"] is None:
        return "–"
    return f"{stat['pass_rate']:.1%} ({stat['passed']}/{stat['rows']})"


def _errors(stat: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in stat["errors"].items()) or "–"


#: (label, formatter) rows of the terminal and Markdown tables.
ROWS: list[tuple[str, Any]] = [
    ("provider", lambda s: s["provider"] or "–"),
    ("rows", lambda s: f"{s['rows']:,}"),
    ("ok", lambda s: f"{s['ok']:,}"),
    ("failed", lambda s: f"{s['failed']:,}"),
    ("pass rate", _rate),
    ("errors", _errors),
    ("prompt tokens", lambda s: f"{s['prompt_tokens']:,}"),
    ("completion tokens", lambda s: f"{s['completion_tokens']:,}"),
    ("cost", lambda s: _cost(s["cost_usd"])),
    ("latency p50 / p95 / p99 ms", lambda s: " / ".join(_ms(s[f"latency_p{q}_ms"]) for q in (50, 95, 99))),
]


def print_stats(stats: list[dict[str, Any]], title: str) -> None:
    """A rich table on stdout: a column per model, a row per measure."""
    from rich.console import Console
    from rich.table import Table

    grid = Table(title=title, title_justify="left")
    grid.add_column("")
    for stat in stats:
        grid.add_column(stat["model"] or "(no model)", justify="right")
    rows = ROWS + ([("cache hits", lambda s: f"{s['cache_hits']:,}")] if any(s["cache_hits"] is not None for s in stats) else [])
    for label, fmt in rows:
        grid.add_row(label, *(fmt(s) for s in stats))
    Console(file=sys.stdout, width=max(100, 30 + 24 * len(stats))).print(grid)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(stats: list[dict[str, Any]], title: str, thresholds: list[str] | None = None, min_pass_rate: float | None = None) -> str:
    """The Markdown report (GitHub step-summary friendly): a heading, one table with a row per
    model, and the threshold result when a threshold is set."""
    lines = [f"## {title}", ""]
    header = ["model", "rows", "ok", "failed", "pass rate", "errors", "prompt tokens", "completion tokens", "cost", "p50 ms", "p95 ms", "p99 ms"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * 4 + ["---"] + ["---:"] * 6) + "|")
    for s in stats:
        cells = [
            f"`{s['model']}`" if s["model"] else "(no model)",
            f"{s['rows']:,}",
            f"{s['ok']:,}",
            f"{s['failed']:,}",
            _rate(s),
            _errors(s),
            f"{s['prompt_tokens']:,}",
            f"{s['completion_tokens']:,}",
            _cost(s["cost_usd"]),
            _ms(s["latency_p50_ms"]),
            _ms(s["latency_p95_ms"]),
            _ms(s["latency_p99_ms"]),
        ]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    lines.append("")
    if min_pass_rate is not None:
        if thresholds:
            lines.append(f"**❌ Below the minimum pass rate {min_pass_rate:.2f}:**")
            lines.append("")
            lines.extend(f"- {_md_cell(message)}" for message in thresholds)
        else:
            lines.append(f"**✅ Every model reaches the minimum pass rate {min_pass_rate:.2f}.**")
        lines.append("")
    return "\n".join(lines)


def _write_text(path: str | Path, text: str) -> None:
    file = Path(path)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, file)
    except OSError as err:
        raise InputError(f"{file}: cannot write the report: {err.strerror}") from None


def write_markdown(
    stats: list[dict[str, Any]],
    path: str | Path,
    thresholds: list[str] | None = None,
    *,
    title: str = "prompt-runner report",
    min_pass_rate: float | None = None,
) -> None:
    """Writes :func:`markdown` to ``path`` (``thresholds``: :func:`runner.evals.score.check_thresholds`)."""
    _write_text(path, markdown(stats, title, thresholds, min_pass_rate))


def write_json(stats: list[dict[str, Any]], path: str | Path, **extra: Any) -> None:
    """Writes ``{"models": stats, **extra}`` as JSON."""
    _write_text(path, json.dumps({"models": stats, **extra}, indent=2, ensure_ascii=False) + "\n")


def _clip(value: Any, limit: int) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def junit_tree(table: pa.Table, expected_column: str | None = None, suite_name: str = "prompt-runner") -> ET.ElementTree:
    """JUnit XML: a ``<testsuite>`` per model, a ``<testcase classname=model name=id>`` per row;
    error rows fail with ``error_type: error``, unpassed rows with expected vs output."""
    if expected_column is None:
        expected_column = score_record(table).get("expected_column")
    if expected_column and expected_column not in table.column_names:
        alt = input_column_name(expected_column)
        expected_column = alt if alt in table.column_names else None
    names = ["id", "status", "output"] + [
        c for c in ("model", "error_type", "error", "latency_ms", "passed", "score") if c in table.column_names
    ]
    if expected_column and expected_column not in names:
        names.append(expected_column)
    data = table.select(names).to_pydict()
    n = table.num_rows
    models = data.get("model", [""] * n)
    root = ET.Element("testsuites", name=suite_name)
    suites: dict[str, tuple[ET.Element, list[int]]] = {}
    for i in range(n):
        model = models[i] or ""
        if model not in suites:
            suites[model] = (ET.SubElement(root, "testsuite", name=model or suite_name), [0, 0, 0])
        suite, counts = suites[model]
        latency = data.get("latency_ms", [None] * n)[i]
        case = ET.SubElement(
            suite, "testcase", classname=model or suite_name, name=str(data["id"][i]), time=f"{(latency or 0) / 1000:.3f}"
        )
        counts[0] += 1
        counts[2] += int(latency or 0)
        status = data["status"][i]
        if status != "ok":
            kind = data.get("error_type", [None] * n)[i] or "error"
            message = f"{kind}: {data.get('error', [None] * n)[i] or ''}".rstrip(": ")
            failure = ET.SubElement(case, "failure", message=_clip(message, MESSAGE_CHARS), type=kind)
            failure.text = _clip(data.get("error", [None] * n)[i], DETAIL_CHARS)
            counts[1] += 1
        elif "passed" in data and not data["passed"][i]:
            output = data["output"][i]
            if expected_column:
                expected = data[expected_column][i]
                message = f"expected {_clip(expected, MESSAGE_CHARS // 2)!r}, got {_clip(output, MESSAGE_CHARS // 2)!r}"
            else:
                message = f"not passed: {_clip(output, MESSAGE_CHARS)!r}"
            score = data.get("score", [None] * n)[i]
            failure = ET.SubElement(case, "failure", message=message, type="not_passed")
            failure.text = f"score: {score}\noutput:\n{_clip(output, DETAIL_CHARS)}"
            counts[1] += 1
    total_tests = total_failures = 0
    for suite, (tests, failures, latency_ms) in suites.values():
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        suite.set("skipped", "0")
        suite.set("time", f"{latency_ms / 1000:.3f}")
        total_tests += tests
        total_failures += failures
    root.set("tests", str(total_tests))
    root.set("failures", str(total_failures))
    root.set("errors", "0")
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(table: pa.Table, path: str | Path, expected_column: str | None = None) -> None:
    """Writes :func:`junit_tree` to ``path`` (UTF-8, with an XML declaration)."""
    file = Path(path)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        junit_tree(table, expected_column).write(file, encoding="utf-8", xml_declaration=True)
    except OSError as err:
        raise InputError(f"{file}: cannot write the report: {err.strerror}") from None
