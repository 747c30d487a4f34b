"""Ray as the engine that runs shards (`run --ray --shards N`, `runner.ray.run`), on a local Ray
cluster against the mock server: the merged output equals a single-process run; the shards
together run at the limit, counted on the server; a shard's worker killed with SIGKILL is
retried by Ray as a resume; two attempts of one shard never both write; the permit pool's
shares. Ray's tests are skipped only where `ray` is not installed (CI installs it)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from e2e import base_for, cli, expected_reply, mock, read_output, stats, write_jsonl

from runner.errors import RunnerError
from runner.ray.permits import PermitPool
from runner.store.checkpoint import RunDir, run_dir_for
from runner.store.owner import OwnerToken

VOLATILE = ["run_id", "latency_ms", "ttft_ms", "started_at", "finished_at"]


def texts(n: int) -> list[str]:
    return [f"row {i} asks about №{i % 11}" for i in range(n)]


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("MOCK_KEY", "mock-key")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def ray_run(path: Path, out: Path, server, **options):
    import runner.ray

    return runner.ray.run(str(path), "openai", "m", output=out, api_base=base_for(server, "openai"),
                          shards=4, api_key_env="MOCK_KEY", progress=False, **options)


# -- no Ray needed -----------------------------------------------------------------------------


def test_the_pool_never_leases_more_than_the_limit_and_a_dead_shards_share_comes_back() -> None:
    pool = PermitPool([(600.0, None)], lease_seconds=0.2)  # 10 requests/s
    first = pool.lease(0, "a")
    assert first[0] == pytest.approx(10.0) and first[1] == -1.0  # alone: all of it; tokens unlimited
    assert pool.lease(0, "b")[0] == pytest.approx(0.0)  # a holds it all until it renews
    assert pool.lease(0, "a")[0] == pytest.approx(5.0)  # a shrinks to its fair share ...
    assert pool.lease(0, "b")[0] == pytest.approx(5.0)  # ... and b takes what it left
    holders = pool.state()["models"][0]["holders"]
    assert sum(r for r, _ in holders.values()) <= 10.0 + 1e-9
    time.sleep(0.25)  # a dies: its lease runs out, and b gets its share back
    assert pool.lease(0, "b")[0] == pytest.approx(10.0)
    pool.release("b")
    assert pool.lease(0, "c", stated_rpm=300)[0] == pytest.approx(5.0)  # the server's lower limit wins


def test_two_attempts_of_a_shard_never_both_write(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "out.parquet")
    run_dir.parts.mkdir(parents=True)
    old, new = OwnerToken(run_dir.path), OwnerToken(run_dir.path)
    old.claim()
    run_dir.guard = old.check
    run_dir.append(pa.table({"_row": [0], "status": ["ok"]}))
    run_dir.flush()
    assert len(run_dir.readable_parts()) == 1
    new.claim()  # Ray started another attempt while the old one still runs
    run_dir.append(pa.table({"_row": [1], "status": ["ok"]}))
    with pytest.raises(RunnerError, match="another attempt of this shard"):
        run_dir.flush()
    assert len(run_dir.readable_parts()) == 1  # the old attempt wrote nothing more
    new.check()


# -- a local Ray cluster -----------------------------------------------------------------------


def test_four_shards_on_ray_equal_a_single_process_run(cluster, tmp_path: Path) -> None:
    server = mock()
    rows = texts(200)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in rows])
    whole = tmp_path / "whole.parquet"
    res = cli("run", str(path), "-o", str(whole), "--provider", "openai", "--model", "m",
              "--api-base", base_for(server, "openai"), env={"OPENAI_API_KEY": server.api_key})
    assert res.code == 0, res.stderr
    out = tmp_path / "ray.parquet"
    df = ray_run(path, out, server, concurrency=8)
    assert stats(server)["requests"] == 400
    assert df["output"].to_list() == [expected_reply(t) for t in rows]
    assert df.drop(VOLATILE, strict=False).equals(read_output(whole).drop(VOLATILE, strict=False))
    shards = sorted((tmp_path / "ray.parquet.shards").glob("shard-*-of-4.parquet"))
    assert len(shards) == 4
    # The shards' outputs merge again by hand; without one of them the merge is refused.
    res = cli("merge", *map(str, shards[:3]), "-o", str(tmp_path / "again.parquet"))
    assert res.code == 1 and "shard 3/4 not given" in res.stderr
    # The same call again resumes every shard: nothing is sent.
    ray_run(path, out, server, concurrency=8)
    assert stats(server)["requests"] == 400


def test_the_shards_together_run_at_the_limit(cluster, tmp_path: Path) -> None:
    limit = 40  # requests/s, the mock's bucket
    rows = 800
    server = mock(rate_limit_rps=limit)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts(rows)])
    df = ray_run(path, tmp_path / "out.parquet", server, concurrency=16, rpm=60 * limit)
    assert (df["status"] == "ok").all()
    s = stats(server)
    limited = s["by_status"].get("429", 0)
    span = (df["finished_at"].max() - df["started_at"].min()).total_seconds()  # type: ignore[operator]
    rate = rows / span
    print(f"\n4 shards, limit {limit}/s, --rpm {60 * limit}: {rate:.1f} requests/s over {span:.1f} s "
          f"({rate / limit:.1%} of the limit), {limited} 429s of {s['requests']} requests")
    assert rate >= 0.9 * limit
    assert limited <= 0.01 * s["requests"]


def test_a_shard_worker_killed_with_sigkill_is_retried_as_a_resume(cluster, tmp_path: Path) -> None:
    rows, concurrency = 1600, 16
    server = mock(latency_ms=40, latency_jitter_ms=40)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts(rows)])
    out = tmp_path / "out.parquet"
    victim = out.with_name(out.name + ".shards") / "shard-1-of-4.parquet"
    result: dict[str, object] = {}

    def drive() -> None:
        try:
            result["df"] = ray_run(path, out, server, concurrency=concurrency, rpm=60 * 150)
        except BaseException as err:  # noqa: BLE001 - reported below
            result["error"] = err

    driver = threading.Thread(target=drive)
    driver.start()
    parts = run_dir_for(victim) / "parts"
    deadline = time.monotonic() + 120
    while not (parts.is_dir() and any(parts.glob("part-*.parquet"))):
        assert time.monotonic() < deadline, "shard 1 wrote no part"
        time.sleep(0.05)
    time.sleep(0.5)
    pid = json.loads((run_dir_for(victim) / "owner").read_text())["pid"]
    sent_before = stats(server)["requests"]
    os.kill(pid, signal.SIGKILL)
    driver.join(timeout=240)
    assert not driver.is_alive()
    assert "error" not in result, result.get("error")
    df = result["df"]
    assert isinstance(df, pl.DataFrame) and df.height == rows and (df["status"] == "ok").all()
    assert df["id"].to_list() == [str(i) for i in range(rows)]
    new_pid = json.loads((run_dir_for(victim) / "owner").read_text())["pid"]
    resent = stats(server)["requests"] - rows
    print(f"\nkilled shard 1's worker (pid {pid}) after {sent_before} requests; Ray ran it again "
          f"(pid {new_pid}); re-sent {resent} requests (bound: its concurrency, {concurrency})")
    assert new_pid != pid
    assert 0 <= resent <= concurrency


def test_the_cli_runs_shards_on_ray_and_refuses_bad_input_in_one_line(cluster, tmp_path: Path) -> None:
    server = mock()
    rows = texts(60)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in rows])
    out = tmp_path / "out.parquet"
    args = ("run", str(path), "-o", str(out), "--provider", "openai", "--model", "m", "--api-base",
            base_for(server, "openai"), "--ray", "--shards", "2", "--rpm", "6000")
    res = cli(*args, env={"OPENAI_API_KEY": server.api_key})
    assert res.code == 0, res.stderr
    assert "shard 0/2: completed" in res.stderr and "wrote 60 rows" in res.stderr
    assert read_output(out)["output"].to_list() == [expected_reply(t) for t in rows]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"nothing": 1}])
    res = cli("run", str(bad), "-o", str(tmp_path / "bad.parquet"), "--provider", "mock", "--ray", "--shards", "2")
    assert res.code == 2 and "bad.jsonl:2" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert stats(server)["requests"] == 60
