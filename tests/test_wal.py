"""The write-ahead log (runner.wal): a `kill -9` re-sends at most the concurrency; a torn log
tail is ignored; a row in both a part and the log is one row; credits gate sending."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from e2e import cli, mock, spawn, stats, write_jsonl
from test_checkpoint import part
from test_resume import CONCURRENCY, assert_complete, prompts, run_args

from runner import wal
from runner.checkpoint import RunDir
from runner.lane import Credits

# -- end to end: real processes, a real server -----------------------------------------------


def test_sigkill_at_20_50_and_80_percent_resends_at_most_the_concurrency(tmp_path: Path) -> None:
    rows = 3000
    texts = prompts(rows)
    # 20-80 ms a request: ~600 rows/s at concurrency 32, as in issue 13's measurement.
    server = mock(latency_ms=20, latency_jitter_ms=60, track_prompts=True)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts])
    out = tmp_path / "out.parquet"
    env = {"OPENAI_API_KEY": server.api_key}
    seen = []  # requests per prompt once each process has ended
    for share in (0.2, 0.5, 0.8):
        proc = spawn(*run_args(path, out, server), env=env)  # the same command resumes
        while stats(server)["requests"] < share * rows:
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        seen.append(stats(server)["prompts"])
        assert sum(seen[-1].values()) < rows + 3 * CONCURRENCY, "the kill must land mid-run"
    res = cli(*run_args(path, out, server), env=env)
    assert res.code == 0, res.stderr
    assert_complete(out, texts)  # every row once, with its own answer
    seen.append(stats(server)["prompts"])
    resent = [
        sum(1 for p, n in before.items() if n and after.get(p, 0) > n) for before, after in zip(seen, seen[1:])
    ]
    print(f"re-sent after kills at 20/50/80 %: {resent} (concurrency {CONCURRENCY})")
    assert all(r <= CONCURRENCY for r in resent), resent
    assert sum(seen[-1].values()) - rows == sum(resent)


def segment_batches(path: Path) -> list[int]:
    """Rows per whole record batch of a log segment, read with pyarrow alone."""
    sizes = []
    try:
        with pa.OSFile(str(path)) as fh:
            reader = pa.ipc.open_stream(fh)
            while True:
                sizes.append(reader.read_next_batch().num_rows)
    except (StopIteration, OSError, pa.ArrowException):
        pass
    return sizes


def test_sigkill_then_a_torn_log_tail_is_ignored_and_the_run_resumes(tmp_path: Path) -> None:
    rows = 3000
    texts = prompts(rows)
    server = mock(latency_ms=20, latency_jitter_ms=60)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts])
    out = tmp_path / "out.parquet"
    env = {"OPENAI_API_KEY": server.api_key}
    log_dir = tmp_path / "out.parquet.run" / "log"
    proc = spawn(*run_args(path, out, server), env=env)
    deadline = time.monotonic() + 30
    # Kill while the log holds a few polls' rows (it is emptied each time a part is written).
    while time.monotonic() < deadline and proc.poll() is None:
        if log_dir.is_dir() and len(segment_batches(max(log_dir.glob("*.arrows"), default=log_dir))) >= 5:
            break
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    segments = sorted(log_dir.glob("*.arrows"))
    assert segments, "a killed run leaves its log"
    last = segments[-1]
    whole = segment_batches(last)
    assert len(whole) >= 5, whole
    with open(last, "r+b") as fh:  # tear the last record: a crash mid-write
        fh.truncate(last.stat().st_size - 7)
    lost = whole[-1]
    assert segment_batches(last) == whole[:-1]
    sent_before = stats(server)["requests"]
    res = cli(*run_args(path, out, server), env=env)
    assert res.code == 0, res.stderr
    assert_complete(out, texts)
    resent = stats(server)["requests"] - rows
    print(f"killed after {sent_before} requests; the torn record held {lost} rows; re-sent {resent}")
    assert resent <= CONCURRENCY + lost


def completed_rows(tmp_path: Path, rows: int) -> tuple[tuple[str, ...], dict[str, str], Path, pa.Table, object]:
    """A finished run's rows (with `_row`, from its parts), its state then emptied of parts and
    output: the tests below lay parts and a log out by hand, as a crash would leave them."""
    server = mock()
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in prompts(rows)])
    out = tmp_path / "out.parquet"
    args = run_args(path, out, server)
    env = {"OPENAI_API_KEY": server.api_key}
    assert cli(*args, env=env).code == 0
    run = tmp_path / "out.parquet.run"
    parts = sorted((run / "parts").glob("part-*.parquet"))
    table = pa.concat_tables([pq.ParquetFile(p).read() for p in parts], promote_options="permissive")
    table = table.take(pc.sort_indices(table, [("_row", "ascending")]))
    assert table.column("_row").to_pylist() == list(range(rows))
    shutil.rmtree(run / "parts")
    (run / "parts").mkdir()
    out.unlink()
    return args, env, run, table, server


def write_log(path: Path, tables: list[pa.Table]) -> list[int]:
    """A log segment holding `tables` as record batches, with no end marker (as a kill leaves
    it); returns the file offset after each batch."""
    path.parent.mkdir(exist_ok=True)
    ends = []
    with pa.OSFile(str(path), "wb") as fh:
        writer = pa.ipc.new_stream(fh, tables[0].schema)
        for t in tables:
            writer.write_table(t)
            ends.append(fh.tell())
    return ends


def requests(server) -> int:
    return stats(server)["requests"]


@pytest.mark.parametrize("cut", ["body", "header"])
def test_a_torn_log_tail_is_ignored_and_only_its_rows_are_sent_again(tmp_path: Path, cut: str) -> None:
    args, env, run, table, server = completed_rows(tmp_path, 400)
    pq.write_table(table.slice(0, 200), run / "parts" / "part-000001.parquet")
    segment = run / "log" / "000001.arrows"
    ends = write_log(segment, [table.slice(start, 50) for start in range(200, 400, 50)])
    # Cut the last record in its body, or a few bytes into its header.
    size = ends[-2] + (ends[-1] - ends[-2]) // 2 if cut == "body" else ends[-2] + 5
    with open(segment, "r+b") as fh:
        fh.truncate(size)
    res = cli(*args, env=env)
    assert res.code == 0, res.stderr
    assert_complete(run.parent / "out.parquet", prompts(400))
    assert requests(server) == 400 + 50  # the torn record's rows only
    assert not list((run / "log").glob("*.arrows"))  # folded into a part, then removed


def test_a_row_in_both_a_part_and_the_log_is_one_row_and_the_log_is_the_later(tmp_path: Path) -> None:
    args, env, run, table, server = completed_rows(tmp_path, 400)
    # Rows 0-299 in a part, 200-399 in the log (a crash after a part was written, before its
    # log segment was removed). Row 5 failed in the part and is ok in the log (a later retry).
    early = table.slice(0, 300)
    status = pc.if_else(pc.equal(early.column("_row"), 5), "error", early.column("status"))
    early = early.set_column(early.schema.get_field_index("status"), "status", status)
    pq.write_table(early, run / "parts" / "part-000001.parquet")
    write_log(run / "log" / "000001.arrows", [table.slice(200, 100), table.slice(300, 50), table.slice(5, 1), table.slice(350, 50)])
    res = cli(*args, env=env)
    assert res.code == 0, res.stderr
    df = assert_complete(run.parent / "out.parquet", prompts(400))  # each row once, all ok
    assert df.height == 400
    assert requests(server) == 400  # nothing sent again: every row was saved


# -- the log itself ----------------------------------------------------------------------------


def test_read_segment_ignores_a_tail_torn_at_any_byte(tmp_path: Path) -> None:
    segment = tmp_path / "000001.arrows"
    tables = [part(list(range(i * 4, i * 4 + 4)), "ok") for i in range(3)]
    ends = write_log(segment, tables)
    data = segment.read_bytes()
    assert [b.num_rows for b in wal.read_segment(segment)] == [4, 4, 4]
    for size in range(ends[1], ends[2]):  # every cut of the last record
        segment.write_bytes(data[:size])
        assert [b.num_rows for b in wal.read_segment(segment)] == [4, 4], size
    segment.write_bytes(data[:ends[1]] + b"\x17" * 40)  # garbage after whole records
    assert [b.num_rows for b in wal.read_segment(segment)] == [4, 4]
    for size in (0, 3, 20):  # not even a whole schema
        segment.write_bytes(data[:size])
        assert wal.read_segment(segment) == []


def test_rows_are_in_the_log_once_sync_log_returns_and_leave_it_with_their_part(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "out.parquet")
    run_dir.prepare()
    run_dir.append(part([0, 1, 2], "ok"))
    run_dir.sync_log()
    # What another process would read after a kill: the rows, before any part exists.
    assert [r for t in wal.read_log(run_dir.log_segments()) for r in t.column("_row").to_pylist()] == [0, 1, 2]
    assert not run_dir.readable_parts()
    assert sorted(run_dir.latest()["_row"].to_list()) == [0, 1, 2]  # `status` sees them
    run_dir.append(part([3], "ok"))
    run_dir.sync_log()
    run_dir.flush()
    assert len(run_dir.readable_parts()) == 1 and not run_dir.log_segments()
    run_dir.append(part([4], "ok"))
    run_dir.sync_log()
    assert [p.name for p in run_dir.log_segments()] == ["000002.arrows"]  # a new segment
    run_dir.release()


def test_a_crash_before_the_log_is_removed_leaves_duplicates_that_resolve_to_one_row(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "out.parquet")
    run_dir.prepare()
    run_dir.append(part(list(range(10)), "ok"))
    run_dir.sync_log()
    [segment] = run_dir.log_segments()
    kept = segment.read_bytes()
    run_dir.flush()  # the part is in place and the segment removed ...
    segment.write_bytes(kept)  # ... but say the removal never happened (a crash)
    run_dir.release()
    again = RunDir(tmp_path / "out.parquet")
    again.prepare()  # folds the log into a second part holding the same rows
    assert not again.log_segments() and len(again.readable_parts()) == 2
    assert again.latest()["_row"].to_list() == list(range(10))
    again.compact({})
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == [str(r) for r in range(10)]
    again.release()


def test_columns_that_change_type_start_a_new_segment_and_are_read_back(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "out.parquet")
    run_dir.prepare()
    run_dir.append(part([0, 1], "ok", pa.array([1, 2], pa.int64())))
    run_dir.append(part([2], "ok", pa.array(["three"])))
    run_dir.sync_log()
    assert len(run_dir.log_segments()) == 2
    run_dir.release()  # a kill, as far as the log goes
    again = RunDir(tmp_path / "out.parquet")
    again.prepare()
    again.compact({})
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column("id").to_pylist() == ["0", "1", "2"]
    assert [str(v) for v in out.column("n").to_pylist()] == ["1", "2", "three"]
    again.release()


def test_the_log_is_fsynced_at_most_once_per_sync_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = []
    real_fsync = wal.os.fsync
    monkeypatch.setattr(wal.os, "fsync", lambda fd: (synced.append(time.monotonic()), real_fsync(fd)))
    log = wal.ResultLog(tmp_path, sync_seconds=0.25)
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        log.write(part([1], "ok"))
        log.flush()
        time.sleep(0.005)
    log.close()
    files = synced[::2]  # each sync fsyncs the segment, then the directory
    assert 3 <= len(files) <= 5, len(files)
    assert all(b - a >= 0.25 for a, b in zip(files, files[1:]))


# -- credits: gated sending --------------------------------------------------------------------


def test_gated_credits_keep_unlogged_rows_at_the_concurrency_and_a_stop_lets_the_feeder_go() -> None:
    credits = Credits(4)
    sent: list[int] = []
    lock = threading.Lock()

    def submit(rows: list[int], payloads: list[str]) -> None:
        with lock:
            sent.extend(rows)

    feeder = threading.Thread(target=credits.send, args=(list(range(10)), ["p"] * 10, submit, lambda: False))
    feeder.start()
    time.sleep(0.2)
    assert sent == [0, 1, 2, 3]  # the rest wait for results to be logged
    credits.give(3, submit)  # three logged: three more, sent by the run loop itself
    assert sent == [0, 1, 2, 3, 4, 5, 6]
    credits.open()  # the run stops: the feeder must not wait for results that may never come
    feeder.join(timeout=2)
    assert not feeder.is_alive() and sent == list(range(10))

    ungated = Credits(2)
    ungated.gate(False)  # a fast server: no limit
    sent.clear()
    ungated.send(list(range(10)), ["p"] * 10, submit, lambda: False)
    assert sent == list(range(10))
