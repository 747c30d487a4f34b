"""prompt-runner benchmarks: end-to-end runs against the project's mock server on loopback,
next to hand-written baselines and a raw load generator, printed as one table.

    .venv/bin/python benches/bench.py              # the full set (about 10 minutes on 2 cores)
    .venv/bin/python benches/bench.py --quick      # a smoke version (seconds)

Each measured program runs as its own process; wall time, CPU (user+sys) and peak RSS come
from the kernel's accounting of that process (`os.wait4`). The mock server runs in a separate
process too, so its CPU is not counted against any client.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
WORDS = ["alpha", "beta", "gamma", "delta", "épsilon", "ζῆτα", "数据", "kappa", "lambda", "mü"]


@dataclass
class Measure:
    name: str
    rows: int
    wall: float
    cpu: float
    rss_mb: float
    ok: bool
    note: str = ""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall if self.wall else 0.0


def make_dataset(path: Path, rows: int, seed: int = 7) -> Path:
    """Varied prompt lengths (2 % long ones), non-ASCII text, one JSON object per line."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(rows):
            n = rng.choice([3, 8, 20, 40]) if rng.random() > 0.02 else 600
            text = f"q{i} " + " ".join(rng.choice(WORDS) for _ in range(n))
            fh.write(json.dumps({"prompt": text}, ensure_ascii=False) + "\n")
    return path


def measured(name: str, rows: int, cmd: list[str], env: dict[str, str] | None = None) -> Measure:
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    note = "" if code == 0 else f"exit {code}: {err.decode(errors='replace').strip().splitlines()[-1:]}"
    return Measure(name, rows, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, code == 0, note)


class MockProcess:
    """`prompt-runner mock-server` in its own process, on a free loopback port."""

    def __init__(self, *flags: str) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "prompt-runner"), "mock-server", "--port", "0", *flags],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        match = re.search(r"(http://127\.0\.0\.1:\d+)", self.proc.stderr.readline())
        assert match, "the mock server did not start"
        self.url = match.group(1)

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/_mock/stats") as resp:
            return json.load(resp)

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/_mock/reset", method="POST")).close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # SIGINT ignored (started from a background job)
            self.proc.kill()
            self.proc.wait()


def prompt_runner(name: str, data: Path, out: Path, server: MockProcess, rows: int, *flags: str) -> Measure:
    shutil.rmtree(out.with_name(out.name + ".run"), ignore_errors=True)
    out.unlink(missing_ok=True)
    cmd = [str(BIN / "prompt-runner"), "run", str(data), "-o", str(out), "--provider", "openai",
           "--model", "bench", "--api-base", f"{server.url}/v1", *flags]
    m = measured(name, rows, cmd, {"OPENAI_API_KEY": "mock-key"})
    if m.ok:
        import pyarrow.parquet as pq

        table = pq.read_table(out, columns=["status"])
        good = table.num_rows == rows and table.column("status").to_pylist().count("ok") == rows
        if not good:
            m.ok, m.note = False, f"output has {table.num_rows} rows, not all ok"
    return m


