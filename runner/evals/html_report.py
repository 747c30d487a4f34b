"""The HTML report of an output file: one self-contained page (model cards, charts, errors by
type, a filterable, sortable table of rows and a matrix's outputs side by side) that opens
offline. The rows travel inside the page as gzip-compressed JSON and are drawn a page at a time,
so 100,000 rows stay usable."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.evals.charts import PALETTE, bars, histograms
from runner.evals.page import pack_json, render_page, usd, write_page
from runner.evals.report import model_stats, score_record
from runner.schema import RESERVED, input_column_name

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["render_html", "write_html"]

#: Longest text of one cell kept in the page (the Parquet file keeps it all).
CELL_CHARS = 4000
#: Columns the runner adds that the table shows by their own names.
SCORE_COLUMNS = {"score", "passed"}


def _text(value: Any) -> Any:
    """A cell as the page's script gets it: strings clipped, nested values as JSON, NaN as null."""
    import json

    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False, default=str)
    if len(value) > CELL_CHARS:
        return value[:CELL_CHARS] + f"… ({len(value) - CELL_CHARS:,} more characters in the output file)"
    return value


def _column(table: pa.Table, name: str) -> list[Any]:
    if name not in table.column_names:
        return [None] * table.num_rows
    return [_text(v) for v in table.column(name).to_pylist()]


def _expected_column(table: pa.Table) -> str | None:
    name = score_record(table).get("expected_column")
    if not name:
        return None
    if name in table.column_names and name not in RESERVED:
        return str(name)
    alt = input_column_name(name)
    return alt if alt in table.column_names else None


def row_data(table: pa.Table) -> dict[str, Any]:
    """What the page's script draws: the models, the input columns and one list per column."""
    models_col = _column(table, "model")
    models: list[str] = []
    index: dict[str, int] = {}
    for m in models_col:
        key = m or ""
        if key not in index:
            index[key] = len(models)
            models.append(key)
    expected = _expected_column(table)
    inputs = [c for c in table.column_names if c not in RESERVED and c not in SCORE_COLUMNS and c != expected]
    ids = table.column("id").to_pylist()
    if "input.id" in inputs and [None if v is None else str(v) for v in table.column("input.id").to_pylist()] == ids:
        inputs.remove("input.id")  # the input's own id column, already shown as the id
    return {
        "models": models,
        "inputs": inputs,
        "expected": expected,
        "scored": "passed" in table.column_names,
        "columns": {
            "id": [None if v is None else str(v) for v in _column(table, "id")],
            "model": [index[m or ""] for m in models_col],
            "inputs": [_column(table, c) for c in inputs],
            "expected": _column(table, expected) if expected else None,
            "output": _column(table, "output"),
            "score": _column(table, "score"),
            "passed": _column(table, "passed"),
            "ok": [s == "ok" for s in table.column("status").to_pylist()],
            "error_type": _column(table, "error_type"),
            "error": _column(table, "error"),
            "latency_ms": _column(table, "latency_ms"),
            "cost_usd": _column(table, "cost_usd"),
        },
    }


def _errors(table: pa.Table, stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Errors by type: a row per (model, type) with its count and one example message."""
    import polars as pl

    if "error_type" not in table.column_names:
        return []
    cols = [c for c in ("model", "status", "error_type", "error") if c in table.column_names]
    frame = pl.from_arrow(table.select(cols))
    assert isinstance(frame, pl.DataFrame)
    if "model" not in frame.columns:
        frame = frame.with_columns(pl.lit("").alias("model"))
    if "error" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, pl.String).alias("error"))
    examples = (
        frame.filter(pl.col("status") != "ok")
        .with_columns(pl.col("model").fill_null(""), pl.col("error_type").fill_null("unknown"))
        .group_by(["model", "error_type"])
        .agg(pl.col("error").drop_nulls().first().alias("example"))
    )
    example = {(m, t): e for m, t, e in examples.iter_rows()}
    rows = []
    for s in stats:
        for kind, n in s["errors"].items():
            rows.append({"model": s["model"], "type": kind, "rows": n, "share": n / s["rows"] if s["rows"] else 0.0,
                         "example": _text(example.get((s["model"], kind)) or "")})
    return rows


def _latencies(table: pa.Table, models: list[str]) -> list[tuple[str, list[float]]]:
    if "latency_ms" not in table.column_names:
        return []
    status = table.column("status").to_pylist()
    latency = table.column("latency_ms").to_pylist()
    model = table.column("model").to_pylist() if "model" in table.column_names else [""] * table.num_rows
    per: dict[str, list[float]] = {m: [] for m in models}
    for s, v, m in zip(status, latency, model):
        if s == "ok" and v is not None and math.isfinite(v):
            per.setdefault(m or "", []).append(float(v))
    return [(m or "(no model)", per[m]) for m in models if per.get(m)]


def render_html(table: pa.Table, *, title: str, source: str) -> str:
    """The report page of ``table`` (an output, scored or not) as HTML text."""
    stats = model_stats(table)
    data = row_data(table)
    scored = data["scored"]
    record = score_record(table)
    names = [s["model"] or "(no model)" for s in stats]
    if scored:
        rate = bars([(n, s["pass_rate"], f"{s['pass_rate']:.1%}") for n, s in zip(names, stats)], "Pass rate per model")
    else:
        rate = bars([(n, s["ok"] / s["rows"] if s["rows"] else None, f"{s['ok'] / s['rows']:.1%}" if s["rows"] else "–")
                     for n, s in zip(names, stats)], "Share of ok rows per model")
    cost = bars([(n, s["cost_usd"], "no price" if s["cost_usd"] is None else usd(s["cost_usd"])) for n, s in zip(names, stats)],
                "Cost per model")
    latency = _latencies(table, data["models"])
    return render_page(
        "report.html.j2",
        script="report.js",
        title=title,
        source=source,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        rows=table.num_rows,
        stats=[{**s, "name": n, "colour": PALETTE[i % len(PALETTE)]} for i, (n, s) in enumerate(zip(names, stats))],
        scored=scored,
        record=record,
        rate_chart=rate,
        cost_chart=cost,
        latency_chart=histograms(latency) if latency else None,
        errors=_errors(table, stats),
        blob=pack_json(data),
        matrix=len(data["models"]) > 1,
    )


def write_html(table: pa.Table, path: str | Path, *, title: str = "prompt-runner report", source: str = "") -> None:
    """Writes :func:`render_html` to ``path``."""
    write_page(path, render_html(table, title=title, source=source))
