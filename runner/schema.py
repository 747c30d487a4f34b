"""The output schema: result columns appended to the input columns, in DESIGN.md's order."""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

#: Columns the executor produces for each row (plus the internal row position `_row`).
RESULT_FIELDS = [
    pa.field("status", pa.string()),
    pa.field("output", pa.string()),
    pa.field("finish_reason", pa.string()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("latency_ms", pa.float64()),
    pa.field("ttft_ms", pa.float64()),
    pa.field("attempts", pa.int32()),
    pa.field("http_status", pa.int32()),
    pa.field("error_type", pa.string()),
    pa.field("error", pa.string()),
    pa.field("started_at", TS),
    pa.field("finished_at", TS),
]

#: Every column the runner adds, in output order around the input columns.
LEADING = ["id"]
TRAILING = ["model", "provider"] + [f.name for f in RESULT_FIELDS] + ["cost_usd", "request_hash", "run_id", "cache_hit"]
RESERVED = set(LEADING) | set(TRAILING) | {"_row"}

#: Where the run's configuration lives in the Parquet key-value metadata.
META_CONFIG = b"prompt_runner.config"
META_SUMMARY = b"prompt_runner.summary"


def input_column_name(name: str) -> str:
    """Input columns that collide with a result column are kept under an `input.` prefix."""
    return f"input.{name}" if name in RESERVED else name
