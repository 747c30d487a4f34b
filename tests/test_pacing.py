"""Pacing end to end (issue 12): the real CLI against the real mock server on loopback, with the
rate-limit headers, 429s and overloads the providers send."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tests.e2e import base_for, cli, mock, read_output, stats, write_jsonl


def run(path: Path, out: Path, server, *extra: str, provider: str = "openai") -> tuple[int, str]:
    res = cli(
        "run", str(path), "-o", str(out), "--provider", provider, "--model", "m",
        "--api-base", base_for(server, provider), *extra, env={"OPENAI_API_KEY": server.api_key,
                                                            "ANTHROPIC_API_KEY": server.api_key},
    )
    return res.code, res.stderr


def rows(tmp_path: Path, n: int, marker: str = "") -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i}{marker}"} for i in range(n)])


def test_a_stated_limit_is_kept_without_a_429(tmp_path: Path) -> None:
    # 20 requests/s, stated in the headers (1,200/min); 16 at once fit the first second's burst,
    # then the run must pace itself: unpaced, 70 rows at zero latency would draw ~40 429s.
    server = mock(rate_limit_rps=20)
    code, err = run(rows(tmp_path, 70), tmp_path / "out.parquet", server, "--concurrency", "16")
    assert code == 0, err
    assert stats(server)["by_status"] == {"200": 70}
    assert "pacing: paced to the server's stated limit, 1,200 requests/min" in err


def test_an_unstated_limit_is_learned_and_no_row_is_lost(tmp_path: Path) -> None:
    server = mock(rate_limit_rps=25, rate_limit_headers=False)
    code, err = run(rows(tmp_path, 150), tmp_path / "out.parquet", server, "--concurrency", "16",
                    "--max-retries", "1")
    # Rate-limited attempts do not use up --max-retries while the server keeps serving.
    assert code == 0, err
    s = stats(server)
    assert s["by_status"]["200"] == 150
    # Unpaced, the run would draw a 429 for nearly every row past the first burst.
    assert s["by_status"].get("429", 0) < 60, s
    assert "learned from the server's 429s" in err


def test_an_overload_episode_ends_no_row_as_an_error(tmp_path: Path) -> None:
    # Two seconds of Anthropic 529s early in the run; one retry allowed per row.
    server = mock(overload=[[0.3, 2.0]], latency_ms=20)
    out = tmp_path / "out.parquet"
    code, err = run(rows(tmp_path, 300), out, server, "--concurrency", "8", "--max-retries", "1",
                    provider="anthropic")
    assert code == 0, err
    s = stats(server)
    assert s["by_status"].get("529", 0) > 8
    df = read_output(out)
    assert (df["status"] == "ok").all()
    assert df["attempts"].max() > 2  # some rows waited out the episode


def test_rpm_spaces_the_first_requests_too_and_started_at_is_the_first_attempt(tmp_path: Path) -> None:
    server = mock()
    out = tmp_path / "out.parquet"
    code, err = run(rows(tmp_path, 5), out, server, "--concurrency", "5", "--rpm", "120")
    assert code == 0, err
    started = read_output(out).sort("started_at")["started_at"].cast(pl.Int64).to_list()  # µs
    gaps = [b - a for a, b in zip(started, started[1:])]
    # 120/min: one every 0.5 s from the first request on (two left together before), and each
    # row's started_at is when it was sent, not when it began waiting for its turn.
    assert all(g >= 495_000 for g in gaps), gaps


def test_fail_fast_stops_when_the_first_rows_all_fail_alike(tmp_path: Path) -> None:
    server = mock()
    path = rows(tmp_path, 200, marker=" [[bad]]")
    code, err = run(path, tmp_path / "out.parquet", server, "--concurrency", "2")
    assert code == 1
    assert "the first 5 rows all failed with the same error" in err and "--no-fail-fast" in err
    assert "Traceback" not in err
    assert stats(server)["requests"] <= 5 + 2
    # --no-fail-fast sends every row anyway.
    other = mock()
    code, err = run(path, tmp_path / "all.parquet", other, "--concurrency", "2", "--no-fail-fast")
    assert code == 1
    assert stats(other)["requests"] == 200


def test_a_rerun_with_settled_rows_sends_its_failed_rows_even_if_they_fail_alike(tmp_path: Path) -> None:
    # Half the rows fail alike; the rerun sends only those. Its model and key are known to work
    # (the other half is ok), so fail fast must not stop it after five.
    server = mock()
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i}" + (" [[bad]]" if i % 2 else "")} for i in range(20)])
    out = tmp_path / "out.parquet"
    code, err = run(path, out, server, "--concurrency", "1", "--no-fail-fast")
    assert code == 1 and stats(server)["requests"] == 20, err
    code, err = run(path, out, server, "--concurrency", "1")
    assert code == 1
    assert "--no-fail-fast" not in err
    assert stats(server)["requests"] == 30
