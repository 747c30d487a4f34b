"""Request rendering: choose a row's request source (template, messages, prompt) and emit messages JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from runner.inputs.chunk import Chunk, place
from runner.errors import InputError

if TYPE_CHECKING:  # jinja2 loads with the first template (~12 ms a prompt-only run skips)
    import jinja2

__all__ = ["ROLES", "Renderer", "RequestSpec", "plan"]

#: Roles a ``messages`` row may use. ``developer`` is OpenAI's name for system instructions to
#: reasoning models; for Anthropic it joins the system prompt, as ``system`` messages do.
ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant")

Source = Literal["template", "messages", "prompt", "batch"]
Params = Literal["column", "body"] | None
_BAD_MESSAGES = "messages must be a non-empty list of {role, content} objects with role system, developer, user or assistant"


@dataclass(frozen=True)
class RequestSpec:
    """How rows become requests. ``template`` is Jinja over the row's columns; ``system`` is sent
    by the executor (not rendered here); ``id_column`` names the column holding row ids."""

    template: str | None = None
    system: str | None = None
    id_column: str | None = None


def _finalize(value: Any) -> Any:
    # A null cell (or a key missing from a JSONL row) prints as nothing, not as "None".
    return "" if value is None else value


def _environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_finalize
    )


@lru_cache(maxsize=16)
def _compile(template: str) -> tuple[jinja2.Template, frozenset[str]]:
    import jinja2
    import jinja2.meta

    env = _environment()
    try:
        ast = env.parse(template)
    except jinja2.TemplateSyntaxError as exc:
        raise InputError(f"template line {exc.lineno}: syntax error: {exc.message}") from None
    names = jinja2.meta.find_undeclared_variables(ast) - set(env.globals)
    return env.from_string(ast), frozenset(names)


def _listing(columns: list[str]) -> str:
    return ", ".join(columns) if columns else "none"


def plan(columns: list[str], spec: RequestSpec, where: str) -> Renderer:
    """Choose how rows of a file with ``columns`` become requests, and check the columns exist.

    Order: ``spec.template`` if given, else a ``messages`` column, else a ``prompt`` column, else
    OpenAI Batch API lines (``custom_id`` + ``body`` with ``body.messages``; ``custom_id`` is then
    the default id column); a column named ``id`` is the default id column otherwise. ``where`` (the file name) is used in error messages. Call it once
    per file, with the columns of its first chunk. Raises InputError on any mismatch.
    """
    cols = list(columns)
    template = None
    needed: tuple[str, ...] = ()
    id_column = spec.id_column
    source: Source
    if spec.template is not None:
        template, names = _compile(spec.template)
        missing = sorted(names - set(cols))
        if missing:
            raise InputError(
                f"template uses column '{missing[0]}' that {where} does not have (columns: {_listing(cols)})"
            )
        source, needed = "template", tuple(sorted(names))
    elif "messages" in cols:
        source, needed = "messages", ("messages",)
    elif "prompt" in cols:
        source, needed = "prompt", ("prompt",)
    elif "body" in cols and "custom_id" in cols:
        source, needed = "batch", ("body",)
        id_column = id_column or "custom_id"
    else:
        raise InputError(
            f"{where}: no 'prompt' or 'messages' column (columns: {_listing(cols)}); "
            "pass --template to build prompts from these columns"
        )
    if id_column is None and "id" in cols:
        id_column = "id"  # a column named `id` is the id unless another one is named
    if id_column is not None and id_column not in cols:
        raise InputError(f"{where}: id column '{id_column}' not found (columns: {_listing(cols)})")
    # A row's own body fields: a Batch API line's body, else a `params` column.
    params: Params = "body" if source == "batch" else ("column" if "params" in cols else None)
    return Renderer(source=source, where=where, columns=needed, id_column=id_column, template=template, params=params)


class _Places:
    """Maps a table's row index to ``file:line`` for error messages."""

    def __init__(self, where: str, at: Chunk | int) -> None:
        self.where, self.at = where, at

    def __call__(self, row: int) -> str:
        if isinstance(self.at, Chunk):
            return self.at.place(row)
        return place(Path(self.where), self.at + row)


