"""`prompt-runner mock-server` standalone: serves both wire formats until Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from pathlib import Path

from e2e import cli, expected_reply, read_output, spawn, write_jsonl


def test_standalone_mock_server_serves_a_run_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    server = spawn("mock-server", "--port", "0", "--api-key", "k-123", "--latency-ms", "5")
    try:
        assert server.stderr is not None
        banner = server.stderr.readline()
        match = re.search(r"mock server on (http://127\.0\.0\.1:\d+)", banner)
        assert match, banner
        url = match.group(1)
        path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"hello {i}"} for i in range(50)])
        out = tmp_path / "out.parquet"
        res = cli(
            "run", str(path), "-o", str(out), "--provider", "anthropic", "--model", "claude-test",
            "--api-base", url, "--stream", env={"ANTHROPIC_API_KEY": "k-123"},
        )
        assert res.code == 0, res.stderr
        assert read_output(out)["output"].to_list() == [expected_reply(f"hello {i}") for i in range(50)]
        with urllib.request.urlopen(f"{url}/_mock/stats") as resp:
            counters = json.load(resp)
        assert counters["requests"] == 50 and counters["streamed"] == 50
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=10)
    assert server.returncode == 0, err
    assert "stopped after 50 requests" in err and "Traceback" not in err
