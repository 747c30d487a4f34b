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


def ray_run(path: Path, out: Path, server, model: str = "m", progress: bool = False, **options):
    import runner.ray

    return runner.ray.run(str(path), "openai", model, output=out, api_base=base_for(server, "openai"),
                          shards=4, api_key_env="MOCK_KEY", progress=progress, **options)


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


def test_the_pool_learns_a_limit_nobody_states_from_every_shards_answers() -> None:
    pool = PermitPool([(None, None)])
    t = 1_000_000.0  # the shards' clock (seconds): reports carry their own times
    holders = "abcd"
    assert pool.lease(0, "a", until=t)[0] == -1.0  # no limit known: unpaced

    def renew(answers: int, limited: int, last: tuple[int, int] | None = None) -> list[float]:
        """Every holder renews a quarter second later with what it counted meanwhile (the last
        one: `last`, if given)."""
        nonlocal t
        t += 0.25
        counts = [(answers, limited)] * 3 + [last or (answers, limited)]
        return [pool.lease(0, h, answers=[(t - 0.2, *c)], until=t)[0] for h, c in zip(holders, counts)]

    # 15 answers a quarter second each, 10 of them 429s: the server accepts 4 x 5 a quarter
    # second, 80 a second, however many the shards send.
    for _ in range(12):
        renew(15, 10)
        learned = pool.state()["models"][0]["learned_rps"]
        if learned is not None:
            break
    assert learned is not None and 0.8 * 80 <= learned <= 80, learned
    # The last holder's report completed the bin that cut the pace, and it got its lease at the
    # new pace; the others learn of the cut at their next renewal, and the 429s they report then
    # were taken on the old pace: left out, they do not trim the pace the cut set.
    renew(15, 10, last=(10, 0))
    paces = []
    for _ in range(12):  # past the cut's 2 s test
        shares = renew(10, 0)
        paces.append(pool.state()["models"][0]["learned_rps"])
    assert min(paces) >= learned, paces
    assert sum(shares) <= pool.state()["models"][0]["learned_rps"] + 1e-9 and min(shares) > 0
    # A limit the server states takes precedence over the learned one.
    assert pool.lease(0, "a", stated_rpm=600)[0] <= 10.0


def test_two_attempts_of_a_shard_never_both_write(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "out.parquet")
    run_dir.parts.mkdir(parents=True)
    old, new = OwnerToken(run_dir.path), OwnerToken(run_dir.path)
    old.claim()
    run_dir.guard = old.check
    run_dir.append(pa.table({"_row": [0], "status": ["ok"]}))
    run_dir.flush()
    assert len(run_dir.readable_parts()) == 1
    # Ray starts another attempt while the old one is writing its next part: the old one checks
    # once the part is durable under a temporary name, just before the rename, and drops it.
    pending: list[list[str]] = []

    def check_late() -> None:
        pending.append([p.name for p in run_dir.parts.iterdir() if ".tmp-" in p.name])
        new.claim()
        old.check()

    run_dir.guard = check_late
    run_dir.append(pa.table({"_row": [1], "status": ["ok"]}))
    with pytest.raises(RunnerError, match="another attempt of this shard"):
        run_dir.flush()
    assert [len(tmp) for tmp in pending] == [1] and pending[0][0].startswith(".part-")  # written before the check
    assert len(run_dir.readable_parts()) == 1  # the old attempt put nothing more in place ...
    assert not [p for p in run_dir.parts.iterdir() if ".tmp-" in p.name]  # ... nor left anything
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


def run_against_a_limit(tmp_path: Path, limit: int, rows: int, label: str, stated: bool = True,
                        **options) -> tuple[float, int, int]:
    """4 shards against the mock's bucket of `limit` requests/s: (requests/s, 429s, requests),
    counted on the server."""
    server = mock(rate_limit_rps=limit, rate_limit_headers=stated)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts(rows)])
    df = ray_run(path, tmp_path / "out.parquet", server, concurrency=16, **options)
    assert (df["status"] == "ok").all()
    s = stats(server)
    limited = s["by_status"].get("429", 0)
    span = (df["finished_at"].max() - df["started_at"].min()).total_seconds()  # type: ignore[operator]
    rate = rows / span
    print(f"\n4 shards, {label}: {rate:.1f} requests/s over {span:.1f} s ({rate / limit:.1%} of the limit), "
          f"{limited} 429s of {s['requests']} requests ({limited / s['requests']:.1%})")
    return rate, limited, s["requests"]


def test_the_shards_together_run_at_the_limit(cluster, tmp_path: Path) -> None:
    limit = 40
    rate, limited, requests = run_against_a_limit(tmp_path, limit, 800, "limit 40/s, --rpm 2400", rpm=60 * limit)
    assert rate >= 0.9 * limit
    assert limited <= 0.01 * requests


def test_the_shards_learn_a_limit_the_server_does_not_state_together(cluster, tmp_path: Path, capfd) -> None:
    # No --rpm and no rate-limit headers: the pace is learned from the 429s of all the shards at
    # once (the pool's learner), not by each shard from its own, which left 4 shards at a fifth
    # to a third of the limit.
    limit = 40
    rate, limited, requests = run_against_a_limit(tmp_path, limit, 1200, "unstated limit 40/s, no --rpm", stated=False,
                                                  progress=True)
    captured = capfd.readouterr()
    print(captured.out, end="")  # the figures, for `pytest -s`
    assert "requests/s for the cluster, learned from the server's 429s" in captured.err
    assert rate >= 0.85 * limit
    # 429s: the first second and a half, while the 4 windows of 16 (and their retries) go
    # unpaced and the pace is being learned, then the probes above the limit, which the pool
    # stops about half a second later than a single run would: 10-13 % in this session's runs,
    # where one process with a window of 64 had 6.2 %.
    assert limited <= 0.2 * requests


def test_max_cost_is_the_runs_budget_not_a_share_per_shard(cluster, tmp_path: Path) -> None:
    from runner.engine.shard import shard_of

    # Shard 0's rows are long (~$0.0002 each with gpt-4o-mini's prices), the others' short
    # (~$0.000004): a fixed quarter of the budget would stop shard 0 after a handful of rows
    # while the others leave theirs unspent. One budget lets shard 0 spend what they leave.
    server = mock(latency_ms=100)
    long = " ".join(["word"] * 300)
    rows = [{"id": f"q{i}", "prompt": f"{long} {i}" if shard_of(f"q{i}", 4) == 0 else f"short {i}"} for i in range(200)]
    expensive = sum(1 for r in rows if shard_of(r["id"], 4) == 0)
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    budget = 0.006
    with pytest.raises(RunnerError, match="budget"):
        ray_run(path, out, server, concurrency=2, model="gpt-4o-mini", max_cost=budget)
    shards = sorted((tmp_path / "out.parquet.shards").glob("shard-*-of-4.parquet"))
    df = pl.concat([read_output(p) for p in shards], how="diagonal_relaxed")
    spent = df["cost_usd"].sum()
    long_done = df.filter(pl.col("prompt").str.len_chars() > 1000).height
    print(f"\nbudget ${budget}: ${spent:.5f} spent, {long_done} of {expensive} long rows, {df.height} rows")
    assert long_done >= 15  # a quarter of the budget pays for about 7
    # Held to the budget, give or take the requests on the wire when it was reached.
    assert 0.8 * budget <= spent <= budget + 4 * 2 * 0.00025


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
