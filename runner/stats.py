"""What a set of output rows adds up to: counts, errors by type, tokens, cost and latency
percentiles, per model or for all rows. The end-of-run summary, `status` and reports all read
it (polars, linear interpolation; latencies of ok rows only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

__all__ = ["row_stats"]


def _frame(table: pa.Table) -> pl.DataFrame:
    import polars as pl

    wanted = [
        c
        for c in (
            "model", "provider", "status", "passed", "error_type", "prompt_tokens", "completion_tokens",
            "cost_usd", "latency_ms", "cache_hit",
        )
        if c in table.column_names
    ]
    frame = pl.from_arrow(table.select(wanted))
    assert isinstance(frame, pl.DataFrame)
    if "model" not in frame.columns:
        frame = frame.with_columns(pl.lit("").alias("model"))
    return frame.with_columns(pl.col("model").fill_null(""))


def row_stats(table: pa.Table, by_model: bool = True) -> list[dict[str, Any]]:
    """One dict per model, in order of first appearance (or one for all rows: ``by_model=False``,
    ``model`` ""): ``model``, ``provider``, ``rows``,
    ``ok``, ``failed``, ``passed`` and ``pass_rate`` (None when the table is not scored),
    ``errors`` ({error_type: rows}), ``prompt_tokens``, ``completion_tokens``, ``cost_usd``
    (None when no row has a price), ``latency_p50_ms``/``_p95_ms``/``_p99_ms`` (ok rows,
    None without any) and ``cache_hits`` (None when the column is absent)."""
    import polars as pl

    frame = _frame(table)
    if not by_model:
        frame = frame.with_columns(pl.lit("").alias("model"))
    cols = set(frame.columns)

    def total(name: str) -> pl.Expr:
        return pl.col(name).sum() if name in cols else pl.lit(0)

    ok = pl.col("status") == "ok"
    latency = pl.col("latency_ms").filter(ok) if "latency_ms" in cols else pl.lit(None, pl.Float64)
    aggs: list[pl.Expr] = [
        (pl.col("provider").first() if "provider" in cols else pl.lit(None, pl.String)).alias("provider"),
        pl.len().alias("rows"),
        ok.sum().alias("ok"),
        (~ok).fill_null(True).sum().alias("failed"),
        total("prompt_tokens").alias("prompt_tokens"),
        total("completion_tokens").alias("completion_tokens"),
        (pl.col("cost_usd").sum() if "cost_usd" in cols else pl.lit(0.0)).alias("cost_usd"),
        (pl.col("cost_usd").is_not_null().any() if "cost_usd" in cols else pl.lit(False)).alias("_priced"),
    ]
    for q in (50, 95, 99):
        aggs.append(latency.quantile(q / 100, interpolation="linear").alias(f"latency_p{q}_ms"))
    if "passed" in cols:
        aggs.append(pl.col("passed").fill_null(False).sum().alias("passed"))
    if "cache_hit" in cols:
        aggs.append(pl.col("cache_hit").fill_null(False).sum().alias("cache_hits"))
    grouped = frame.group_by("model", maintain_order=True).agg(aggs)

    errors: dict[str, dict[str, int]] = {}
    if "error_type" in cols:
        counts = (
            frame.filter(pl.col("status") != "ok")
            .with_columns(pl.col("error_type").fill_null("unknown"))
            .group_by(["model", "error_type"])
            .len()
            .sort(["model", "len", "error_type"], descending=[False, True, False])
        )
        for model, kind, n in counts.iter_rows():
            errors.setdefault(model, {})[kind] = int(n)

    stats = []
    if not frame.height and not by_model:
        grouped = pl.DataFrame([{"model": "", "provider": None, "rows": 0, "ok": 0, "failed": 0, "prompt_tokens": 0,
                                 "completion_tokens": 0, "cost_usd": 0.0, "_priced": False, "latency_p50_ms": None,
                                 "latency_p95_ms": None, "latency_p99_ms": None}])
    for row in grouped.iter_rows(named=True):
        passed = row.get("passed")
        rows = int(row["rows"])
        stats.append(
            {
                "model": row["model"],
                "provider": row["provider"],
                "rows": rows,
                "ok": int(row["ok"]),
                "failed": int(row["failed"]),
                "passed": None if passed is None else int(passed),
                "pass_rate": None if passed is None else (passed / rows if rows else 0.0),
                "errors": errors.get(row["model"], {}),
                "prompt_tokens": int(row["prompt_tokens"] or 0),
                "completion_tokens": int(row["completion_tokens"] or 0),
                "cost_usd": float(row["cost_usd"]) if row["_priced"] else None,
                "latency_p50_ms": row["latency_p50_ms"],
                "latency_p95_ms": row["latency_p95_ms"],
                "latency_p99_ms": row["latency_p99_ms"],
                "cache_hits": None if row.get("cache_hits") is None else int(row["cache_hits"]),
            }
        )
    return stats
