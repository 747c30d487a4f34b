"""Logs and metrics: JSON log lines without secrets, the Prometheus endpoint during a run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from e2e import REPO, base_for, cli, mock, spawn, write_jsonl

from runner.engine import observability

SECRET = "sk-live-Tr5yU7iO9pQ1wE3rT6yU8iO0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_client_json_logs_parse_line_by_line_and_hold_no_secret() -> None:
    server = mock(api_key=SECRET, fault_rate=0.5, faults=["503"], seed=1)
    script = f"""
import asyncio
from runner import _native, ModelClient, ModelConfig, Message, ModelClientError
assert _native.init_logging("debug", True)
assert not _native.init_logging("info", False)  # once per process
cfg = ModelConfig(api_key={SECRET!r}, api_base={base_for(server, "openai")!r}, model="m", max_retries=6, stream=True)
async def main():
    client = ModelClient()
    await asyncio.gather(*(client.complete([Message("user", f"q{{i}}")], cfg) for i in range(10)))
    try:
        await client.complete([Message("user", "x")], ModelConfig(api_key="sk-wrong-{SECRET[8:]}", api_base=cfg.api_base, model="m"))
    except ModelClientError:
        pass
asyncio.run(main())
print("done")
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"  # logs never go to stdout
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    assert events, "no log lines"
    assert {"timestamp", "level", "fields", "target"} <= set(events[0])
    messages = [e["fields"].get("message") for e in events]
    assert "retrying" in messages and "answered" in messages and "failed" in messages
    retry = next(e for e in events if e["fields"].get("message") == "retrying")
    # The mock's 503 says what OpenAI's does, "The engine is currently overloaded": an overload.
    assert retry["fields"]["cause"] == "overloaded" and retry["span"]["name"] == "request"
    assert SECRET not in proc.stderr and SECRET[8:20] not in proc.stderr


def test_cli_json_logs_and_metrics_in_the_summary(tmp_path: Path) -> None:
    server = mock(fault_rate=0.3, faults=["500", "429"], seed=2)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(40)])
    out = tmp_path / "out.parquet"
    res = cli(
        "run", str(path), "-o", str(out), "--provider", "openai", "--model", "m",
        "--api-base", base_for(server, "openai"), "--concurrency", "4", "--max-retries", "10",
        "--log-level", "info", "--log-format", "json",
        env={"OPENAI_API_KEY": server.api_key},
    )
    assert res.code == 0, res.stderr
    events = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    retries = [e for e in events if e["fields"].get("message") == "retrying"]
    assert retries and all(e["span"]["provider"] == "openai" and e["span"]["model"] == "m" for e in retries)
    assert server.api_key not in res.stderr
    import polars as pl

    summary = json.loads(pl.read_parquet_metadata(out)["prompt_runner.summary"])["models"]["m"]
    causes = summary["retries_by_cause"]
    assert sum(causes.values()) == summary["retries"] == len(retries)
    assert summary["latency_count"] == summary["requests"]
    lines = observability.format_metrics(summary)
    assert any(line.startswith("retries by cause:") for line in lines)
    assert any(line.startswith("attempt latency:") for line in lines)
    status = cli("status", str(out)).stdout  # status shows them too
    assert "m: retries by cause:" in status


def test_bad_log_options_are_usage_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x"}])
    res = cli("run", str(path), "-o", str(tmp_path / "o.parquet"), "--provider", "mock", "--log-format", "xml")
    assert res.code == 2 and "--log-format" in res.stderr


def scrape_while_running(proc: subprocess.Popen[str], url: str, rows_ok: list[str]) -> tuple[str, bool, str]:
    """Scrapes `url` until each of the `rows_ok` series (`rows_total` labels) counts a row;
    returns the body, whether the run was still going then, and the run's stderr."""
    scraped = ""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    assert response.headers["Content-Type"].startswith("text/plain")
                    body = response.read().decode()
            except OSError:
                time.sleep(0.1)
                continue
            counts = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                      if line.startswith("prompt_runner_rows_total{")}
            if all(counts.get(f"prompt_runner_rows_total{{{labels}}}", 0) > 0 for labels in rows_ok):
                scraped = body
                break
            time.sleep(0.1)
        still_running = proc.poll() is None
    finally:
        _, err = proc.communicate(timeout=60)
    return scraped, still_running, err


def test_prometheus_endpoint_answers_during_the_run(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(120)])
    port = free_port()
    proc = spawn(
        "run", str(path), "-o", str(tmp_path / "out.parquet"), "--provider", "mock", "--model", "m1",
        "--mock-config", json.dumps({"latency_ms": 60}), "--concurrency", "4", "--metrics-port", str(port),
    )
    url = f"http://127.0.0.1:{port}/metrics"
    scraped, still_running, err = scrape_while_running(proc, url, ['provider="mock",model="m1",status="ok"'])
    assert scraped, err
    assert still_running
    assert proc.returncode == 0, err
    assert "# TYPE prompt_runner_request_latency_seconds histogram" in scraped
    assert 'prompt_runner_request_latency_seconds_bucket{provider="mock",model="m1",le="+Inf"}' in scraped
    assert "prompt_runner_rows_per_second" in scraped and "prompt_runner_in_flight" in scraped
    assert f"metrics: {url}" in err


def test_prometheus_endpoint_shows_every_model_of_a_matrix(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(120)])
    job = tmp_path / "job.toml"
    job.write_text(
        f'input = "{path}"\noutput = "{tmp_path / "out.parquet"}"\n'
        '[[models]]\nprovider = "mock"\nmodel = "small"\nconcurrency = 4\n'
        '[[models]]\nprovider = "mock"\nmodel = "large"\nconcurrency = 4\n'
    )
    port = free_port()
    proc = spawn("run", "--job", str(job), "--mock-config", json.dumps({"latency_ms": 60}), "--metrics-port", str(port))
    scraped, still_running, err = scrape_while_running(
        proc, f"http://127.0.0.1:{port}/metrics",
        ['provider="mock",model="small",status="ok"', 'provider="mock",model="large",status="ok"'],
    )
    assert scraped, err
    assert still_running
    assert proc.returncode == 0, err
    assert scraped.count("# TYPE prompt_runner_rows_total counter") == 1
    for model in ("small", "large"):
        assert f'prompt_runner_concurrency{{provider="mock",model="{model}"}} 4' in scraped
