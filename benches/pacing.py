"""Pacing benchmarks (issue 12): the six scenarios of a run meeting rate limits and faults,
each against a real server on loopback, with its figures and targets printed in one table.

    .venv/bin/python benches/pacing.py              # all six (about 8 minutes; LiteLLM ~4 of them)
    .venv/bin/python benches/pacing.py --skip-litellm
    .venv/bin/python benches/pacing.py --only 1,3

1. scattered faults (30 % of requests: 429/500/502/503/529/reset/cut), next to the official SDK
2. a limit the server states in headers, no --rpm
3. a limit it does not state (429 + Retry-After only), without and with --rpm
4. a stated limit that halves for ten seconds and comes back
5. a five-second overload episode (Anthropic 529s) in the middle of a run
6. behind a LiteLLM proxy with a 60 requests/minute calendar-window limit, no --rpm

The mock server and the LiteLLM proxy run in their own processes, on the same 2 cores as the
client: figures are what this machine gives, not a network's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BIN, HERE, MockProcess, make_dataset, measured  # noqa: E402

RESULTS: list[tuple[str, str, str, bool]] = []


def record(scenario: str, figure: str, target: str, met: bool) -> None:
    RESULTS.append((scenario, figure, target, met))
    print(f"  {'met ' if met else 'MISS'}  {scenario}: {figure}  (target: {target})", flush=True)


def run_pr(data: Path, out: Path, base: str, *flags: str, provider: str = "openai", key: str = "mock-key",
           model: str = "bench") -> tuple[float, dict]:
    """Runs prompt-runner; returns wall seconds and the output's columns as lists."""
    env = {"OPENAI_API_KEY": key, "ANTHROPIC_API_KEY": key}
    cmd = [str(BIN / "prompt-runner"), "run", str(data), "-o", str(out), "--provider", provider,
           "--model", model, "--api-base", base, *flags]
    shutil.rmtree(out.with_name(out.name + ".run"), ignore_errors=True)
    out.unlink(missing_ok=True)
    m = measured("prompt-runner", 0, cmd, env)
    cols = ["status", "attempts", "error_type", "started_at", "finished_at", "output"]
    table = pq.read_table(out, columns=cols).to_pydict() if out.exists() else {c: [] for c in cols}
    if not m.ok:
        print(f"    prompt-runner: {m.note}", flush=True)
    return m.wall, table


def seconds(ts: datetime) -> float:
    return ts.replace(tzinfo=timezone.utc).timestamp() if ts.tzinfo is None else ts.timestamp()


def per_second(table: dict) -> tuple[float, list[int]]:
    """Rows finished in each second from the first request's start."""
    t0 = min(seconds(t) for t in table["started_at"])
    counts = Counter(int(seconds(t) - t0) for t in table["finished_at"])
    return t0, [counts.get(i, 0) for i in range(max(counts) + 1)]


def on_mock(server_flags: list[str], data: Path, out: Path, *flags: str, provider: str = "openai") -> tuple[float, dict, dict]:
    """Runs prompt-runner against a fresh mock server; wall seconds, output columns, server stats."""
    server = MockProcess(*server_flags)
    base = f"{server.url}/v1" if provider == "openai" else server.url
    try:
        wall, table = run_pr(data, out, base, *flags, provider=provider)
        return wall, table, server.stats()
    finally:
        server.stop()


def share_429(stats: dict) -> tuple[int, int]:
    return stats["by_status"].get("429", 0), stats["requests"]


