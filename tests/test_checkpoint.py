"""RunDir compaction: windows of rows, the latest result per row, parts with differing types."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import runner.store.checkpoint as checkpoint
from runner.store.checkpoint import RunDir


def part(rows: list[int], status: str, extra: pa.Array | None = None) -> pa.Table:
    columns = {
        "_row": pa.array(rows, pa.int64()),
        "id": pa.array([str(r) for r in rows]),
        "status": pa.array([status] * len(rows)),
        "output": pa.array([f"{status}-{r}" for r in rows]),
        "latency_ms": pa.array([1.0] * len(rows)),
    }
    if extra is not None:
        columns["n"] = extra
    return pa.table(columns)


def test_compaction_across_windows_keeps_the_latest_result_in_row_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "COMPACT_WINDOW", 7)  # many windows for 50 rows
    run_dir = RunDir(tmp_path / "out.parquet")
    run_dir.prepare()
    rows = list(range(50))
    random.Random(3).shuffle(rows)  # completion order is not row order
    for i in range(0, 50, 9):
        chunk = rows[i : i + 9]
        # one part's input column is typed int, another's string: promoted to one type
        n = pa.array(chunk, pa.int64()) if i % 2 else pa.array([str(r) for r in chunk])
        run_dir.append(part(chunk, "error", n))
        run_dir.flush()
    retried = [3, 17, 18, 41]  # a rerun's later results win
    run_dir.append(part(retried, "ok", pa.array(retried, pa.int64())))
    run_dir.flush()
    summary = run_dir.compact({b"k": b"v"})
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column("id").to_pylist() == [str(r) for r in range(50)]
    assert "_row" not in out.column_names and out.schema.metadata[b"k"] == b"v"
    expected = ["ok" if r in retried else "error" for r in range(50)]
    assert out.column("status").to_pylist() == expected
    assert out.column("output").to_pylist() == [f"{s}-{r}" for r, s in enumerate(expected)]
    assert [str(v) for v in out.column("n").to_pylist()] == [str(r) for r in range(50)]
    assert summary.num_rows == 50 and summary.column("status").to_pylist() == expected


def test_small_parts_are_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "MERGE_PARTS", 8)
    run_dir = RunDir(tmp_path / "out.parquet")
    run_dir.prepare()
    for start in range(0, 100, 5):
        run_dir.append(part(list(range(start, start + 5)), "ok"))
        run_dir.flush()
    files = sorted((tmp_path / "out.parquet.run" / "parts").glob("part-*.parquet"))
    # 20 parts of 5 rows: 8 merge into one of 40 (small too), which merges with the next 7 into
    # one of 75; the last 5 parts wait: 1 + 5 files.
    assert len(files) == 6, files
    assert sorted(pq.read_table(files[0]).column("_row").to_pylist()) == list(range(75))
    run_dir.compact({})
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column("id").to_pylist() == [str(r) for r in range(100)]
    assert out.column("output").to_pylist() == [f"ok-{r}" for r in range(100)]


def test_prefetching_passes_on_errors_and_stops_with_its_consumer() -> None:
    import threading

    def failing():
        yield 1
        raise OSError(28, "No space left on device")

    got = []
    with pytest.raises(OSError, match="No space left"):
        for item in checkpoint._prefetched(failing()):
            got.append(item)
    assert got == [1]

    produced = []

    def endless():
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    before = threading.active_count()
    for item in checkpoint._prefetched(endless()):
        if item == 3:
            break  # the consumer stops early: the producer must not stay blocked
    assert threading.active_count() == before
    assert len(produced) <= 6


def test_input_digests_hash_on_a_thread_and_hand_back_errors(tmp_path: Path) -> None:
    import hashlib

    files = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for i, f in enumerate(files):
        f.write_bytes(b'{"prompt": "x"}\n' * (100_000 + i))
    digests = checkpoint.digests_in_background(files)()
    assert [d["sha256"] for d in digests] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert [d["size"] for d in digests] == [f.stat().st_size for f in files]
    with pytest.raises(FileNotFoundError):
        checkpoint.digests_in_background([files[0], tmp_path / "gone.jsonl"])()
