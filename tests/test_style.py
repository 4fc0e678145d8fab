"""The code passes ruff with the settings of ``[tool.ruff]`` in pyproject.toml (skipped where ruff is not installed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def ruff_binary() -> str | None:
    """The ruff of this interpreter's environment (``.venv/bin/ruff``), else one on ``PATH``."""
    beside = Path(sys.executable).with_name("ruff")
    return str(beside) if beside.is_file() else shutil.which("ruff")


def test_ruff_passes():
    ruff = ruff_binary()
    if ruff is None:
        pytest.skip("ruff is not installed (pip install 'tokenskip[test]')")
    r = subprocess.run([ruff, "check", "--no-cache", "src", "tests", "benchmarks"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
