"""The output schema: result columns appended to the input columns, in the order of the README's "Output schema"."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from runner._native import result_schema

#: A poll's rows as the executor hands them out: `_row`, the result columns, `request_hash`.
#: Defined once, in native/src/batch.rs.
RESULT_SCHEMA: pa.Schema = pa.schema(result_schema())
#: The result columns of the output.
RESULT_FIELDS = [f for f in RESULT_SCHEMA if f.name not in ("_row", "request_hash")]
TS = RESULT_SCHEMA.field("started_at").type

#: Every column the runner adds, in output order around the input columns.
LEADING = ["id"]
TRAILING = ["model", "provider"] + [f.name for f in RESULT_FIELDS] + ["cost_usd", "request_hash", "run_id", "cache_hit"]
RESERVED = set(LEADING) | set(TRAILING) | {"_row"}

#: Where the run's configuration lives in the Parquet key-value metadata.
META_CONFIG = b"prompt_runner.config"
META_SUMMARY = b"prompt_runner.summary"


def result_table(columns: Mapping[str, Sequence[Any]], rows: int | None = None) -> pa.Table:
    """Result rows (`RESULT_SCHEMA`) from column lists (`_row` may be given as `row`; timestamps
    as microseconds since the epoch); a column not given is null."""
    n = rows if rows is not None else len(next(iter(columns.values()), []))
    arrays = []
    for f in RESULT_SCHEMA:
        values = columns.get(f.name, columns.get("row") if f.name == "_row" else None)
        if values is None:
            arrays.append(pa.nulls(n, f.type))
        elif f.type == TS:
            arrays.append(pa.array(values, pa.int64()).cast(TS))
        else:
            arrays.append(pa.array(values, f.type))
    return pa.Table.from_arrays(arrays, schema=RESULT_SCHEMA)


def input_column_name(name: str) -> str:
    """Input columns that collide with a result column are kept under an `input.` prefix."""
    return f"input.{name}" if name in RESERVED else name