def run_phase(out: Path) -> float:
    """Seconds from the first request's start to the last response's end, from the output."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(out, columns=["started_at", "finished_at"])
    return (pc.max(t.column("finished_at")).as_py() - pc.min(t.column("started_at")).as_py()).total_seconds()


def baseline(name: str, script: str, data: Path, out: Path, server: MockProcess, rows: int, concurrency: int) -> Measure:
    cmd = [sys.executable, str(HERE / script), str(data), str(out), f"{server.url}/v1", str(concurrency)]
    return measured(name, rows, cmd)


def wrk_ceiling(server: MockProcess, connections: int, seconds: int) -> float | None:
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(HERE / "wrk_post.lua"), f"{server.url}/v1/chat/completions"],
        capture_output=True, text=True, check=False,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match.group(1)) if match else None


def table(rows: list[Measure], reference: Measure | None) -> str:
    head = f"| {'run':<44} | {'rows':>9} | {'rows/s':>9} | {'wall s':>7} | {'CPU s':>7} | {'CPU s/1k rows':>13} | {'peak RSS MB':>11} | {'vs prompt-runner':>16} |"
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for m in rows:
        baseline = reference and not m.name.startswith("prompt-runner") and m.rows_per_s
        ratio = f"{reference.rows_per_s / m.rows_per_s:.1f}x slower" if baseline else ""
        status = "" if m.ok else f"  FAILED {m.note}"
        lines.append(
            f"| {m.name:<44} | {m.rows:>9,} | {m.rows_per_s:>9,.0f} | {m.wall:>7.2f} | {m.cpu:>7.2f} | "
            f"{1000 * m.cpu / max(m.rows, 1):>13.3f} | {m.rss_mb:>11.0f} | {ratio:>16} |{status}"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke version: small sizes, no baselines")
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--skip-million", action="store_true")
    args = ap.parse_args()
    quick = args.quick
    work = Path(tempfile.mkdtemp(prefix="prompt-runner-bench-"))
    results: list[Measure] = []
    report: list[str] = []
    try:
        # --help start-up
        best = min(measured("prompt-runner --help", 0, [str(BIN / "prompt-runner"), "--help"]).wall for _ in range(5))
        report.append(f"prompt-runner --help: {best * 1000:.0f} ms (best of 5; target < 300 ms)")

        # 1. zero latency
        n = 2_000 if quick else 100_000
        data = make_dataset(work / f"data-{n}.jsonl", n)
        server = MockProcess()
        try:
            pr = prompt_runner("prompt-runner, 0 ms, concurrency 128", data, work / "out.parquet", server, n, "--concurrency", "128")
            results.append(pr)
            sending = n / run_phase(work / "out.parquet") if pr.ok else 0.0
            report.append(f"zero latency: {pr.rows_per_s:,.0f} rows/s end to end (target >= 20,000); "
                          f"{sending:,.0f} rows/s from the first request to the last response")
            ceiling = wrk_ceiling(server, 128, 3 if quick else 10)
            if ceiling:
                report.append(f"wrk raw ceiling (128 connections, same request): {ceiling:,.0f} requests/s; "
                              f"prompt-runner = {100 * pr.rows_per_s / ceiling:.0f} % of it end to end, "
                              f"{100 * sending / ceiling:.0f} % while sending (target >= 40 %)")
            if not (quick or args.skip_baselines):
                small = min(n, 20_000)
                sub = make_dataset(work / f"data-{small}.jsonl", small)
                results.append(baseline("aiohttp + Semaphore (hand-written), c=128", "baseline_aiohttp.py", sub, work / "a.jsonl", server, small, 128))
                tiny = 2_000
                sub2 = make_dataset(work / f"data-{tiny}.jsonl", tiny)
                results.append(baseline("openai AsyncOpenAI + Semaphore, c=128", "baseline_openai.py", sub2, work / "o.jsonl", server, tiny, 128))
        finally:
            server.stop()

        # 2. latency-bound
        n, latency, conc = (2_000, 50, 256) if quick else (50_000, 50, 256)
        data = make_dataset(work / f"lat-{n}.jsonl", n)
        server = MockProcess("--latency-ms", str(latency))
        try:
            m = prompt_runner(f"prompt-runner, {latency} ms, concurrency {conc}", data, work / "lat.parquet", server, n, "--concurrency", str(conc))
            results.append(m)
            ideal = conc / (latency / 1000)
            sending = n / run_phase(work / "lat.parquet") if m.ok else 0.0
            report.append(f"latency-bound: {sending:,.0f} rows/s from the first request to the last response = "
                          f"{100 * sending / ideal:.1f} % of the ideal {ideal:,.0f} (target >= 97 %); end to end, with "
                          f"start-up and writing the output, {m.rows_per_s:,.0f} rows/s = {100 * m.rows_per_s / ideal:.1f} %")
            ceiling = wrk_ceiling(server, conc, 3 if quick else 10)
            if ceiling:
                report.append(f"wrk against the same {latency} ms server ({conc} connections): {ceiling:,.0f} requests/s = "
                              f"{100 * ceiling / ideal:.1f} % of the ideal")
        finally:
            server.stop()

        # 3. rate-limited
        rate, n = (100, 500) if quick else (200, 6_000)
        data = make_dataset(work / f"rl-{n}.jsonl", n)
        server = MockProcess("--rate-limit", str(rate))
        try:
            m = prompt_runner(f"prompt-runner, server limit {rate}/s, --rpm {rate * 60}", data, work / "rl.parquet", server, n,
                              "--concurrency", "64", "--rpm", str(rate * 60))
            results.append(m)
            span = run_phase(work / "rl.parquet")
            s = server.stats()
            too_many = s["by_status"].get("429", 0)
            report.append(f"rate-limited: {n / span:,.1f} rows/s of the server's {rate}/s = {100 * n / span / rate:.1f} % "
                          f"(target >= 95 %); 429s: {too_many} of {s['requests']} requests = {100 * too_many / s['requests']:.2f} % (target <= 1 %)")
        finally:
            server.stop()

        # 4. a million rows: memory
        if not (quick or args.skip_million):
            n = 1_000_000
            data = make_dataset(work / f"data-{n}.jsonl", n)
            server = MockProcess()
            try:
                m = prompt_runner("prompt-runner, 1M rows, 0 ms, concurrency 128", data, work / "m.parquet", server, n, "--concurrency", "128")
                results.append(m)
                report.append(f"1M rows: peak RSS {m.rss_mb:,.0f} MB (target <= 300 MB), output complete: {m.ok}")
            finally:
                server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results, results[0] if results else None))
    print()
    for line in report:
        print("- " + line)
    return 0 if all(m.ok for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
