"""`runner.run`: lists, DataFrames and paths in, a DataFrame with the output schema out."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import polars as pl
import pytest
from e2e import base_for, expected_reply, mock, write_jsonl

import runner
from runner.errors import InputError, RunnerError
from runner.schema import RESULT_FIELDS


def test_list_of_dicts_on_the_mock_provider() -> None:
    rows = [{"question": f"what is {i}?", "answer": str(i)} for i in range(30)]
    df = runner.run(rows, provider="mock", template="Q: {{ question }}", concurrency=4, progress=False)
    assert isinstance(df, pl.DataFrame) and df.height == 30
    assert df["output"].to_list() == [expected_reply(f"Q: what is {i}?") for i in range(30)]
    assert df["question"].to_list() == [r["question"] for r in rows]
    assert {"id", "status", "model", "provider", "run_id", "request_hash"} | {f.name for f in RESULT_FIELDS} <= set(df.columns)
    assert (df["status"] == "ok").all()


def test_dataframe_against_a_real_endpoint_with_output_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = mock()
    monkeypatch.setenv("ANTHROPIC_API_KEY", server.api_key)
    frame = pl.DataFrame({"id": ["a", "b"], "messages": [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]]})
    out = tmp_path / "out.parquet"
    df = runner.run(frame, provider="anthropic", model="m", api_base=base_for(server, "anthropic"), stream=True, output=out, progress=False)
    assert df["id"].to_list() == ["a", "b"] and df["output"].to_list() == ["Echo: hi", "Echo: yo"]
    assert out.exists() and pl.read_parquet(out).height == 2
    summary = json.loads(pl.read_parquet_metadata(out)["prompt_runner.summary"])
    assert summary["models"]["m"]["latency_count"] == 2 and "rows_per_s" in summary["models"]["m"]


def test_path_input_and_option_checks(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"p {i}"} for i in range(5)])
    df = runner.run(path, provider="mock", limit=3, progress=False)
    assert df.height == 3
    with pytest.raises(TypeError, match="concurency"):
        runner.run(path, provider="mock", concurency=3)
    with pytest.raises(InputError):
        runner.run(path, provider="mock", concurrency=0, progress=False)


def test_a_wrong_key_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    server = mock(api_key="right")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-0123456789abcdef")
    with pytest.raises(RunnerError, match="auth") as info:
        runner.run([{"prompt": "x"}] * 3, provider="openai", model="m", api_base=base_for(server, "openai"), progress=False)
    assert "0123456789" not in str(info.value)


def test_works_inside_a_running_event_loop() -> None:
    async def notebook_cell() -> tuple[pl.DataFrame, pl.DataFrame]:
        assert asyncio.get_running_loop().is_running()
        df = runner.run([{"prompt": "inside a loop"}], provider="mock", progress=False)
        other = await runner.arun([{"prompt": "in a thread"}], provider="mock", progress=False)
        return df, other

    df, other = asyncio.run(notebook_cell())
    assert df["output"].to_list() == [expected_reply("inside a loop")]
    assert other["output"].to_list() == [expected_reply("in a thread")]
