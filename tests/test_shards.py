"""Shards (`run --shard I/N`) and `merge`: the documented hash, ids kept from the whole input,
a rerun taking the same rows, model matrices, a merge equal to a single-process run, and merges
refused (missing, duplicated, another run's shards)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from e2e import base_for, cli, expected_reply, mock, read_output, stats, write_jsonl

from runner.engine.shard import Shard, shard_of
from runner.schema import META_CONFIG, META_SUMMARY

#: Columns that differ between two runs of the same rows.
VOLATILE = ["run_id", "latency_ms", "ttft_ms", "started_at", "finished_at"]


def texts(n: int) -> list[str]:
    return [f"question {i} — №{i % 7}" for i in range(n)]


def run_openai(path: Path, out: Path, server, *extra: str):
    return cli("run", str(path), "-o", str(out), "--provider", "openai", "--model", "m",
               "--api-base", base_for(server, "openai"), "--concurrency", "8", *extra,
               env={"OPENAI_API_KEY": server.api_key})


def same_rows(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    drop = [c for c in VOLATILE if c in a.columns]
    return a.drop(drop).equals(b.drop(drop))


def test_the_hash_is_the_documented_one_and_stable() -> None:
    for row_id in ["0", "17", "q-17", "é", "日本"]:
        digest = hashlib.sha256(row_id.encode("utf-8")).digest()
        assert shard_of(row_id, 7) == int.from_bytes(digest[:8], "big") % 7
    # Fixed values: a change of the hash would move rows between shards of saved runs.
    assert [shard_of(str(i), 4) for i in range(8)] == [0, 1, 2, 3, 2, 3, 3, 2]
    assert shard_of("q-17", 3) == 1
    assert list(Shard(1, 4).mask(["0", "1", "2", "5"]).to_pylist()) == [False, True, False, False]


def test_shards_merge_into_the_single_process_output(tmp_path: Path) -> None:
    server = mock()
    rows = texts(120)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t, "n": i} for i, t in enumerate(rows)])
    whole = tmp_path / "whole.parquet"
    assert run_openai(path, whole, server).code == 0
    outs = []
    for i in range(3):
        out = tmp_path / f"s{i}.parquet"
        res = run_openai(path, out, server, "--shard", f"{i}/3")
        assert res.code == 0, res.stderr
        df = read_output(out)
        # Ids are positions in the whole input, and each shard has exactly its hash's rows.
        assert all(shard_of(x, 3) == i for x in df["id"].to_list())
        assert df["output"].to_list() == [expected_reply(rows[int(x)]) for x in df["id"].to_list()]
        outs.append(out)
    assert stats(server)["requests"] == 240
    merged = tmp_path / "merged.parquet"
    res = cli("merge", *map(str, outs), "-o", str(merged))
    assert res.code == 0, res.stderr
    assert "wrote 120 rows" in res.stderr
    assert same_rows(read_output(merged), read_output(whole))
    meta = pq.read_schema(merged).metadata
    record = json.loads(meta[META_CONFIG])
    assert record["options"]["shard"] is None and len(record["merged_from"]) == 3
    summary = json.loads(meta[META_SUMMARY])
    assert summary["models"]["m"]["requests"] == 120 and len(summary["shards"]) == 3
    res = cli("report", str(merged))
    assert res.code == 0, res.stderr
    # A rerun of a shard takes the same rows: all settled, nothing is sent again.
    assert run_openai(path, outs[1], server, "--shard", "1/3").code == 0
    assert stats(server)["requests"] == 240
    # Another --shard on a saved shard's output is refused.
    res = run_openai(path, outs[1], server, "--shard", "2/3")
    assert res.code == 2 and "differs in shard" in res.stderr


def test_a_model_matrix_shards_every_model_alike_and_ids_from_the_id_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": f"q{i}", "question": t, "answer": "x"} for i, t in enumerate(texts(40))])
    job = tmp_path / "job.toml"
    job.write_text(
        f'input = "{path}"\noutput = "{tmp_path / "whole.parquet"}"\n[request]\ntemplate = "{{{{ question }}}}"\n'
        '[[models]]\nprovider = "mock"\nmodel = "a"\n[[models]]\nprovider = "mock"\nmodel = "b"\n'
    )
    assert cli("run", "--job", str(job)).code == 0
    outs = []
    for i in range(2):
        out = tmp_path / f"s{i}.parquet"
        res = cli("run", "--job", str(job), "--shard", f"{i}/2", "-o", str(out))
        assert res.code == 0, res.stderr
        df = read_output(out)
        for model in ("a", "b"):
            ids = df.filter(pl.col("model") == model)["id"].to_list()
            assert ids and all(shard_of(x, 2) == i for x in ids)
        outs.append(out)
    merged = tmp_path / "merged.parquet"
    assert cli("merge", *map(str, outs), "-o", str(merged)).code == 0
    assert same_rows(read_output(merged), read_output(tmp_path / "whole.parquet"))


def test_merge_refuses_an_incomplete_or_doubled_set_and_writes_nothing(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts(60)])
    outs = []
    for i in range(3):
        out = tmp_path / f"s{i}.parquet"
        assert cli("run", str(path), "-o", str(out), "--provider", "mock", "--shard", f"{i}/3").code == 0
        outs.append(out)
    merged = tmp_path / "merged.parquet"
    res = cli("merge", str(outs[0]), str(outs[2]), "-o", str(merged))
    assert res.code == 1
    missing = [str(i) for i in range(60) if shard_of(str(i), 3) == 1]
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "shard 1/3 not given" in line and f"{len(missing)} input rows missing (ids {', '.join(missing[:10])}" in line
    assert not merged.exists()
    res = cli("merge", *map(str, outs), str(outs[1]), "-o", str(merged))
    assert res.code == 1 and "shard 1/3 is given twice" in res.stderr and not merged.exists()
    # Another input's shard: not one run.
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": t} for t in texts(61)])
    foreign = tmp_path / "foreign.parquet"
    assert cli("run", str(other), "-o", str(foreign), "--provider", "mock", "--shard", "1/3").code == 0
    res = cli("merge", str(outs[0]), str(foreign), str(outs[2]), "-o", str(merged))
    assert res.code == 2 and "another input" in res.stderr and not merged.exists()
    res = cli("merge", str(tmp_path / "nope.parquet"), "-o", str(merged))
    assert res.code == 2 and "nope.parquet: no such file" in res.stderr


def test_limit_counts_input_rows_then_shards_them(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts(50)])
    outs = []
    for i in range(2):
        out = tmp_path / f"s{i}.parquet"
        assert cli("run", str(path), "-o", str(out), "--provider", "mock", "--limit", "20", "--shard", f"{i}/2").code == 0
        outs.append(out)
    ids = sorted(int(x) for out in outs for x in read_output(out)["id"].to_list())
    assert ids == list(range(20))
    assert cli("merge", *map(str, outs), "-o", str(tmp_path / "m.parquet")).code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard", "4/4"], "--shard: I must be 0 to 3"),
        (["--shard", "1-4"], "--shard: expected I/N"),
        (["--shard", "0/0"], "--shard: N must be at least 1"),
        (["--shard", "0/2", "--batch-api"], "--shard: a Batch API run"),
        (["--shards", "4"], "--ray-address and --shards apply to Ray runs: add --ray"),
        (["--ray"], "--ray: give the number of shards with --shards N"),
        (["--ray", "--shards", "0"], "--shards: must be at least 1"),
        (["--ray", "--shards", "2", "--shard", "0/2"], "a --ray run makes its shards itself"),
    ],
)
def test_bad_shard_flags_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    res = cli("run", str(path), "-o", str(tmp_path / "o.parquet"), "--provider", "mock", *args)
    assert res.code == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