def scattered(work: Path) -> None:
    n, bad_every = 2_000, 100
    data = work / "faults.jsonl"
    with open(data, "w") as fh:
        for i in range(n):
            marker = " [[bad]]" if i % bad_every == 7 else ""
            fh.write(json.dumps({"prompt": f"q{i} scattered faults{marker}"}) + "\n")
    bad = sum(1 for i in range(n) if i % bad_every == 7)
    server = MockProcess("--fault-rate", "0.3", "--seed", "12")
    try:
        wall, t = run_pr(data, work / "faults.parquet", f"{server.url}/v1", "--concurrency", "64")
        s = server.stats()
        ok = t["status"].count("ok")
        bad_tries = s["by_status"].get("400", 0)
        pr_requests = s["requests"]
        server.reset()
        sdk = measured("sdk", n, [sys.executable, str(HERE / "baseline_openai.py"), str(data), str(work / "sdk.jsonl"),
                                  f"{server.url}/v1", "64"])
        s2 = server.stats()
        with open(work / "sdk.jsonl") as fh:
            sdk_ok = sum(1 for line in fh if "output" in json.loads(line))
    finally:
        server.stop()
    print(f"    prompt-runner {wall:.2f} s, {ok} ok of {n} ({bad} bad by design), {pr_requests} requests, "
          f"400s answered {bad_tries}; SDK {sdk.wall:.2f} s, {sdk_ok} ok, {s2['requests']} requests, "
          f"400s answered {s2['by_status'].get('400', 0)}", flush=True)
    record("1 scattered faults, 2,000 rows, c=64", f"{ok}/{n - bad} transient rows recovered, {bad_tries} tries of "
           f"{bad} permanent 400s", "all recovered, 400s tried once", ok == n - bad and bad_tries == bad)
    record("1 scattered faults: wall vs the SDK script", f"{wall:.2f} s vs {sdk.wall:.2f} s = {wall / sdk.wall:.2f}x",
           "<= 1.5x", wall <= 1.5 * sdk.wall)


def stated(work: Path) -> None:
    rate, n = 100, 3_000
    data = make_dataset(work / "stated.jsonl", n)
    _, t, s = on_mock(["--rate-limit", str(rate)], data, work / "stated.parquet", "--concurrency", "64")
    limited, requests = share_429(s)
    _, series = per_second(t)
    after = series[5:-1] or series
    achieved = sum(after) / len(after)
    print(f"    rows/s by second: {series}", flush=True)
    record(f"2 stated limit {rate}/s, no --rpm", f"{achieved:.1f}/s after 5 s = {100 * achieved / rate:.1f} %",
           ">= 95 %", achieved >= 0.95 * rate and t["status"].count("ok") == n)
    record("2 stated limit: 429s", f"{limited} of {requests} = {100 * limited / requests:.2f} %", "<= 1 %",
           limited <= 0.01 * requests)


def unstated(work: Path) -> None:
    rate, n = 50, 3_000
    data = make_dataset(work / "unstated.jsonl", n)
    for label, flags, rate_target, share_target in (
        ("no --rpm", [], 0.85, 0.05),
        (f"--rpm {rate * 60}", ["--rpm", str(rate * 60)], 0.95, 0.01),
    ):
        _, t, s = on_mock(["--rate-limit", str(rate), "--no-rate-limit-headers"], data, work / "unstated.parquet",
                          "--concurrency", "64", *flags)
        limited, requests = share_429(s)
        t0, series = per_second(t)
        span = max(seconds(x) for x in t["finished_at"]) - t0
        achieved = n / span
        print(f"    {label}: rows/s by second: {series}", flush=True)
        ok = t["status"].count("ok") == n
        record(f"3 unstated limit {rate}/s, {label}", f"{achieved:.1f}/s = {100 * achieved / rate:.1f} %, all ok: {ok}",
               f">= {100 * rate_target:.0f} %", achieved >= rate_target * rate and ok)
        record(f"3 unstated limit, {label}: 429s", f"{limited} of {requests} = {100 * limited / requests:.2f} %",
               f"<= {100 * share_target:.0f} %", limited <= share_target * requests)


def follow(series: list[int], start: int, target: float, tolerance: float = 0.12) -> int | None:
    """Seconds from `start` until a second's rows are within `tolerance` of `target`."""
    for i in range(start, len(series) - 1):
        if abs(series[i] - target) <= tolerance * target:
            return i - start
    return None


