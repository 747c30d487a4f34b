"""The hand-written stub `runner/_native.pyi` matches the compiled module (mypy.stubtest)."""

from __future__ import annotations

import subprocess
import sys

from e2e import REPO


def test_native_stub_matches_the_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "runner._native", "--ignore-missing-stub"],
        check=False, capture_output=True,
        text=True,
        cwd=REPO,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
