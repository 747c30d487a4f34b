"""Requests sent twice after a `kill -9`: a run is killed when a share of its rows has been
requested, resumed to the end, and the server's request count tells how many were re-sent.

    .venv/bin/python benches/kill_resend.py --rows 3000 --concurrency 32 --at 0.2 0.5 0.8

Server: `prompt-runner mock-server --latency-ms 20 --latency-jitter-ms 60` (20-80 ms per request),
in its own process. Each moment is a fresh run. "re-sent" is the server's requests beyond one per
row (the mock injects no faults here, so nothing is retried).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--at", type=float, nargs="+", default=[0.2, 0.5, 0.8])
    ap.add_argument("--latency-ms", type=int, default=20)
    ap.add_argument("--jitter-ms", type=int, default=60)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kill-resend-"))
    server = subprocess.Popen(
        [str(BIN / "prompt-runner"), "mock-server", "--port", "0", "--latency-ms", str(args.latency_ms),
         "--latency-jitter-ms", str(args.jitter_ms)],
        stderr=subprocess.PIPE, text=True,
    )
    assert server.stderr is not None
    match = re.search(r"(http://127\.0\.0\.1:\d+)", server.stderr.readline())
    assert match, "the mock server did not start"
    url = match.group(1)

    def requests() -> int:
        with urllib.request.urlopen(f"{url}/_mock/stats") as resp:
            return json.load(resp)["requests"]

    data = work / "in.jsonl"
    with open(data, "w") as fh:
        for i in range(args.rows):
            fh.write(json.dumps({"prompt": f"question {i} about résumé"}) + "\n")
    out = work / "out.parquet"
    cmd = [str(BIN / "prompt-runner"), "run", str(data), "-o", str(out), "--provider", "openai", "--model", "m",
           "--api-base", f"{url}/v1", "--concurrency", str(args.concurrency)]
    env = {**os.environ, "OPENAI_API_KEY": "mock-key"}
    try:
        for share in args.at:
            shutil.rmtree(work / "out.parquet.run", ignore_errors=True)
            out.unlink(missing_ok=True)
            urllib.request.urlopen(urllib.request.Request(f"{url}/_mock/reset", method="POST")).close()
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while requests() < share * args.rows and proc.poll() is None:
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            before = requests()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            resent = requests() - args.rows
            print(f"kill at {share:.0%} ({before} requests sent): re-sent {resent} "
                  f"(concurrency {args.concurrency})", flush=True)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