def halving(work: Path) -> None:
    high, low, at, length, n = 40, 20, 8, 10, 1_200
    data = make_dataset(work / "halving.jsonl", n)
    _, t, s = on_mock(["--rate-limit-schedule", f"0:{high},{at}:{low},{at + length}:{high}"], data,
                      work / "halving.parquet", "--concurrency", "64")
    limited, requests = share_429(s)
    _, series = per_second(t)
    down = follow(series, at, low)
    up = follow(series, at + length, high)
    ok = t["status"].count("ok")
    print(f"    rows/s by second: {series}", flush=True)
    record(f"4 limit {high} -> {low} for {length} s -> {high}/s",
           f"followed down in {down} s, back up in {up} s; {ok}/{n} ok; 429s {limited} of {requests}",
           "a few seconds each way, no row lost", down is not None and up is not None and down <= 3 and up <= 3 and ok == n)


def overload(work: Path) -> None:
    at, length, n, latency, conc = 5, 5, 9_000, 50, 32
    data = make_dataset(work / "overload.jsonl", n)
    _, t, s = on_mock(["--overload", f"{at}:{length}", "--latency-ms", str(latency)], data, work / "overload.parquet",
                      "--concurrency", str(conc), provider="anthropic")
    _, series = per_second(t)
    before = sum(series[1:at]) / max(1, at - 1)
    back = follow(series, at + length, before, tolerance=0.1)
    errors = t["status"].count("error")
    print(f"    rows/s by second: {series}; 529s answered: {s['by_status'].get('529', 0)}", flush=True)
    record(f"5 a {length}-s 529 episode, {n:,} rows, c={conc}, {latency} ms",
           f"{errors} error rows; full speed ({before:.0f}/s) {back} s after the episode",
           "no error rows, back within seconds", errors == 0 and back is not None and back <= 3)


def gateway(work: Path) -> None:
    from litellm_gateway import litellm_proxy

    n, rpm = 150, 60
    data = make_dataset(work / "gateway.jsonl", n)
    with litellm_proxy(rpm=rpm) as (base, key, model):
        started = time.time()
        wall, t = run_pr(data, work / "gateway.parquet", base, key=key, model=model)
    # The limit allows `rpm` requests a minute: n rows take 60 n / rpm seconds at that rate. A
    # client that sends each calendar minute's `rpm` in a burst at its start (the window is fixed)
    # can finish sooner: the last rows go at the start of minute ceil(n / rpm) - 1 after the first.
    steady = 60 * n / rpm
    first_minute_end = math.floor(started / 60) * 60 + 60
    bursting = first_minute_end + 60 * (math.ceil(n / rpm) - 2) - started
    ok = t["status"].count("ok")
    refused = sum(t["attempts"]) - n
    record(f"6 LiteLLM proxy, {rpm} rpm calendar window, {n} rows, no --rpm",
           f"{ok}/{n} ok in {wall:.0f} s, {refused} 429s (at {rpm}/min: {steady:.0f} s; "
           f"bursting each calendar minute: ~{bursting:.0f} s)",
           f"every row ok, within the time {rpm}/min allows", ok == n and wall <= steady * 1.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="1,2,3,4,5,6", help="comma-separated scenario numbers")
    ap.add_argument("--skip-litellm", action="store_true")
    args = ap.parse_args()
    chosen = {int(x) for x in args.only.split(",") if x.strip()}
    if args.skip_litellm:
        chosen.discard(6)
    scenarios = {1: scattered, 2: stated, 3: unstated, 4: halving, 5: overload, 6: gateway}
    with tempfile.TemporaryDirectory(prefix="prompt-runner-pacing-") as tmp:
        for number in sorted(chosen):
            print(f"scenario {number}: {scenarios[number].__name__}", flush=True)
            scenarios[number](Path(tmp))
    print()
    width = max(len(r[0]) for r in RESULTS) if RESULTS else 10
    for scenario, figure, target, met in RESULTS:
        print(f"| {scenario:<{width}} | {figure} | {target} | {'met' if met else 'NOT MET'} |")
    return 0 if all(r[3] for r in RESULTS) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
