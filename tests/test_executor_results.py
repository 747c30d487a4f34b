"""The executor's polls as Arrow record batches: the schema the run loop writes, every row once."""

from __future__ import annotations

import json
import time

import pyarrow as pa

from runner._native import Executor
from runner.schema import RESULT_FIELDS
from e2e import base_for, expected_reply, mock


def test_polls_are_record_batches_with_the_output_schema() -> None:
    server = mock(latency_ms=5)
    try:
        executor = Executor(json.dumps({
            "provider": "openai", "api_base": base_for(server, "openai"), "api_key": "mock-key",
            "model": "m", "concurrency": 8, "max_retries": 0,
        }))
        texts = [f"q{i} ζῆτα 数据" for i in range(40)] + ["[[bad]] refuse this"]
        executor.submit(list(range(100, 100 + len(texts))), [json.dumps([{"role": "user", "content": t}]) for t in texts])
        executor.close_input()
        batches = []
        started = time.monotonic()
        while (result := executor.poll(0.5)) is not None:
            assert time.monotonic() - started < 30, "the run did not finish"
            batch = pa.record_batch(result)
            assert batch.num_rows == len(result)
            batches.append(batch)
    finally:
        server.stop()
    table = pa.Table.from_batches(batches)
    expected = pa.schema([pa.field("_row", pa.int64()), *RESULT_FIELDS, pa.field("request_hash", pa.string())])
    assert table.schema.equals(expected), table.schema
    assert sum(1 for b in batches if b.num_rows > 1), "results should arrive in batches, not one by one"
    by_row = {r["_row"]: r for r in table.to_pylist()}
    assert sorted(by_row) == list(range(100, 100 + len(texts)))
    for i, text in enumerate(texts[:-1]):
        row = by_row[100 + i]
        assert (row["status"], row["output"], row["http_status"], row["attempts"]) == ("ok", expected_reply(text), 200, 1)
        assert row["prompt_tokens"] > 0 and row["error_type"] is None and row["started_at"] <= row["finished_at"]
        assert len(row["request_hash"]) == 32
    bad = by_row[100 + len(texts) - 1]
    assert (bad["status"], bad["output"], bad["http_status"]) == ("error", None, 400)
    assert bad["error_type"] and bad["error"]


def test_rows_submitted_as_arrow_arrays_get_the_same_answers_and_bad_arrays_are_refused() -> None:
    import pytest

    server = mock()
    try:
        def executor() -> Executor:
            return Executor(json.dumps({
                "provider": "openai", "api_base": base_for(server, "openai"), "api_key": "mock-key",
                "model": "m", "concurrency": 4, "max_retries": 0,
            }))

        texts = [f"q{i} ζῆτα \"quoted\" 数据" for i in range(30)]
        payloads = pa.array([json.dumps([{"role": "user", "content": t}]) for t in texts], pa.large_string())
        rows = pa.array(range(7, 7 + len(texts)), pa.int64())
        answers = {}
        for submit in ("list", "arrow"):
            ex = executor()
            if submit == "list":
                ex.submit(rows.to_pylist(), payloads.to_pylist())
            else:
                ex.submit_arrow(rows, payloads)
            ex.close_input()
            results = []
            while (result := ex.poll(0.5)) is not None:
                results.extend(pa.record_batch(result).to_pylist())
            answers[submit] = sorted((r["_row"], r["output"]) for r in results)
        assert answers["list"] == [(7 + i, expected_reply(t)) for i, t in enumerate(texts)]
        assert answers["arrow"] == answers["list"]

        ex = executor()
        with pytest.raises(ValueError, match="large_string"):
            ex.submit_arrow(rows, pa.array(payloads.to_pylist(), pa.string()))
        with pytest.raises(ValueError, match="int64"):
            ex.submit_arrow(pa.array(rows.to_pylist(), pa.int32()), payloads)
        with pytest.raises(ValueError, match="equal lengths and no nulls"):
            ex.submit_arrow(rows.slice(1), payloads)
        with pytest.raises(ValueError, match="equal lengths and no nulls"):
            ex.submit_arrow(rows, pa.array([None, *payloads.to_pylist()[1:]], pa.large_string()))
        with pytest.raises(ValueError, match="row 7: messages are not valid"):
            ex.submit_arrow(rows.slice(0, 1), pa.array(["not json"], pa.large_string()))
        ex.cancel()
    finally:
        server.stop()
