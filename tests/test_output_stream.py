"""The output written while the run goes on (runner.store.output_stream), and its fall-back to compaction."""

from __future__ import annotations

import random
import shutil
import signal
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from e2e import base_for, cli, mock, spawn, write_jsonl
from test_checkpoint import part

import runner.store.output_stream as output_stream
from runner.store.checkpoint import RunDir


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output_stream, "WINDOW_ROWS", 10)
    monkeypatch.setattr(output_stream, "HOLD_ROWS", 40)


def streamed_dir(tmp_path: Path, rows: int) -> RunDir:
    run_dir = RunDir(tmp_path / "out.parquet")
    run_dir.prepare()
    assert run_dir.stream_output(rows)
    return run_dir


def feed(run_dir: RunDir, order: list[int], size: int, status: str = "ok") -> None:
    """Appends rows in `order`, `size` at a time, flushing parts as a run does."""
    for i in range(0, len(order), size):
        run_dir.append(part(order[i : i + size], status))
        run_dir.flush()


def compacted_copy(tmp_path: Path, metadata: dict[bytes, bytes]) -> pa.Table:
    """What compaction of the same parts gives: the output the stream must equal."""
    shutil.copytree(tmp_path / "out.parquet.run", tmp_path / "copy.parquet.run")
    RunDir(tmp_path / "copy.parquet").compact(metadata)
    return pq.read_table(tmp_path / "copy.parquet")


def stream_tmp(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "out.parquet.run").glob(".output-*.tmp"))


def test_rows_finishing_out_of_order_are_written_during_the_run_in_row_order(tmp_path: Path, small_windows: None) -> None:
    order = list(range(95))
    rng = random.Random(5)
    for i in range(0, 95, 12):  # completion order: shuffled within a window of concurrency
        block = order[i : i + 12]
        rng.shuffle(block)
        order[i : i + 12] = block
    run_dir = streamed_dir(tmp_path, 95)
    feed(run_dir, order[:60], 6)
    tmp = stream_tmp(tmp_path)
    assert len(tmp) == 1 and tmp[0].stat().st_size > 0, "windows are written while rows still arrive"
    assert not (tmp_path / "out.parquet").exists()
    feed(run_dir, order[60:], 6)
    metadata = {b"prompt_runner.summary": b'{"elapsed_s": 1}'}
    summary = run_dir.compact(metadata)
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column("id").to_pylist() == [str(r) for r in range(95)]
    assert pq.read_metadata(tmp_path / "out.parquet").num_row_groups > 1
    assert out.equals(compacted_copy(tmp_path, metadata), check_metadata=True)
    assert pq.read_schema(tmp_path / "out.parquet").metadata == metadata
    assert summary.num_rows == 95 and summary.column_names == ["status", "latency_ms"]
    assert not stream_tmp(tmp_path)


def test_a_row_late_for_too_long_makes_the_run_compact_its_parts(tmp_path: Path, small_windows: None) -> None:
    run_dir = streamed_dir(tmp_path, 60)
    feed(run_dir, list(range(1, 45)), 4)  # row 0 is retried for long: 44 rows wait for it
    assert not stream_tmp(tmp_path), "the stream gave up and removed its file"
    feed(run_dir, [0, *range(45, 60)], 4)
    run_dir.compact({})
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column("id").to_pylist() == [str(r) for r in range(60)]


def test_columns_that_change_type_fall_back_to_compaction(tmp_path: Path, small_windows: None) -> None:
    run_dir = streamed_dir(tmp_path, 30)
    run_dir.append(part(list(range(15)), "ok", pa.array(range(15), pa.int64())))
    run_dir.append(part(list(range(15, 30)), "ok", pa.array([str(r) for r in range(15, 30)])))
    run_dir.flush()
    run_dir.compact({})
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column("n").to_pylist() == [str(r) for r in range(30)]  # promoted by compaction
    assert not stream_tmp(tmp_path)


def test_a_run_that_ends_with_rows_missing_writes_what_its_parts_hold(tmp_path: Path, small_windows: None) -> None:
    run_dir = streamed_dir(tmp_path, 30)
    feed(run_dir, list(range(25)), 5)  # stopped (budget, a fatal error) before the last 5 rows
    run_dir.compact({})
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == [str(r) for r in range(25)]


def test_an_interrupted_run_leaves_neither_output_nor_temporary_file(tmp_path: Path, small_windows: None) -> None:
    run_dir = streamed_dir(tmp_path, 30)
    feed(run_dir, list(range(20)), 5)
    assert stream_tmp(tmp_path)
    run_dir.release()
    assert not stream_tmp(tmp_path) and not (tmp_path / "out.parquet").exists()


def test_a_run_with_saved_parts_does_not_stream(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "out.parquet")
    run_dir.prepare()
    feed(run_dir, [0, 1], 2, status="error")
    run_dir.release()
    again = RunDir(tmp_path / "out.parquet")
    again.prepare()
    assert not again.stream_output(2)


def test_sigkill_while_streaming_leaves_the_output_directory_clean_and_rerun_completes(tmp_path: Path) -> None:
    rows = 12_000  # windows are 10,000 rows
    server = mock(latency_ms=2)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i} été"} for i in range(rows)])
    out = tmp_path / "out.parquet"
    args = ("run", str(path), "-o", str(out), "--provider", "openai", "--model", "m",
            "--api-base", base_for(server, "openai"), "--concurrency", "64")
    env = {"OPENAI_API_KEY": server.api_key}
    proc = spawn(*args, env=env)
    deadline = time.monotonic() + 30
    while not any(t.stat().st_size for t in stream_tmp(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stream_tmp(tmp_path), "the output is written while the run goes on"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.parquet.run"]
    res = cli(*args, env=env)
    assert res.code == 0, res.stderr
    assert pq.read_table(out).column("id").to_pylist() == [str(i) for i in range(rows)]
    assert not stream_tmp(tmp_path)


def test_a_slow_run_of_many_small_polls_compacts_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output_stream, "WINDOW_ROWS", 10)
    monkeypatch.setattr(output_stream, "HOLD_TABLES", 8)
    run_dir = streamed_dir(tmp_path, 30)
    feed(run_dir, list(range(9)), 1)  # nine polls of one row: more tables than it holds
    feed(run_dir, list(range(9, 30)), 3)  # windows are full now, but the stream gave up
    assert not stream_tmp(tmp_path)
    run_dir.compact({})
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == [str(r) for r in range(30)]
