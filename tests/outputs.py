"""Builds tables shaped like real `run` outputs (the output schema's columns, in order)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from runner.schema import RESULT_FIELDS, TS

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def output_table(rows: list[dict[str, Any]], input_columns: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Each row gives what matters (id, model, status, output, inputs ...); the rest is filled in
    as the executor would: ok rows get tokens and latency, error rows an error type."""
    input_columns = input_columns or {}
    columns: dict[str, list[Any]] = {"id": []}
    for name in input_columns:
        columns[name] = []
    for name in ["model", "provider"] + [f.name for f in RESULT_FIELDS] + ["cost_usd", "request_hash", "run_id"]:
        columns[name] = []
    for i, row in enumerate(rows):
        ok = row.get("status", "ok") == "ok"
        defaults: dict[str, Any] = {
            "id": f"r{i}",
            "model": "mock-echo",
            "provider": "mock",
            "status": "ok",
            "output": None,
            "finish_reason": "stop" if ok else None,
            "prompt_tokens": 10 if ok else None,
            "completion_tokens": 5 if ok else None,
            "latency_ms": float(10 + i) if ok else 3.0,
            "ttft_ms": None,
            "attempts": 1,
            "http_status": 200 if ok else 500,
            "error_type": None if ok else "server_error",
            "error": None if ok else "internal error",
            "started_at": NOW,
            "finished_at": NOW,
            "cost_usd": None,
            "request_hash": f"{i:032x}",
            "run_id": "run0",
        }
        for name in columns:
            columns[name].append(row.get(name, defaults.get(name)))
    types = {f.name: f.type for f in RESULT_FIELDS}
    types.update(input_columns)
    types.update({"cost_usd": pa.float64(), "started_at": TS, "finished_at": TS})
    return pa.table({name: pa.array(values, types.get(name, pa.string())) for name, values in columns.items()})
