"""Tests for runner.engine.progress: plain status lines, the tty bar, and the end summary numbers."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest

from runner.engine.progress import Progress, format_count, format_duration, pace_text, summary


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TtyBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_mode_writes_status_every_interval_and_at_exit() -> None:
    clock, out = FakeClock(), io.StringIO()
    with Progress(5000, "prompt-runner", out, interval_plain=10.0, clock=clock) as p:
        for second in range(1, 25):  # ~5 polls per second would also print only every 10 s
            clock.now = 1000.0 + second
            p.update(
                done=50 * second,
                ok=49 * second,
                failed=second,
                retrying=3,
                prompt_tokens=1000 * second,
                completion_tokens=500 * second,
            )
    lines = out.getvalue().splitlines()
    assert lines == [
        "[prompt-runner] 500/5000 rows (10%) ok=490 failed=10 retrying=3 50.0 rows/s 1.5k tok/s elapsed 10s eta 1m30s",
        "[prompt-runner] 1000/5000 rows (20%) ok=980 failed=20 retrying=3 50.0 rows/s 1.5k tok/s elapsed 20s eta 1m20s",
        "[prompt-runner] 1200/5000 rows (24%) ok=1176 failed=24 retrying=3 50.0 rows/s 1.5k tok/s elapsed 24s eta 1m16s",
    ]
    assert "\x1b" not in out.getvalue()


def test_plain_mode_before_any_progress() -> None:
    clock, out = FakeClock(), io.StringIO()
    with Progress(0, "x", out, clock=clock):
        pass
    assert out.getvalue() == "[x] 0/0 rows ok=0 failed=0 retrying=0 0.0 rows/s 0 tok/s elapsed 0s eta ?\n"


def test_update_from_stats_dict() -> None:
    clock, out = FakeClock(), io.StringIO()
    with Progress(10, "x", out, interval_plain=0.0, clock=clock) as p:
        clock.now += 2
        p.update_from({"done": 4, "ok": 3, "failed": 1, "prompt_tokens": 7, "extra": 99})
    assert "4/10 rows (40%) ok=3 failed=1 retrying=0 2.0 rows/s" in out.getvalue().splitlines()[0]


def test_tty_mode_draws_rich_bar() -> None:
    out = TtyBuffer()
    with Progress(100, "bar-label", out) as p:
        p.update(40, 39, 1, 2, 100, 50)
    text = out.getvalue()
    assert "bar-label" in text and "ok=39" in text and "failed=1" in text
    assert "[bar-label]" not in text  # not the plain format


def test_formatters() -> None:
    assert [format_count(x) for x in (0, 950, 15230, 3_400_000, 2.5)] == ["0", "950", "15.2k", "3.4M", "2.5"]
    assert [format_duration(x) for x in (0, 18.4, 185, 3720)] == ["0s", "18s", "3m05s", "1h02m"]


RESULTS = {
    "status": ["ok", "ok", "error", "ok", "error", "error", "ok"],
    "error_type": [None, None, "timeout", None, "rate_limited", "timeout", None],
    "prompt_tokens": [10, 20, None, 30, 0, None, 40],
    "completion_tokens": [1, 2, None, 3, 0, None, 4],
    "latency_ms": [100.0, 200.0, 60000.0, 300.0, None, 60000.0, 400.0],
}


def test_summary_numbers_on_known_table() -> None:
    text = summary(pa.table(RESULTS), elapsed_s=3.5)
    assert text.splitlines() == [
        "rows: 7 in 4s (2.0 rows/s)",
        "status: ok=4 error=3",
        "errors: timeout=2 rate_limited=1",
        "tokens: prompt=100 completion=10 total=110",
        # ok latencies 100..400: p50 = 250, p95 = 385 (linear interpolation)
        "latency: p50=250 ms p95=385 ms (ok rows)",
    ]


def test_summary_accepts_list_of_dicts() -> None:
    rows = [dict(zip(RESULTS, values)) for values in zip(*RESULTS.values())]
    assert summary(rows, 3.5) == summary(pa.table(RESULTS), 3.5)


def test_summary_empty_run() -> None:
    assert summary([], 0.0).splitlines() == [
        "rows: 0 in 0s (0.0 rows/s)",
        "status: none",
        "tokens: prompt=0 completion=0 total=0",
    ]


@pytest.mark.parametrize("n", [1, 3])
def test_summary_all_ok_has_no_error_line(n: int) -> None:
    table = pa.table(
        {
            "status": ["ok"] * n,
            "error_type": pa.nulls(n, pa.string()),
            "prompt_tokens": [5] * n,
            "completion_tokens": [1] * n,
            "latency_ms": [10] * n,
        }
    )
    text = summary(table, 1.0)
    assert "errors:" not in text and f"status: ok={n}" in text and "p50=10 ms" in text


def test_the_pace_and_where_it_comes_from_are_on_the_status_line() -> None:
    assert pace_text({"pace_source": None, "pace_rps": None}) is None
    assert pace_text({"pace_source": "stated", "pace_rps": 40.0}) == (
        "paced to the server's stated limit, 2,400 requests/min"
    )
    assert pace_text({"pace_source": "learned", "pace_rps": 47.36}) == (
        "paced at 47.4 requests/s, learned from the server's 429s"
    )
    clock, out = FakeClock(), io.StringIO()
    with Progress(10, "m", out, clock=clock) as p:
        p.pace = pace_text({"pace_source": "stated", "pace_rps": 40.0})
        p.update(done=10, ok=10, failed=0, retrying=0, prompt_tokens=0, completion_tokens=0)
    assert out.getvalue().rstrip().endswith("| paced to the server's stated limit, 2,400 requests/min")
