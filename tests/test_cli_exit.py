"""runner.cli.exit_now: the console script leaves with `os._exit`, keeping what a normal exit does."""

from __future__ import annotations

import subprocess
import sys


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_exit_now_flushes_output_runs_atexit_hooks_and_keeps_the_status() -> None:
    proc = python(
        "import atexit, sys\n"
        "from runner.cli import exit_now\n"
        "atexit.register(lambda: print('hook ran', file=sys.stderr))\n"
        "sys.stdout.write('buffered, no newline')\n"
        "exit_now(3)\n"
        "print('not reached')\n"
    )
    assert proc.returncode == 3
    assert proc.stdout == "buffered, no newline"
    assert proc.stderr == "hook ran\n"


def test_exit_now_waits_for_a_running_thread_as_python_would() -> None:
    proc = python(
        "import threading, time\n"
        "from runner.cli import exit_now\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread finished', flush=True))).start()\n"
        "exit_now(None)\n"
    )
    assert (proc.returncode, proc.stdout) == (0, "thread finished\n")


def test_exit_now_with_a_message_prints_it_and_fails() -> None:
    proc = python("from runner.cli import exit_now\nexit_now('stopped: no rows')\n")
    assert (proc.returncode, proc.stderr) == (1, "stopped: no rows\n")


def test_the_console_script_keeps_exit_codes_and_output(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = [sys.executable, "-c", "from runner.cli import main; main()"]
    ok = subprocess.run([*script, "--help"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "Usage" in ok.stdout
    missing = tmp_path / "missing.jsonl"
    bad = subprocess.run([*script, "run", str(missing), "-o", str(tmp_path / "out.parquet"), "--provider", "mock"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and str(missing) in bad.stderr and "Traceback" not in bad.stderr
