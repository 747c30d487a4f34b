"""The benchmark script's smoke version runs end to end and prints its table (no figures judged)."""

from __future__ import annotations

import subprocess
import sys

from e2e import REPO


def test_bench_quick_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benches/bench.py"), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rows/s" in proc.stdout and "prompt-runner, 0 ms" in proc.stdout
    assert "rate-limited:" in proc.stdout and "--help" in proc.stdout
