"""`Chunk`: a bounded slice of one input file, and `place`, how a row's location is written in
messages (`data.jsonl:17`, `data.parquet:row 17`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa

__all__ = ["Chunk", "place"]


@dataclass
class Chunk:
    """A bounded slice of one input file, in file order.

    ``first_line`` is the 1-based line of the first row in its file (JSONL) or the 1-based row
    number (Parquet). ``row_lines`` is set only when the rows are not on consecutive lines
    (blank lines inside the chunk); use :meth:`line_of` / :meth:`place` rather than either field.
    Column types and even the set of columns may differ between chunks (JSONL types are inferred
    per block): use :func:`unify` to concatenate tables from several chunks.
    """

    table: pa.Table
    path: Path
    first_line: int
    row_lines: Sequence[int] | None = field(default=None, repr=False)
    #: The types a JSONL block was read with (inferred from all its rows); reading the same
    #: block again with them skips the inference, which is most of the parsing.
    schema: pl.Schema | None = field(default=None, repr=False)

    @property
    def num_rows(self) -> int:
        return int(self.table.num_rows)

    @property
    def is_parquet(self) -> bool:
        return self.path.name.endswith(".parquet")

    def line_of(self, row: int) -> int:
        """1-based line (JSONL) or row number (Parquet) of the chunk's ``row``-th row (0-based)."""
        if self.row_lines is not None:
            return self.row_lines[row]
        return self.first_line + row

    def place(self, row: int) -> str:
        """Where row ``row`` of this chunk is, for error messages: ``data.jsonl:17``."""
        return place(self.path, self.line_of(row), parquet=self.is_parquet)


def place(path: Path, line: int, *, parquet: bool | None = None) -> str:
    """Format a location: ``data.jsonl:17`` for a JSONL line, ``data.parquet:row 17`` for Parquet."""
    if parquet is None:
        parquet = path.name.endswith(".parquet")
    return f"{path}:row {line}" if parquet else f"{path}:{line}"
