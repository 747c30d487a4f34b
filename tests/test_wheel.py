"""What users install: the wheel and sdist `make wheel` writes to dist/ (make test builds them).
Installed into a fresh virtual environment on a PATH with no cargo or rustc, the wheel runs; it
holds the package and nothing else; the release workflow passes the linters."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from e2e import REPO

DIST = REPO / "dist"


def built(pattern: str) -> Path:
    found = sorted(DIST.glob(pattern))
    assert found, f"nothing matches dist/{pattern}: run `make wheel` (`make test` does)"
    return found[-1]


def test_the_wheel_is_abi3_manylinux_and_holds_the_package_only() -> None:
    wheel = built("prompt_runner-*-abi3-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("runner/_native") and n.endswith(".so") for n in names)
    assert "runner/cli.py" in names and "runner/engine/live.py" in names and "runner/py.typed" in names
    assert any(n.startswith("runner/evals/pages/") for n in names), "the HTML report's templates and assets"
    stray = [n for n in names if not (n.startswith("runner/") or ".dist-info/" in n)]
    assert not stray, stray  # no tests, benches, native sources or build leftovers
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".tmp"))]
    assert len([n for n in names if n.endswith(".so")]) == 1
    tags = [line for line in zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/WHEEL"))).decode().splitlines()
            if line.startswith("Tag:")]
    assert tags and all("-abi3-" in t and "manylinux" in t for t in tags), tags


def test_the_sdist_holds_what_a_build_needs() -> None:
    sdist = built("prompt_runner-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    for needed in ("pyproject.toml", "native/Cargo.toml", "native/src/executor.rs", "runner/cli.py", "Cargo.lock"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("target/", ".venv", "dist/", "runs/"))]


def test_a_fresh_venv_without_rust_installs_the_wheel_and_runs_it(tmp_path: Path) -> None:
    wheel = built("prompt_runner-*-abi3-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # A PATH with the new environment and the system's tools, but no Rust toolchain.
    dirs = [str(venv / "bin")] + [d for d in os.environ.get("PATH", "").split(os.pathsep)
                                  if d and not (Path(d) / "cargo").exists() and not (Path(d) / "rustc").exists()
                                  and Path(d).resolve() != (REPO / ".venv" / "bin").resolve()]
    path = os.pathsep.join(dirs)
    assert shutil.which("cargo", path=path) is None and shutil.which("rustc", path=path) is None
    env = {"PATH": path, "HOME": os.environ.get("HOME", str(tmp_path)), "LANG": "C.UTF-8"}
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CACHE_DIR", "XDG_CACHE_HOME"):
        if key in os.environ:
            env[key] = os.environ[key]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    run(str(venv / "bin" / "pip"), "install", "--quiet", str(wheel))
    assert "Run prompt datasets" in run("prompt-runner", "--help").stdout
    (tmp_path / "in.jsonl").write_text('{"prompt": "hello from a wheel"}\n{"prompt": "second row"}\n')
    done = run("prompt-runner", "run", "in.jsonl", "-o", "out.parquet", "--provider", "mock")
    assert "wrote 2 rows" in done.stderr
    # The Batch API engine (its HTTP client is a dependency) and the HTML report (its templates
    # are package data).
    done = run("prompt-runner", "run", "in.jsonl", "-o", "batch.parquet", "--provider", "mock", "--batch-api",
               "--mock-config", '{"batch_seconds": 0.2}')
    assert "wrote 2 rows" in done.stderr and "1 created for this run" in done.stderr
    run("prompt-runner", "report", "out.parquet", "--html", "report.html")
    assert "Content-Security-Policy" in (tmp_path / "report.html").read_text()
    script = (
        "import asyncio, json, runner\n"
        "from runner._native import MockServer\n"
        "assert 'venv' in runner.__file__, runner.__file__\n"
        "server = MockServer('{}')\n"
        "config = runner.ModelConfig(api_key=server.api_key, api_base=server.url + '/v1', model='m')\n"
        "answer = asyncio.run(runner.ModelClient().complete([runner.Message('user', 'via the client')], config))\n"
        "print(answer.content)\n"
        "frame = runner.run([{'prompt': 'via the api'}], provider='mock', progress=False)\n"
        "print(frame['output'][0])\n"
        "server.stop()\n"
    )
    out = run(str(venv / "bin" / "python"), "-c", script).stdout.splitlines()
    assert out == ["Echo: via the client", "Echo: via the api"]
