"""What changed between two outputs of the same eval: rows matched by id and model, per-model
deltas of pass rate, cost and latency, and the rows that regressed, were fixed, newly error or
answer differently. Written as Markdown (a CI step summary), JSON and a self-contained HTML page."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.evals.page import render_page, usd, write_page
from runner.evals.report import _write_text, load_output, model_stats

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

__all__ = ["Comparison", "compare_files", "compare_tables", "markdown", "print_comparison", "write_html", "write_json", "write_markdown", "write_reports"]

#: Rows listed per kind in the Markdown (a step summary is capped at 1 MiB) and the HTML page;
#: the JSON lists them all.
MARKDOWN_ROWS = 50
HTML_ROWS = 1000
#: Characters of an output quoted in Markdown.
QUOTE_CHARS = 120
KINDS = ("regressions", "fixes", "new_errors", "changed", "only_baseline", "only_new")
TITLES = {
    "regressions": "Regressions (passed before, not now)",
    "fixes": "Fixes (failed before, pass now)",
    "new_errors": "Newly erroring rows",
    "changed": "Changed outputs",
    "only_baseline": "Rows only in the baseline",
    "only_new": "Rows only in the new output",
}


@dataclass
class Comparison:
    """The comparison of ``new`` against ``baseline``. ``scored``: both files have a ``passed``
    column (else a row passes when its status is ok). Each list holds one dict per row."""

    baseline: str
    new: str
    scored: bool
    models: list[dict[str, Any]]
    matched: int
    regressions: list[dict[str, Any]] = field(default_factory=list)
    fixes: list[dict[str, Any]] = field(default_factory=list)
    new_errors: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    only_baseline: list[dict[str, Any]] = field(default_factory=list)
    only_new: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in KINDS}


def _rows(table: pa.Table, scored: bool) -> pl.DataFrame:
    import polars as pl

    cols = [c for c in ("id", "model", "status", "output", "passed", "error_type", "error") if c in table.column_names]
    frame = pl.from_arrow(table.select(cols))
    assert isinstance(frame, pl.DataFrame)
    for name in ("model", "error_type", "error"):
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, pl.String).alias(name))
    ok = pl.col("status") == "ok"
    passed = pl.col("passed").fill_null(False) if scored else ok.fill_null(False)
    return frame.select(
        pl.col("id").cast(pl.String),
        pl.col("model").cast(pl.String).fill_null(""),
        ok.fill_null(False).alias("ok"),
        passed.alias("passed"),
        pl.col("output").cast(pl.String),
        pl.col("error_type").cast(pl.String),
        pl.col("error").cast(pl.String),
    ).with_columns(
        # The k-th row of an (id, model) pair matches the other file's k-th: repeated ids pair up in order.
        pl.int_range(pl.len()).over(["id", "model"]).alias("_nth")
    )


def _delta(new: float | None, old: float | None) -> float | None:
    return None if new is None or old is None else new - old


def _model_deltas(base: pa.Table, new: pa.Table, scored: bool) -> list[dict[str, Any]]:
    before = {s["model"]: s for s in model_stats(base)}
    after = {s["model"]: s for s in model_stats(new)}

    def rate(s: dict[str, Any] | None) -> float | None:
        if s is None or not s["rows"]:
            return None
        return s["pass_rate"] if scored else s["ok"] / s["rows"]

    out = []
    for model in list(after) + [m for m in before if m not in after]:
        b, a = before.get(model), after.get(model)
        row: dict[str, Any] = {"model": model, "rows_baseline": b["rows"] if b else 0, "rows_new": a["rows"] if a else 0}
        for key, get in (
            ("pass_rate", rate),
            ("cost_usd", lambda s: s and s["cost_usd"]),
            ("latency_p50_ms", lambda s: s and s["latency_p50_ms"]),
            ("latency_p95_ms", lambda s: s and s["latency_p95_ms"]),
        ):
            old, now = get(b), get(a)
            row[f"{key}_baseline"], row[f"{key}_new"], row[f"{key}_delta"] = old, now, _delta(now, old)
        out.append(row)
    return out


def compare_tables(base: pa.Table, new: pa.Table, *, baseline_name: str = "baseline", new_name: str = "new") -> Comparison:
    """Compares two output tables (see :class:`Comparison`)."""
    import polars as pl

    scored = "passed" in base.column_names and "passed" in new.column_names
    old, now = _rows(base, scored), _rows(new, scored)
    joined = old.join(now, on=["id", "model", "_nth"], how="full", coalesce=True, suffix="_new")
    in_old = pl.col("ok").is_not_null()
    in_new = pl.col("ok_new").is_not_null()
    both = joined.filter(in_old & in_new)

    def listed(frame: pl.DataFrame, side: str = "both") -> list[dict[str, Any]]:
        rows = []
        for r in frame.iter_rows(named=True):
            item: dict[str, Any] = {"id": r["id"], "model": r["model"]}
            if side in ("both", "old"):
                item["baseline"] = {"passed": r["passed"], "status": "ok" if r["ok"] else "error", "output": r["output"],
                                    "error_type": r["error_type"], "error": r["error"]}
            if side in ("both", "new"):
                item["new"] = {"passed": r["passed_new"], "status": "ok" if r["ok_new"] else "error", "output": r["output_new"],
                               "error_type": r["error_type_new"], "error": r["error_new"]}
            rows.append(item)
        return rows

    return Comparison(
        baseline=baseline_name,
        new=new_name,
        scored=scored,
        models=_model_deltas(base, new, scored),
        matched=both.height,
        regressions=listed(both.filter(pl.col("passed") & ~pl.col("passed_new"))),
        fixes=listed(both.filter(~pl.col("passed") & pl.col("passed_new"))),
        new_errors=listed(both.filter(pl.col("ok") & ~pl.col("ok_new"))),
        changed=listed(both.filter(pl.col("ok") & pl.col("ok_new") & (pl.col("output").ne_missing(pl.col("output_new"))))),
        only_baseline=listed(joined.filter(in_old & ~in_new), "old"),
        only_new=listed(joined.filter(~in_old & in_new), "new"),
    )


def compare_files(baseline: str | Path, new: str | Path) -> Comparison:
    """Reads and compares two output files; one-line ReportError naming a file that is missing
    or not a prompt-runner output."""
    return compare_tables(load_output(baseline), load_output(new), baseline_name=str(baseline), new_name=str(new))


# -- Markdown ----------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1%}"


def _signed(v: float | None, fmt: str, scale: float = 1.0) -> str:
    if v is None:
        return "–"
    text = format(v * scale, "+" + fmt)
    return "±" + text[1:] if not text.strip("+-0.,") else text  # no "-0.0000"


def _usd(v: float | None) -> str:
    return usd(v)


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


def _md(text: Any, limit: int = QUOTE_CHARS) -> str:
    """Untrusted text in a Markdown table cell: one line, clipped, with nothing GitHub would
    read as markup (HTML, links, emphasis, table pipes)."""
    if text is None:
        return "–"
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    for ch in "\\`*_[]<>|#!~":
        s = s.replace(ch, "\\" + ch)
    return s.replace("&", "&amp;")


def _side(side: dict[str, Any] | None) -> str:
    if side is None:
        return "–"
    if side["status"] != "ok":
        return f"error {_md(side['error_type'] or 'error', 40)}: {_md(side['error'], 80)}"
    return ("✓ " if side["passed"] else "✗ ") + _md(side["output"])


def _model_cells(m: dict[str, Any]) -> dict[str, str]:
    """A model's figures as table cells (baseline → new, and the deltas), in the tables' order."""
    return {
        "rows": f"{m['rows_baseline']:,} → {m['rows_new']:,}",
        "rate": f"{_pct(m['pass_rate_baseline'])} → {_pct(m['pass_rate_new'])}",
        "rate_delta": _signed(m["pass_rate_delta"], ".1f", 100) + (" pp" if m["pass_rate_delta"] is not None else ""),
        "cost": f"{_usd(m['cost_usd_baseline'])} → {_usd(m['cost_usd_new'])}",
        "cost_delta": _signed(m["cost_usd_delta"], ",.6f"),
        "p50": f"{_ms(m['latency_p50_ms_baseline'])} → {_ms(m['latency_p50_ms_new'])}",
        "p50_delta": _signed(m["latency_p50_ms_delta"], ",.0f"),
        "p95": f"{_ms(m['latency_p95_ms_baseline'])} → {_ms(m['latency_p95_ms_new'])}",
        "p95_delta": _signed(m["latency_p95_ms_delta"], ",.0f"),
    }


def markdown(c: Comparison, limit: int = MARKDOWN_ROWS) -> str:
    """The comparison as Markdown: a heading, the counts, a table per model, and the rows of
    each kind (at most ``limit`` per kind)."""
    counts = c.counts()
    rate = "pass rate" if c.scored else "ok rate"
    lines = [
        "## prompt-runner compare",
        "",
        f"Baseline `{_md(c.baseline)}` → new `{_md(c.new)}`: {c.matched:,} rows matched by id and model"
        + ("" if c.scored else " (not scored: a row passes when its status is ok)") + ".",
        "",
        " · ".join(f"**{counts[k]:,}** {TITLES[k].split(' (')[0].lower()}" for k in KINDS),
        "",
        f"| model | rows | {rate} | Δ {rate} | cost | Δ cost | p50 ms | Δ p50 | p95 ms | Δ p95 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in c.models:
        lines.append(
            "| " + " | ".join([f"`{_md(m['model'], 60)}`" if m["model"] else "(no model)", *_model_cells(m).values()]) + " |"
        )
    for kind in KINDS:
        rows = getattr(c, kind)
        if not rows:
            continue
        lines += ["", f"### {TITLES[kind]}: {len(rows):,}", ""]
        lines += ["| id | model | baseline | new |", "|---|---|---|---|"]
        for r in rows[:limit]:
            lines.append(f"| {_md(r['id'], 60)} | {_md(r['model'], 40)} | {_side(r.get('baseline'))} | {_side(r.get('new'))} |")
        if len(rows) > limit:
            lines += ["", f"… and {len(rows) - limit:,} more (`--json` lists them all)."]
    lines.append("")
    return "\n".join(lines)


def write_markdown(c: Comparison, path: str | Path) -> None:
    _write_text(path, markdown(c))


def write_json(c: Comparison, path: str | Path) -> None:
    _write_text(path, json.dumps({**asdict(c), "counts": c.counts()}, indent=2, ensure_ascii=False) + "\n")


def render_html(c: Comparison) -> str:
    """The comparison page: no script at all (``script-src 'none'``), everything escaped by Jinja."""
    from datetime import datetime, timezone

    sections = [{"kind": k, "title": TITLES[k], "rows": getattr(c, k)[:HTML_ROWS], "total": len(getattr(c, k))} for k in KINDS]
    return render_page(
        "compare.html.j2",
        script=None,
        c=c,
        counts=c.counts(),
        titles=TITLES,
        sections=sections,
        limit=HTML_ROWS,
        rate="pass rate" if c.scored else "ok rate",
        signed=_signed,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def write_html(c: Comparison, path: str | Path) -> None:
    write_page(path, render_html(c))


def write_reports(
    c: Comparison,
    *,
    markdown_path: str | Path | None = None,
    html_path: str | Path | None = None,
    json_path: str | Path | None = None,
) -> None:
    """Writes the requested files (InputError naming a file that cannot be written)."""
    if markdown_path:
        write_markdown(c, markdown_path)
    if html_path:
        write_html(c, html_path)
    if json_path:
        write_json(c, json_path)


def print_comparison(c: Comparison) -> None:
    """A table per model and the counts, on stdout."""
    import sys

    from rich.console import Console
    from rich.markup import escape as rich_escape
    from rich.table import Table

    rate = "pass rate" if c.scored else "ok rate"
    grid = Table(title=f"{c.baseline} → {c.new}: {c.matched:,} rows matched", title_justify="left")
    for name in ("model", "rows", rate, f"Δ {rate}", "cost", "Δ cost", "p50 ms", "p95 ms"):
        grid.add_column(name, justify="left" if name == "model" else "right")
    for m in c.models:
        cells = _model_cells(m)
        grid.add_row(rich_escape(m["model"] or "(no model)"), *(cells[k] for k in ("rows", "rate", "rate_delta", "cost", "cost_delta", "p50", "p95")))
    console = Console(file=sys.stdout, width=140)
    console.print(grid)
    counts = c.counts()
    console.print(", ".join(f"{counts[k]:,} {TITLES[k].split(' (')[0].lower()}" for k in KINDS), markup=False, highlight=False)
