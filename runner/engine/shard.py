"""Shards: a run's rows split by a stable hash of their id, so that N processes (CI runners, Ray
tasks) each run one share and `prompt-runner merge` joins them (README, "Shards and Ray").

The hash is documented and stable, so a rerun of shard I takes the same rows, on any machine and
with any version of this program:

    shard(id) = int.from_bytes(sha256(id.encode("utf-8")).digest()[:8], "big") % N

`id` is the row's id as it appears in the output: the id column's value as a string, or, without
an id column, the row's position in the whole input (0-based), not its position in the shard.
In a model matrix a shard runs its rows for every model, so each model's rows are split alike.
In SQL (DuckDB): `('0x' || substr(sha256(id), 1, 16))::UBIGINT % N`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from runner.errors import InputError

__all__ = ["Shard", "shard_of", "shard_rows"]


def shard_of(row_id: str, count: int) -> int:
    """The shard (0 .. count-1) of a row id: the first 8 bytes of its UTF-8 SHA-256, big-endian,
    modulo `count`."""
    return int.from_bytes(hashlib.sha256(row_id.encode("utf-8")).digest()[:8], "big") % count


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (`--shard I/N`, 0 <= I < N)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str, flag: str = "--shard") -> Shard:
        """`"I/N"` as a Shard; a malformed one is an InputError naming `flag`."""
        try:
            i, n = (int(part) for part in text.strip().split("/"))
        except ValueError:
            raise InputError(f"{flag}: expected I/N (shard I of N, 0 <= I < N), got {text!r}") from None
        if n < 1:
            raise InputError(f"{flag}: N must be at least 1, got {text!r}")
        if not 0 <= i < n:
            raise InputError(f"{flag}: I must be 0 to {n - 1} (shards are numbered from 0), got {text!r}")
        return cls(i, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def mask(self, ids: Sequence[str] | pa.Array) -> pa.Array:
        """Which of `ids` belong to this shard."""
        values = ids.to_pylist() if isinstance(ids, (pa.Array, pa.ChunkedArray)) else ids
        sha, take, n, i = hashlib.sha256, int.from_bytes, self.count, self.index
        return pa.array([take(sha(v.encode("utf-8")).digest()[:8], "big") % n == i for v in values], pa.bool_())


def shard_rows(
    paths: Sequence[Path],
    schemas: Mapping[Path, Sequence[Any]] | None,
    renderer: Callable[[Path, pa.Table], Any],
    limit: int | None,
    shard: Shard | None,
) -> Iterator[tuple[pa.Table, pa.Array, Any]]:
    """The input's first `limit` rows (all without a limit) that belong to `shard` (all without
    one), chunk by chunk: (rows, their ids, the chunk they came from). Ids are computed before
    the rows are filtered, so a row without an id column keeps its position in the whole input."""
    from runner.inputs.dataset import iter_chunks

    position = 0
    for chunk in iter_chunks(paths, schemas=schemas):
        if limit is not None and position >= limit:
            break
        table = chunk.table if limit is None else chunk.table.slice(0, limit - position)
        ids = pa.array(renderer(chunk.path, table).ids(table, position, chunk), pa.string())
        position += table.num_rows
        if shard is not None and shard.count > 1:
            wanted = shard.mask(ids)
            table, ids = table.filter(wanted), ids.filter(wanted)
        yield table, ids, chunk


def parse_shard(value: Any, flag: str = "--shard") -> Shard | None:
    """A spec's `shard` field (None, "I/N") as a Shard."""
    if value is None or isinstance(value, Shard):
        return value
    return Shard.parse(str(value), flag)


def shard_output(output: Path, shard: Shard) -> Path:
    """Where a Ray run keeps shard I of N: `OUTPUT.shards/shard-I-of-N.parquet` (its run
    directory beside it), on storage every node sees."""
    return output.with_name(output.name + ".shards") / f"shard-{shard.index}-of-{shard.count}.parquet"


def shard_total(paths: Sequence[Path], request: Any, schemas: Mapping[Path, Sequence[Any]] | None, limit: int | None, shard: Shard) -> int:
    """How many of the input's first `limit` rows belong to `shard` (the input read once more)."""
    from runner.inputs.render import plan

    renderers: dict[Path, Any] = {}

    def renderer(path: Path, table: pa.Table) -> Any:
        if path not in renderers:
            renderers[path] = plan(table.column_names, request, str(path))
        return renderers[path]

    return sum(table.num_rows for table, _, _ in shard_rows(paths, schemas, renderer, limit, shard))
