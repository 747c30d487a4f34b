"""The run's on-disk state: `OUTPUT.run/` with the run's config and atomic Parquet part files.

Layout::

    OUTPUT.parquet.run/
        run.json              configuration of the run (never a secret)
        parts/part-000001.parquet
        parts/part-000002.parquet ...

Each part holds finished rows (input columns + results + `_row`), written to a temporary
file, fsynced, then renamed into place: a crash leaves either a whole part or none. A later
part wins over an earlier one for the same `_row` (a failed row retried on a rerun).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from runner.errors import RunnerError

#: A part is written at least this often while results arrive ...
FLUSH_SECONDS = 1.0
#: ... or as soon as this many rows are waiting.
FLUSH_ROWS = 500


class OutputError(RunnerError):
    """The output location cannot be used."""


def run_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".run")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(table: pa.Table, dest: Path) -> None:
    """Writes `table` to `dest` through a fsynced temporary file and a rename."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(dest.parent)


def write_json_atomic(data: dict[str, Any], dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


class RunDir:
    """Reads and appends to one run's state directory."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = run_dir_for(output)
        self.parts = self.path / "parts"
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._last_flush = time.monotonic()
        self._next_part = 1

    def prepare(self, config: dict[str, Any]) -> None:
        """Creates the directory (or reopens it) and records the run's configuration."""
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
            probe = self.parts / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise OutputError(f"{self.output}: cannot write the run state in {self.path}: {err.strerror}") from None
        write_json_atomic(config, self.path / "run.json")
        self._next_part = 1 + max((self._part_number(p) for p in self._part_files()), default=0)

    def saved_config(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / "run.json").read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _part_number(path: Path) -> int:
        return int(path.stem.split("-")[1])

    def _part_files(self) -> list[Path]:
        if not self.parts.is_dir():
            return []
        return sorted(self.parts.glob("part-*.parquet"), key=self._part_number)

    def readable_parts(self) -> list[Path]:
        """Part files that open as Parquet; a torn file from a crash is skipped, not fatal."""
        good = []
        for path in self._part_files():
            try:
                pq.read_metadata(path)
            except (OSError, pa.ArrowException):
                continue
            good.append(path)
        return good

    def ok_rows(self) -> set[int]:
        """Row positions whose latest result is ok: they are never sent again."""
        parts = self.readable_parts()
        if not parts:
            return set()
        latest = self._latest(
            pl.concat([pl.read_parquet(p, columns=["_row", "status"]) for p in parts], how="vertical_relaxed")
        )
        return set(latest.filter(pl.col("status") == "ok")["_row"].to_list())

    @staticmethod
    def _latest(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.unique(subset="_row", keep="last", maintain_order=True)

    def append(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows

    def flush_due(self) -> bool:
        return bool(self._pending) and (
            self._pending_rows >= FLUSH_ROWS or time.monotonic() - self._last_flush >= FLUSH_SECONDS
        )

    def flush(self) -> None:
        """Writes the waiting rows as the next part file."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        table = pa.concat_tables(self._pending, promote_options="permissive")
        dest = self.parts / f"part-{self._next_part:06d}.parquet"
        try:
            write_atomic(table, dest)
        except OSError as err:
            raise OutputError(f"{dest}: cannot write results: {err.strerror}") from None
        self._next_part += 1
        self._pending.clear()
        self._pending_rows = 0

    def compact(self, metadata: dict[bytes, bytes]) -> pa.Table:
        """Replaces OUTPUT atomically with the latest result of every row, in input order."""
        parts = self.readable_parts()
        frames = [pl.read_parquet(p) for p in parts]
        merged = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame({"_row": []})
        final = self._latest(merged).sort("_row").drop("_row")
        table = final.to_arrow(compat_level=pl.CompatLevel.oldest())
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        try:
            write_atomic(table, self.output)
        except OSError as err:
            raise OutputError(f"{self.output}: cannot write the output: {err.strerror}") from None
        return table
