"""End to end: `prompt-runner run` as a subprocess against the mock server on loopback."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from e2e import base_for, cli, expected_reply, mock, provider_env, read_output, stats, write_jsonl

ROWS = 2000
WORDS = ["alpha", "beta", "gamma", "delta", "épsilon", "ζῆτα", "η", "theta", "数据", "kappa"]


def prompt_text(i: int) -> str:
    # Varied lengths and non-ASCII text; every row's text is distinct.
    n = 1 + (i * 7) % 23
    return f"row {i}: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))


def make_input(tmp: Path, kind: str, rows: int = ROWS) -> tuple[list[str], list[str], Path, list[str]]:
    """Writes one input of `kind`; returns (ids, last user texts, path, extra CLI args)."""
    ids = [f"r{i:05d}" for i in range(rows)]
    texts = [prompt_text(i) for i in range(rows)]
    args = ["--id-column", "key"]
    if kind == "prompt-jsonl":
        path = write_jsonl(tmp / "in.jsonl", [{"key": k, "prompt": t} for k, t in zip(ids, texts)])
    elif kind == "prompt-parquet":
        path = tmp / "in.parquet"
        pl.DataFrame({"key": ids, "prompt": texts, "n": list(range(rows))}).write_parquet(path, row_group_size=300)
    elif kind == "messages-jsonl-gz":
        plain = write_jsonl(
            tmp / "plain.jsonl",
            [
                {"key": k, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": t}]}
                for k, t in zip(ids, texts)
            ],
        )
        path = tmp / "in.jsonl.gz"
        with open(plain, "rb") as src, gzip.open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    elif kind == "template-parquet":
        path = tmp / "in.parquet"
        pl.DataFrame({"key": ids, "question": texts}).write_parquet(path, row_group_size=500)
        args += ["--template", "Q: {{ question }}"]
        texts = [f"Q: {t}" for t in texts]
    else:
        raise AssertionError(kind)
    return ids, texts, path, args


@pytest.mark.parametrize(
    "provider,stream,kind",
    [
        ("openai", False, "prompt-jsonl"),
        ("openai", True, "messages-jsonl-gz"),
        ("anthropic", False, "template-parquet"),
        ("anthropic", True, "prompt-parquet"),
        ("openai", False, "template-parquet"),
        ("anthropic", True, "messages-jsonl-gz"),
    ],
)
def test_every_row_gets_its_own_answer(tmp_path: Path, provider: str, stream: bool, kind: str) -> None:
    server = mock()
    ids, texts, path, args = make_input(tmp_path, kind)
    out = tmp_path / "out.parquet"
    flags = ["--stream"] if stream else []
    res = cli(
        "run", str(path), "-o", str(out), "--provider", provider, "--model", "test-model",
        "--api-base", base_for(server, provider), "--concurrency", "64", *flags, *args,
        env=provider_env(server, provider),
    )
    assert res.code == 0, res.stderr
    df = read_output(out)
    assert df.height == ROWS
    assert df["id"].to_list() == ids  # input order, each row exactly once
    assert df["status"].unique().to_list() == ["ok"]
    assert df["output"].to_list() == [expected_reply(t) for t in texts]
    assert (df["provider"] == provider).all() and (df["model"] == "test-model").all()
    assert df["prompt_tokens"].min() > 0 and df["completion_tokens"].min() > 0
    assert df["finish_reason"].unique().to_list() == (["stop"] if provider == "openai" else ["end_turn"])
    assert df["ttft_ms"].null_count() == (0 if stream else ROWS)
    assert df["started_at"].null_count() == 0 and df["request_hash"].n_unique() == ROWS
    assert df["run_id"].n_unique() == 1
    s = stats(server)
    assert s["requests"] == ROWS and s["streamed"] == (ROWS if stream else 0)


def test_input_columns_are_kept_unchanged(tmp_path: Path) -> None:
    server = mock()
    _, texts, path, args = make_input(tmp_path, "prompt-parquet", rows=50)
    out = tmp_path / "out.parquet"
    res = cli(
        "run", str(path), "-o", str(out), "--provider", "openai", "--model", "m",
        "--api-base", base_for(server, "openai"), *args, env=provider_env(server, "openai"),
    )
    assert res.code == 0, res.stderr
    df = read_output(out)
    assert df["prompt"].to_list() == texts and df["n"].to_list() == list(range(50))
    assert df.columns[:4] == ["id", "key", "prompt", "n"]
    assert df.columns[-4:] == ["cost_usd", "request_hash", "run_id", "cache_hit"]


def test_an_input_column_typed_differently_in_two_chunks_becomes_text(tmp_path: Path) -> None:
    # JSONL is read 8,192 rows at a time: `n` is a number in the first chunk, text in the second,
    # and results of both chunks meet in one part file.
    server = mock()
    rows = [{"prompt": f"q{i}", "n": i if i < 8192 else f"s{i}"} for i in range(9000)]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    res = cli(
        "run", str(path), "-o", str(out), "--provider", "openai", "--model", "m",
        "--api-base", base_for(server, "openai"), "--concurrency", "64", env=provider_env(server, "openai"),
    )
    assert res.code == 0, res.stderr
    df = read_output(out)
    assert df["n"].to_list() == [str(r["n"]) for r in rows]


def test_transient_faults_end_ok_and_bad_requests_are_tried_once(tmp_path: Path) -> None:
    server = mock(fault_rate=0.3, seed=11)
    rows = 1500
    bad = {i for i in range(0, rows, 75)}  # 20 rows
    texts = [prompt_text(i) + (" [[bad]]" if i in bad else "") for i in range(rows)]
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts])
    out = tmp_path / "out.parquet"
    res = cli(
        "run", str(path), "-o", str(out), "--provider", "openai", "--model", "m", "--stream",
        "--api-base", base_for(server, "openai"), "--concurrency", "32", "--max-retries", "12",
        env=provider_env(server, "openai"),
    )
    assert res.code == 1, res.stderr  # the bad rows failed
    df = read_output(out)
    assert df.height == rows and df["id"].to_list() == [str(i) for i in range(rows)]
    good = df.filter(~pl.col("id").cast(pl.Int64).is_in(list(bad)))
    assert good["status"].unique().to_list() == ["ok"]
    assert good["output"].to_list() == [expected_reply(texts[int(i)]) for i in good["id"]]
    failed = df.filter(pl.col("id").cast(pl.Int64).is_in(list(bad)))
    assert failed["status"].unique().to_list() == ["error"]
    assert failed["error_type"].unique().to_list() == ["bad_request"]
    assert failed["http_status"].unique().to_list() == [400]
    s = stats(server)
    assert s["by_status"]["400"] == len(bad)  # each permanent 400 was sent exactly once
    injected = sum(v for k, v in s["by_status"].items() if k not in ("200", "400"))
    assert injected > 0.2 * rows  # the faults really happened
    assert df["attempts"].max() > 1


def test_cut_streams_are_never_ok(tmp_path: Path) -> None:
    server = mock(fault_rate=0.5, faults=["cut"], seed=3)
    rows = 400
    texts = [prompt_text(i) for i in range(rows)]
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts])
    out = tmp_path / "out.parquet"
    res = cli(
        "run", str(path), "-o", str(out), "--provider", "anthropic", "--model", "m", "--stream",
        "--api-base", base_for(server, "anthropic"), "--max-retries", "0",
        env=provider_env(server, "anthropic"),
    )
    assert res.code == 1, res.stderr
    df = read_output(out)
    cut = stats(server)["by_status"].get("cut", 0)
    assert cut > 0
    errors = df.filter(pl.col("status") == "error")
    assert errors.height == cut
    assert errors["error_type"].unique().to_list() == ["incomplete_stream"]
    assert errors["output"].null_count() == cut
    ok = df.filter(pl.col("status") == "ok")
    assert ok["output"].to_list() == [expected_reply(texts[int(i)]) for i in ok["id"]]


def test_cut_streams_are_retried_to_completion(tmp_path: Path) -> None:
    server = mock(fault_rate=0.4, faults=["cut", "reset"], seed=5)
    texts = [prompt_text(i) for i in range(300)]
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts])
    out = tmp_path / "out.parquet"
    res = cli(
        "run", str(path), "-o", str(out), "--provider", "openai", "--model", "m", "--stream",
        "--api-base", base_for(server, "openai"), "--max-retries", "15",
        env=provider_env(server, "openai"),
    )
    assert res.code == 0, res.stderr
    df = read_output(out)
    assert df["output"].to_list() == [expected_reply(t) for t in texts]
    assert stats(server)["by_status"].get("cut", 0) > 0


def test_limit_and_dry_run(tmp_path: Path) -> None:
    server = mock()
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": prompt_text(i)} for i in range(100)])
    out = tmp_path / "out.parquet"
    dry = cli(
        "run", str(path), "-o", str(out), "--provider", "openai", "--model", "m", "--dry-run",
        "--api-base", base_for(server, "openai"), env=provider_env(server, "openai"),
    )
    assert dry.code == 0, dry.stderr
    assert "100 rows" in dry.stderr and prompt_text(0) in dry.stderr
    assert stats(server)["requests"] == 0 and not out.exists()
    res = cli(
        "run", str(path), "-o", str(out), "--provider", "openai", "--model", "m", "--limit", "10",
        "--max-tokens", "3", "--api-base", base_for(server, "openai"), env=provider_env(server, "openai"),
    )
    assert res.code == 0, res.stderr
    df = read_output(out)
    assert df.height == 10 and stats(server)["requests"] == 10
    assert df["output"].to_list() == [expected_reply(prompt_text(i), 3) for i in range(10)]
    assert df["finish_reason"].unique().to_list() == ["length"]


def test_mock_provider_needs_no_key(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": prompt_text(i)} for i in range(20)])
    out = tmp_path / "out.parquet"
    res = cli("run", str(path), "-o", str(out), "--provider", "mock", env={"OPENAI_API_KEY": ""})
    assert res.code == 0, res.stderr
    df = read_output(out)
    assert df["output"].to_list() == [expected_reply(prompt_text(i)) for i in range(20)]
    assert (df["provider"] == "mock").all()


def test_rerun_sends_only_rows_not_yet_ok(tmp_path: Path) -> None:
    server = mock()
    texts = [prompt_text(i) + (" [[bad]]" if i % 10 == 0 else "") for i in range(100)]
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": t} for t in texts])
    out = tmp_path / "out.parquet"
    args = ("run", str(path), "-o", str(out), "--provider", "openai", "--model", "m", "--api-base", base_for(server, "openai"))
    first = cli(*args, env=provider_env(server, "openai"))
    assert first.code == 1
    assert stats(server)["requests"] == 100
    second = cli(*args, env=provider_env(server, "openai"))
    assert second.code == 1
    assert stats(server)["requests"] == 110  # only the 10 failed rows again
    df = read_output(out)
    assert df.height == 100 and df["id"].to_list() == [str(i) for i in range(100)]


def test_the_cli_gives_arrow_the_system_allocator_unless_the_user_chose_one() -> None:
    probe = "import runner.cli, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    chosen = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == "system"
    kept = subprocess.run([sys.executable, "-c", probe], env={**env, "ARROW_DEFAULT_MEMORY_POOL": "mimalloc"},
                          capture_output=True, text=True, check=True)
    assert kept.stdout.strip() == "mimalloc"