class Renderer:
    """Turns Arrow tables of rows into request messages JSON; built by :func:`plan`.

    ``at`` in :meth:`render` / :meth:`ids` says where the table starts, for error messages: the
    :class:`~runner.inputs.dataset.Chunk` it came from (exact lines even across blank lines) or the
    1-based line/row number of its first row.
    """

    def __init__(
        self,
        *,
        source: Source,
        where: str,
        columns: tuple[str, ...] = (),
        id_column: str | None = None,
        template: jinja2.Template | None = None,
        params: Params = None,
    ) -> None:
        self.source: Source = source
        self.params: Params = params
        self.where = where
        self.columns = columns  # input columns the request reads
        self.id_column = id_column
        self._template = template

    def __repr__(self) -> str:
        return f"Renderer(source={self.source!r}, where={self.where!r}, columns={self.columns!r}, id_column={self.id_column!r})"

    def render(self, table: pa.Table, at: Chunk | int = 1) -> list[str]:
        """One JSON messages array per row: ``[{"role":"user","content":"..."}]`` (compact JSON).

        Raises InputError ``file:LINE: ...`` for a null/empty prompt, a bad messages row or a
        template that fails on a row.
        """
        places = _Places(self.where, at)
        if table.num_rows == 0:
            return []
        if self.source in ("prompt", "template"):
            return self._user_messages(table, places).to_list()
        if self.source == "batch":
            return _messages_json(_batch_messages(table, places), places)
        return _messages_json(_column(table, "messages"), places)

    def render_array(self, table: pa.Table, at: Chunk | int = 1) -> pa.Array:
        """:meth:`render` as one Arrow ``large_string`` array, which the executor reads in place
        (``Executor.submit_arrow``): prompts and templates never become a Python string per row.
        A row with its own parameters (see :meth:`row_params`) is sent as
        ``{"messages": [...], "params": {...}}``."""
        if self.params is not None and table.num_rows:
            own = self.row_params(table, at)
            if any(p is not None for p in own):
                messages = self.render(table, at)
                return pa.array(
                    [m if p is None else f'{{"messages":{m},"params":{p}}}' for m, p in zip(messages, own)],
                    pa.large_string(),
                )
        if table.num_rows and self.source in ("prompt", "template"):
            return self._user_messages(table, _Places(self.where, at)).to_arrow().cast(pa.large_string())
        return pa.array(self.render(table, at), pa.large_string())

    def row_params(self, table: pa.Table, at: Chunk | int = 1) -> list[str | None]:
        """Each row's own body fields as compact JSON (None: none): a Batch API line's body
        without its messages (its `model` included: a line runs as written), or the `params`
        column (a JSON object or a struct; null fields left out). Raises InputError naming the
        row for a value that is not an object or names a field the builder owns."""
        places = _Places(self.where, at)
        if self.params is None:
            return [None] * table.num_rows
        name = "body" if self.params == "body" else "params"
        owned = ("messages", "stream") if self.params == "body" else ("model", "messages", "stream")
        out: list[str | None] = []
        for row, value in enumerate(_column(table, name).to_pylist()):
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    raise InputError(f"{places(row)}: '{name}' is not valid JSON") from None
            if value is None:
                out.append(None)
                continue
            if not isinstance(value, dict):
                raise InputError(f"{places(row)}: '{name}' must be an object of body fields")
            fields = {k: v for k, v in value.items() if v is not None and not (self.params == "body" and k == "messages")}
            for key in owned:
                if key in fields:
                    where = f"batch line body.{key}" if self.params == "body" else f"params.{key}"
                    raise InputError(f"{places(row)}: {where}: the request builder writes this field (use --{key})")
            out.append(json.dumps(fields, ensure_ascii=False, separators=(",", ":")) if fields else None)
        return out

    def batch_models(self, table: pa.Table) -> set[str]:
        """The models Batch API lines name (`body.model`)."""
        if self.source != "batch" or not table.num_rows:
            return set()
        body = _column(table, "body")
        if not pa.types.is_struct(body.type) or body.type.get_field_index("model") < 0:
            return set()
        return {m for m in pc.struct_field(body, "model").to_pylist() if m}

    def _user_messages(self, table: pa.Table, places: _Places) -> pl.Series:
        texts = _texts(table, "prompt", places) if self.source == "prompt" else self._render_template(table, places)
        return _user_messages(texts)

    def check(self, table: pa.Table, at: Chunk | int = 1) -> None:
        """Raises the InputError :meth:`render` would, without building the requests (the
        preflight scan: 100k prompts in 12 ms instead of 90 ms)."""
        places = _Places(self.where, at)
        if table.num_rows == 0:
            return
        if self.params is not None:
            self.row_params(table, at)
        if self.source == "prompt":
            _texts(table, "prompt", places)
        elif self.source == "template":
            self._render_template(table, places)
        else:
            col = _batch_messages(table, places) if self.source == "batch" else _column(table, "messages")
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                _messages_from_text(col.to_pylist(), places)
            else:
                _valid_messages(col, places)

    def ids(self, table: pa.Table, offset: int, at: Chunk | int = 1) -> list[str]:
        """Row ids as strings: the id column's values, else positions ``offset .. offset+n-1``."""
        n = table.num_rows
        if self.id_column is None:
            return [str(i) for i in range(offset, offset + n)]
        col = _column(table, self.id_column)
        try:
            values = pc.cast(col, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise InputError(
                f"{_Places(self.where, at)(0)}: id column '{self.id_column}' must hold strings or numbers, not {col.type}"
            ) from None
        if values.null_count:
            row = pc.index(pc.is_null(values), True).as_py()
            raise InputError(f"{_Places(self.where, at)(row)}: missing id (column '{self.id_column}' is null)")
        ids: list[str] = values.to_pylist()
        return ids

    def _render_template(self, table: pa.Table, places: _Places) -> pl.Series:
        assert self._template is not None
        names = list(self.columns)
        n = table.num_rows
        # A column absent from this chunk (no row of its block had the key) reads as null.
        values = [table.column(c).to_pylist() if c in table.column_names else [None] * n for c in names]
        render = self._template.render
        out: list[str] = []
        try:
            for row, vals in enumerate(zip(*values) if names else ((),) * n):
                out.append(render(dict(zip(names, vals))))
        except Exception as exc:  # noqa: BLE001 - any failure in user template code is a user error
            raise InputError(f"{places(len(out))}: template failed: {exc}") from None
        series = pl.Series("t", out, dtype=pl.String)
        _check_nonempty(series, places, "template rendered an empty prompt")
        return series


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    if name in table.column_names:
        return table.column(name)
    return pa.chunked_array([pa.nulls(table.num_rows)])


def _texts(table: pa.Table, name: str, places: _Places) -> pl.Series:
    col = _column(table, name)
    if not (
        pa.types.is_string(col.type)
        or pa.types.is_large_string(col.type)
        or pa.types.is_null(col.type)
        or pa.types.is_string_view(col.type)
    ):
        row = pc.index(pc.is_valid(col), True).as_py()
        raise InputError(f"{places(max(row, 0))}: '{name}' must be a string, not {col.type}")
    series = pl.Series("t", col.cast(pa.large_string()))
    _check_nonempty(series, places, f"empty or missing '{name}'")
    return series


def _check_nonempty(series: pl.Series, places: _Places, what: str) -> None:
    bad = series.is_null() | (series.str.strip_chars().str.len_bytes() == 0)
    if bad.any():
        raise InputError(f"{places(int(bad.arg_true()[0]))}: {what}")


def _user_messages(texts: pl.Series) -> pl.Series:
    """Encode each text as ``[{"role":"user","content":TEXT}]`` column-wise."""
    frame = pl.DataFrame({"t": texts})
    return frame.select(
        pl.concat_str(
            pl.lit("["), pl.struct(role=pl.lit("user"), content=pl.col("t")).struct.json_encode(), pl.lit("]")
        )
    ).to_series()


def _batch_messages(table: pa.Table, places: _Places) -> pa.ChunkedArray:
    body = _column(table, "body")
    if not pa.types.is_struct(body.type) or body.type.get_field_index("messages") < 0:
        raise InputError(f"{places(0)}: batch line 'body' has no 'messages'")
    return pc.struct_field(body, "messages")


def _messages_json(col: pa.ChunkedArray, places: _Places) -> list[str]:
    """Validate a messages column and encode each row as a compact JSON array of {role, content}."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return _messages_from_text(col.to_pylist(), places)
    frame = pl.DataFrame({"m": pl.Series("m", _valid_messages(col, places))})
    inner = pl.element().struct
    return (
        frame.select(
            pl.struct(pl.col("m").list.eval(pl.struct(inner.field("role"), inner.field("content"))))
            .struct.json_encode()
            .str.slice(5)  # drop '{"m":'
            .str.strip_suffix("}")
        )
        .to_series()
        .to_list()
    )


def _valid_messages(col: pa.ChunkedArray, places: _Places) -> pa.Array:
    """The messages column as one array, once every row is a non-empty list of {role, content}
    with a known role; raises InputError naming the first bad row."""
    typ = col.type
    item = typ.value_type if (pa.types.is_list(typ) or pa.types.is_large_list(typ)) else None
    if (
        item is None
        or not pa.types.is_struct(item)
        or item.get_field_index("role") < 0
        or item.get_field_index("content") < 0
    ):
        raise InputError(f"{places(_first_valid(col))}: {_BAD_MESSAGES}")
    arr = col.combine_chunks()
    bad = pc.or_kleene(pc.is_null(arr), pc.equal(pc.list_value_length(arr), 0)).fill_null(True)
    flat = pc.list_flatten(arr)
    if len(flat):
        parents = pc.list_parent_indices(arr)
        role = pc.struct_field(flat, "role")
        content = pc.struct_field(flat, "content")
        item_bad = pc.or_(
            pc.invert(pc.is_in(role, value_set=pa.array(ROLES))).fill_null(True),
            pc.or_(pc.is_null(content), pc.is_null(flat)),
        )
        if pc.any(item_bad).as_py():
            first_parent = pc.min(pc.filter(parents, item_bad)).as_py()
            bad_first = pc.index(bad, True).as_py()
            row = first_parent if bad_first < 0 else min(bad_first, first_parent)
            raise InputError(f"{places(row)}: {_BAD_MESSAGES}")
    if pc.any(bad).as_py():
        raise InputError(f"{places(pc.index(bad, True).as_py())}: {_BAD_MESSAGES}")
    return arr


def _first_valid(col: pa.ChunkedArray) -> int:
    return max(int(pc.index(pc.is_valid(col), True).as_py()), 0)


def _messages_from_text(values: list[Any], places: _Places) -> list[str]:
    """Messages stored as JSON text (common in Parquet): decode, validate and re-encode per row."""
    out: list[str] = []
    for row, text in enumerate(values):
        try:
            msgs = json.loads(text) if text is not None else None
        except json.JSONDecodeError:
            msgs = None
        if not (
            isinstance(msgs, list)
            and msgs
            and all(isinstance(m, dict) and m.get("role") in ROLES and m.get("content") is not None for m in msgs)
        ):
            raise InputError(f"{places(row)}: {_BAD_MESSAGES}")
        out.append(
            json.dumps(
                [{"role": m["role"], "content": m["content"]} for m in msgs], ensure_ascii=False, separators=(",", ":")
            )
        )
    return out
