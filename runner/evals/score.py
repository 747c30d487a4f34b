"""Eval scoring: the `score` and `passed` columns of an output table, pass rates and thresholds.

Methods (``[score] method = ...`` in a job file):

- ``exact``: the output equals the expected value after stripping surrounding whitespace on
  both sides; case-sensitive (``Paris`` != ``paris``). Use ``contains`` or a regex with
  ``(?i)`` for looser matching.
- ``contains``: the expected value occurs in the output, case-insensitive.
- ``regex``: the pattern matches anywhere in the output (anchor it with ``^...$`` for a whole
  match). The pattern is the expected column's value, or the fixed ``pattern`` of the score
  section. Rust ``regex`` syntax (as polars), close to Python's ``re`` without look-around.
- ``json``: the output parses as JSON (a surrounding Markdown code fence is ignored); if the
  job gives ``schema`` / ``schema_file``, it must also validate against that JSON Schema; if it
  gives ``expected_column``, the parsed value must equal the expected one (a string expected
  value is parsed as JSON first).
- ``numeric``: the first number in the output (``1,234.5`` and ``-3e2`` count) is within
  ``tolerance`` (absolute, default 1e-6) of the expected number.
- ``python:module:function``: ``function(output: str | None, expected: Any, row: dict) -> bool |
  float`` is called per ok row; a bool scores 1.0/0.0, a float must lie in [0, 1]; a row passes
  when its score is at least 0.5. ``module`` is imported from ``sys.path`` (the current
  directory is put first, as ``python -m`` does).

Rows whose ``status`` is not ``ok`` get a null ``score`` and ``passed = False``: a failed
request counts against the pass rate.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from runner.errors import InputError
from runner.schema import input_column_name

__all__ = [
    "METHODS",
    "META_SCORE",
    "ScoreSpec",
    "check_thresholds",
    "pass_rates",
    "score_table",
    "validate_method",
]

#: Built-in method names; ``python:module:function`` is the extension point.
METHODS: tuple[str, ...] = ("exact", "contains", "regex", "json", "numeric")

#: Methods that need an expected value per row.
NEEDS_EXPECTED: frozenset[str] = frozenset({"exact", "contains", "numeric"})

#: Where a scored table records how it was scored (Parquet key-value metadata).
META_SCORE = b"prompt_runner.score"

#: First number in a text: thousands separators, decimals and exponents included.
NUMBER_RE = r"[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"


@dataclass(frozen=True)
class ScoreSpec:
    """The ``[score]`` section of a job file (``schema_file`` is already loaded into ``schema``)."""

    method: str = "exact"
    expected_column: str | None = None
    min_pass_rate: float | None = None
    tolerance: float = 1e-6
    pattern: str | None = None
    schema: dict[str, Any] | None = None
    schema_file: str | None = None

    def record(self) -> dict[str, Any]:
        return asdict(self)


def validate_method(spec: ScoreSpec) -> list[tuple[str, str]]:
    """Mistakes in a score spec as (key, message) pairs; empty when it can run."""
    problems: list[tuple[str, str]] = []
    method = spec.method
    if method.startswith("python:"):
        parts = method.split(":")
        if len(parts) != 3 or not all(p.strip() for p in parts[1:]):
            problems.append(("method", f"expected 'python:module:function', got {json.dumps(method)}"))
        return problems
    if method not in METHODS:
        allowed = ", ".join(f"'{m}'" for m in METHODS)
        problems.append(("method", f"expected one of {allowed} or 'python:module:function', got {json.dumps(method)}"))
        return problems
    if method in NEEDS_EXPECTED and not spec.expected_column:
        problems.append(("expected_column", f"required by method '{method}'"))
    if method == "regex":
        if spec.pattern is None and not spec.expected_column:
            problems.append(("pattern", "method 'regex' needs a pattern or an expected_column holding patterns"))
        if spec.pattern is not None:
            try:
                pl.Series([""]).str.contains(spec.pattern)
            except pl.exceptions.PolarsError as err:
                lines = [line.strip() for line in str(err).splitlines() if line.strip()]
                problems.append(("pattern", f"not a valid regex: {lines[-1] if lines else err}"))
    if spec.schema is not None:
        from jsonschema import exceptions, validators

        try:
            validators.validator_for(spec.schema).check_schema(spec.schema)
        except exceptions.SchemaError as err:
            problems.append(("schema", f"not a valid JSON Schema: {err.message}"))
    return problems


# -- scoring -------------------------------------------------------------------------------


def _expected(table: pa.Table, spec: ScoreSpec) -> pa.ChunkedArray | None:
    name = spec.expected_column
    if not name:
        return None
    for candidate in (name, input_column_name(name)):
        if candidate in table.column_names:
            return table.column(candidate)
    columns = ", ".join(c for c in table.column_names) or "none"
    raise InputError(f"score.expected_column: column '{name}' is not in the output (columns: {columns})")


def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The expected values as strings (numbers and booleans too; nested values as JSON)."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column
    if pa.types.is_floating(column.type):
        # 64.0 should compare as "64", as a person would write it.
        values = pl.Series(pl.from_arrow(column)).cast(pl.Float64)
        whole = values.is_finite() & (values == values.floor()) & (values.abs() < 2**53)
        text = pl.select(
            pl.when(whole).then(values.cast(pl.Int64, strict=False).cast(pl.String)).otherwise(values.cast(pl.String))
        ).to_series()
        return pa.chunked_array([text.to_arrow().cast(pa.string())])
    try:
        return pc.cast(column, pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        values = [None if v is None else json.dumps(v, ensure_ascii=False) for v in column.to_pylist()]
        return pa.chunked_array([pa.array(values, pa.string())])


def _frame(output: pa.ChunkedArray, expected: pa.ChunkedArray | None) -> pl.DataFrame:
    data: dict[str, Any] = {"output": pl.from_arrow(output)}
    if expected is not None:
        data["expected"] = pl.from_arrow(_as_text(expected))
    return pl.DataFrame(data)


def _exact(output: pa.ChunkedArray, expected: pa.ChunkedArray) -> pl.Series:
    frame = _frame(output, expected)
    return frame.select(
        (pl.col("output").fill_null("").str.strip_chars() == pl.col("expected").str.strip_chars()).fill_null(False)
    ).to_series()


def _contains(output: pa.ChunkedArray, expected: pa.ChunkedArray) -> pl.Series:
    frame = _frame(output, expected)
    return frame.select(
        pl.col("output")
        .fill_null("")
        .str.to_lowercase()
        .str.contains(pl.col("expected").str.strip_chars().str.to_lowercase(), literal=True)
        .fill_null(False)
    ).to_series()


def _regex(output: pa.ChunkedArray, expected: pa.ChunkedArray | None, pattern: str | None) -> pl.Series:
    frame = _frame(output, None if pattern is not None else expected)
    text = pl.col("output").fill_null("")
    if pattern is not None:
        return frame.select(text.str.contains(pattern).fill_null(False)).to_series()
    try:
        return frame.select(text.str.contains(pl.col("expected")).fill_null(False)).to_series()
    except pl.exceptions.PolarsError:
        # A bad pattern in one row fails the whole column: score row by row, bad pattern = fail.
        results = []
        for out, pat in zip(frame["output"].to_list(), frame["expected"].to_list()):
            try:
                results.append(bool(pat is not None and pl.Series([out or ""]).str.contains(pat)[0]))
            except pl.exceptions.PolarsError:
                results.append(False)
        return pl.Series(results, dtype=pl.Boolean)


def _numeric(output: pa.ChunkedArray, expected: pa.ChunkedArray, tolerance: float) -> pl.Series:
    frame = _frame(output, expected)

    def number(col: str) -> pl.Expr:
        return pl.col(col).str.extract(f"({NUMBER_RE})", 1).str.replace_all(",", "", literal=True).cast(pl.Float64, strict=False)

    return frame.select(
        ((number("output") - number("expected")).abs() <= tolerance).fill_null(False)
    ).to_series()


def _strip_fence(text: str) -> str:
    body = text.strip()
    if body.startswith("```") and body.endswith("```") and len(body) >= 6:
        body = body[3:-3]
        first_newline = body.find("\n")
        if first_newline != -1 and body[:first_newline].strip().isalnum():
            body = body[first_newline + 1 :]  # the ```json language tag
    return body


_MISSING = object()


def _parse_json(text: str | None) -> Any:
    if text is None:
        return _MISSING
    try:
        return json.loads(_strip_fence(text))
    except ValueError:
        return _MISSING


def _json(output: pa.ChunkedArray, expected: pa.ChunkedArray | None, schema: dict[str, Any] | None) -> pl.Series:
    validator = None
    if schema is not None:
        from jsonschema import validators

        validator = validators.validator_for(schema)(schema)
    outputs = output.to_pylist()
    wanted = expected.to_pylist() if expected is not None else [None] * len(outputs)
    results = []
    for out, exp in zip(outputs, wanted):
        value = _parse_json(out)
        ok = value is not _MISSING
        if ok and validator is not None:
            ok = validator.is_valid(value)
        if ok and expected is not None:
            target = _parse_json(exp) if isinstance(exp, str) else exp
            ok = target is not _MISSING and value == target
        results.append(ok)
    return pl.Series(results, dtype=pl.Boolean)


def _load_function(method: str) -> Callable[..., Any]:
    _, module_name, func_name = method.split(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(f"score.method: cannot import '{module_name}': {err}") from None
    except Exception as err:  # the user's module failed while importing
        raise InputError(f"score.method: importing '{module_name}' raised {type(err).__name__}: {err}") from None
    func: Callable[..., Any] | None = getattr(module, func_name, None)
    if not callable(func):
        raise InputError(f"score.method: '{module_name}' has no function '{func_name}'")
    return func


def _python(table: pa.Table, ok: list[bool], expected: pa.ChunkedArray | None, method: str) -> list[float | None]:
    func = _load_function(method)
    outputs = table.column("output").to_pylist()
    wanted = expected.to_pylist() if expected is not None else [None] * table.num_rows
    ids = table.column("id").to_pylist() if "id" in table.column_names else list(range(table.num_rows))
    scores: list[float | None] = []
    rows = (row for batch in table.to_batches(max_chunksize=4096) for row in batch.to_pylist())
    for i, row in enumerate(rows):
        if not ok[i]:
            scores.append(None)
            continue
        try:
            value = func(outputs[i], wanted[i], row)
        except Exception as err:
            raise InputError(f"score.method: {method} raised {type(err).__name__}: {err} (row id {ids[i]})") from None
        if isinstance(value, bool):
            scores.append(1.0 if value else 0.0)
        elif isinstance(value, (int, float)) and not math.isnan(value) and 0.0 <= value <= 1.0:
            scores.append(float(value))
        else:
            raise InputError(
                f"score.method: {method} returned {value!r} for row id {ids[i]}: expected a bool or a number in [0, 1]"
            )
    return scores


def score_table(table: pa.Table, spec: ScoreSpec) -> pa.Table:
    """``table`` with ``score`` (float64, null on error rows) and ``passed`` (bool) columns.

    Existing ``score``/``passed`` columns are replaced; the schema metadata is kept and gains
    ``prompt_runner.score`` (the spec as JSON), which ``report`` reads for the expected column
    and the threshold. Raises InputError for a missing expected column or a failing user function.
    """
    for name in ("status", "output"):
        if name not in table.column_names:
            raise InputError(f"cannot score: the table has no '{name}' column")
    expected = _expected(table, spec)
    ok_mask = pc.fill_null(pc.equal(table.column("status"), "ok"), False)
    output = table.column("output")
    method = spec.method
    if method.startswith("python:"):
        ok_list = ok_mask.to_pylist()
        score = pa.array(_python(table, ok_list, expected, method), pa.float64())
        passed = pc.fill_null(pc.greater_equal(score, 0.5), False)
    else:
        if method == "exact":
            assert expected is not None
            hits = _exact(output, expected)
        elif method == "contains":
            assert expected is not None
            hits = _contains(output, expected)
        elif method == "regex":
            hits = _regex(output, expected, spec.pattern)
        elif method == "numeric":
            assert expected is not None
            hits = _numeric(output, expected, spec.tolerance)
        elif method == "json":
            hits = _json(output, expected, spec.schema)
        else:
            raise InputError(f"score.method: unknown method {method!r}")
        hit_array = hits.to_arrow() if table.num_rows else pa.array([], pa.bool_())
        passed = pc.and_(pc.cast(hit_array, pa.bool_()), ok_mask)
        score = pc.if_else(ok_mask, pc.cast(passed, pa.float64()), pa.scalar(None, pa.float64()))
    metadata = dict(table.schema.metadata or {})
    rescoring = META_SCORE in metadata
    metadata[META_SCORE] = json.dumps(spec.record()).encode()
    for name in ("score", "passed"):
        if name in table.column_names:
            if rescoring:
                table = table.drop_columns([name])
            else:  # an input column of that name is kept, as the output schema keeps clashes
                table = table.rename_columns([f"input.{c}" if c == name else c for c in table.column_names])
    table = table.append_column(pa.field("score", pa.float64()), _chunked(score, pa.float64()))
    table = table.append_column(pa.field("passed", pa.bool_()), _chunked(passed, pa.bool_()))
    return table.replace_schema_metadata(metadata)


def _chunked(values: pa.Array | pa.ChunkedArray, type_: pa.DataType) -> pa.ChunkedArray:
    if isinstance(values, pa.ChunkedArray):
        return values.cast(type_)
    return pa.chunked_array([values.cast(type_)], type_)


# -- pass rates and thresholds ---------------------------------------------------------------


def pass_rates(table: pa.Table) -> dict[str, tuple[float, int, int]]:
    """Per model: (pass rate, rows passed, rows in total). Error rows count as not passed.

    A table without a ``model`` column is one model named ``""``.
    """
    if "passed" not in table.column_names:
        raise InputError("the output has no 'passed' column: it was not scored")
    frame = pl.from_arrow(table.select([c for c in ("model", "passed") if c in table.column_names]))
    assert isinstance(frame, pl.DataFrame)
    if "model" not in frame.columns:
        frame = frame.with_columns(pl.lit("").alias("model"))
    grouped = (
        frame.group_by("model", maintain_order=True)
        .agg(pl.col("passed").fill_null(False).sum().alias("passed"), pl.len().alias("total"))
        .with_columns(pl.col("model").fill_null(""))
    )
    return {
        m: (p / t if t else 0.0, int(p), int(t))
        for m, p, t in zip(grouped["model"].to_list(), grouped["passed"].to_list(), grouped["total"].to_list())
    }


def _decimals(x: float) -> int:
    return next((d for d in range(7) if round(x, d) == x), 6)


def _shortfall(rate: float, floor: float) -> tuple[str, str, str]:
    """Rate, threshold and gap, with the threshold's decimals (at least 2) or more, so that a
    rate just under the threshold never prints as equal to it nor the gap as zero."""
    digits = max(2, _decimals(floor))
    while True:
        shown, wanted, gap = (f"{v:.{digits}f}" for v in (rate, floor, floor - rate))
        if digits >= 6 or (shown != wanted and float(gap) > 0):
            return shown, wanted, gap
        digits += 1


def check_thresholds(table: pa.Table, min_pass_rate: float | None) -> list[str]:
    """One message per model below ``min_pass_rate``; empty when every model reaches it
    (or no threshold is set), e.g. ``gpt-4o-mini: pass rate 0.72 < 0.80 (short by 0.08)``."""
    if min_pass_rate is None:
        return []
    messages = []
    for model, (rate, _passed, _total) in pass_rates(table).items():
        if rate < min_pass_rate:
            shown, floor, short = _shortfall(rate, min_pass_rate)
            messages.append(f"{model or 'all rows'}: pass rate {shown} < {floor} (short by {short})")
    return messages
