"""One model's rows read again from the input for the Batch API: the request bodies of the rows
to submit, and the input columns that a batch's results are joined to."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from runner.engine.lane import LaneRun
from runner.engine.shard import parse_shard, shard_rows
from runner.inputs.render import Renderer, plan


@dataclass
class Slice:
    """Some rows of one input chunk: their input columns, ids, `_row` numbers and payloads."""

    inputs: pa.Table
    ids: pa.Array
    rows: list[int]
    payloads: list[str]


class LaneInput:
    """The input as one lane (model) of the run sees it."""

    def __init__(self, lane: LaneRun) -> None:
        self.lane = lane
        self._renderers: dict[Path, Renderer] = {}
        config = json.loads(lane.native_config())
        config["stream"] = False
        #: The executor's settings, for the request bodies and the reading of answers.
        self.config = json.dumps(config)

    def slices(self, wanted: set[int] | None = None) -> Iterator[Slice]:
        """The lane's rows in input order (only those in `wanted`, when given); a shard's rows
        only, read as the live lane reads them (`runner.engine.shard.shard_rows`)."""
        lane = self.lane
        shard = parse_shard(lane.opts.shard)
        limit = lane.opts.limit if shard else lane.total
        position = 0
        for table, ids, chunk in shard_rows(lane.paths, lane.schemas, self._renderer, limit, shard):
            if position >= lane.total:
                break
            table, ids = table.slice(0, lane.total - position), ids.slice(0, lane.total - position)
            start = lane.offset + position
            position += table.num_rows
            picked = [i for i in range(table.num_rows) if wanted is None or start + i in wanted]
            if not picked:
                continue
            index = pa.array(picked, pa.int64())
            payloads = self._renderer(chunk.path, table).render_array(table, chunk).take(index).to_pylist()
            yield Slice(table.take(index), ids.take(index), [start + i for i in picked], payloads)

    def bodies(self, payloads: list[str]) -> list[tuple[str, str]]:
        """Each payload's request body (as the live path would send it) and request hash."""
        from runner._native import batch_requests

        return batch_requests(self.config, payloads)

    def results(self, items: list[tuple[Any, ...]]) -> pa.Table:
        """Result rows (`RESULT_SCHEMA`) from answers read back from a batch."""
        from runner._native import batch_results

        return pa.Table.from_batches([pa.record_batch(batch_results(self.config, items))])

    def _renderer(self, path: Path, table: pa.Table) -> Renderer:
        if path not in self._renderers:
            self._renderers[path] = plan(table.column_names, self.lane.spec, str(path))
        return self._renderers[path]
