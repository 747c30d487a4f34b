"""The GitHub Actions workflows the project ships (its release, and the CI examples users copy)
pass the workflow schema and zizmor's security audit, offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from e2e import REPO

WORKFLOWS = [".github/workflows/release.yml", "examples/ci/nightly.yml", "examples/ci/sharded.yml"]


@pytest.mark.parametrize("workflow", WORKFLOWS)
@pytest.mark.parametrize("linter", ["check-jsonschema", "zizmor"])
def test_the_workflow_passes_the_linters(linter: str, workflow: str) -> None:
    path = REPO / workflow
    tool = Path(sys.executable).with_name(linter)
    if linter == "check-jsonschema":
        args = [str(tool), "--builtin-schema", "vendor.github-workflows", str(path)]
    else:
        args = [str(tool), "--offline", "--config", str(REPO / ".github" / "zizmor.yml"), str(path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
