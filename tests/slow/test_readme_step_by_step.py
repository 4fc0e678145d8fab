"""The step-by-step block of the docs runs at tiny sizes (slow: the whole chain on the packaged 135M model)."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from conftest import REPO
from test_readme import DOCS, shell_blocks, subprocess_env

#: The step-by-step block's sizes -> tiny sizes; each must occur in the block, so a README change shows up here.
TINY = [("--limit 20", "--limit 2"), ("--limit 40", "--limit 6"), ("--max-steps 20", "--max-steps 1"),
        ("--ratios 0.9 0.7 0.5", "--ratios 0.7 0.5"), ("--out W/eval", "--max-new-tokens 12 --out W/eval")]


@pytest.mark.slow
def test_step_by_step_block_runs_at_tiny_sizes(tmp_path):
    # wherever the step-by-step block lives (docs/usage.md today), exactly one page has it
    (block,) = [b for text in DOCS.values() for b in shell_blocks(text) if b.startswith("T=.venv/bin/tokenskip")]
    for big, tiny in TINY:
        assert big in block, f"the step-by-step block no longer contains {big!r}: update TINY"
        block = block.replace(big, tiny)
    # a folder with what the block expects from the project root: data/ and .venv/bin/tokenskip
    (tmp_path / "data").symlink_to(REPO / "data")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    exe = tmp_path / ".venv" / "bin" / "tokenskip"
    exe.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m tokenskip.cli \"$@\"\n")
    exe.chmod(0o755)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=subprocess_env(),
                       capture_output=True,
                       text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    W = tmp_path / "W"
    for cell in ("original", "tokenskip/ratio-1.0", "tokenskip/ratio-0.5", "prompt/ratio-0.5", "truncation/ratio-0.5"):
        assert (W / "eval" / "gsm8k" / cell / "metrics.json").is_file(), cell
    assert (W / "adapter" / "adapter_config.json").is_file()
    md = (W / "eval" / "report.md").read_text()
    assert "| TokenSkip (γ=0.5) |" in md and "## Training" in md and "1 logged steps" in md
