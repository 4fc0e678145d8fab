"""The README's commands stay true: every documented command parses (fast), the step-by-step block runs
at tiny sizes (slow), and the demo recipe's plan prints."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO
from tokenskip.cli import COMMANDS, build_parser

README = (REPO / "README.md").read_text(encoding="utf-8")
TOKENSKIP_BIN = (".venv/bin/tokenskip", ".venv-vllm/bin/tokenskip", "tokenskip")


def shell_blocks(text: str) -> list[str]:
    """Fenced code blocks marked ``bash``/``sh`` or unmarked (the README's command blocks)."""
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M) if m.group(1) in ("", "bash", "sh")]


def block_commands(block: str) -> list[list[str]]:
    """Commands of a block as word lists: continuations joined, comments and blank lines dropped,
    ``A=1; B=2`` split in two."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        cmd: list[str] = []
        for w in shlex.split(line, comments=True):
            if w.endswith(";") and len(w) > 1:
                out.append(cmd + [w[:-1]])
                cmd = []
            else:
                cmd.append(w)
        if cmd:
            out.append(cmd)
    return out


def expand(words: list[str], env: dict[str, str]) -> list[str]:
    """Bash's expansion for the README's simple variables: ``$X`` inside a word is replaced, a word that
    is only ``$X`` splits on spaces (unquoted)."""
    out = []
    for w in words:
        if re.fullmatch(r"\$\w+", w) and w[1:] in env:
            out += env[w[1:]].split()
        else:
            out.append(re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), w))
    return out


def inline_commands(text: str) -> list[str]:
    """``tokenskip ... --flag`` / ``-m tokenskip.cli ...`` commands in inline code spans (may wrap lines);
    spans abbreviated with ``...`` are left out, their full form is in a block."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = [re.sub(r"\s+", " ", m.group(1)) for m in re.finditer(r"`([^`]+)`", prose)]
    return [s for s in spans if re.match(r"^(\S*/)?tokenskip \w|^accelerate launch .*-m tokenskip\.cli ", s)
            and " --" in s and "..." not in s and "COMMAND" not in s]  # command names alone (the stage table) are not commands


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return {t for m in re.finditer(r"^([\w.\-/$() ]+):(?!=)", text, re.M) for t in m.group(1).split()}


def check_tokenskip(words: list[str], where: str) -> None:
    sub, args = words[0], words[1:]
    assert sub in COMMANDS, f"{where}: unknown command {sub!r}"
    try:
        ns = build_parser(sub).parse_args(args)
    except SystemExit as e:
        raise AssertionError(f"{where}: `tokenskip {shlex.join(words)}` does not parse") from e
    data = getattr(ns, "data", None)
    if isinstance(data, str) and data.endswith(".jsonl"):
        path = (REPO / data).resolve()
        assert path.is_relative_to(REPO.resolve()) and path.is_file(), f"{where}: --data {data} is not in the repository"
    if sub == "run":
        from tokenskip.pipeline.recipe import load_recipe

        assert (REPO / ns.recipe).is_file(), f"{where}: recipe {ns.recipe} not found"
        load_recipe(str(REPO / ns.recipe), ns.overrides)  # every --set applies to the recipe


def check_command(words: list[str] | str, env: dict[str, str], where: str) -> None:
    """Check one documented shell command against the project: a tokenskip command parses (its local
    data and recipe exist), a make target exists, a script and its flags exist. ``VAR=value`` is recorded
    in ``env`` for later commands."""
    words = expand(shlex.split(words) if isinstance(words, str) else words, env)
    if words and words[-1] == "&":  # a server started in the background (tokenskip serve ... &)
        words = words[:-1]
    if len(words) == 1 and re.match(r"^\w+=", words[0]):
        name, value = words[0].split("=", 1)
        env[name] = value
        return
    head = words[0]
    if head in TOKENSKIP_BIN:
        check_tokenskip(words[1:], where)
    elif head == "make":
        targets = [w for w in words[1:] if "=" not in w]
        assert set(targets) <= makefile_targets(), f"{where}: make target(s) {targets} not in the Makefile"
        assert all(w.split("=")[0] in (REPO / "Makefile").read_text() for w in words[1:] if "=" in w), where
    elif head in (".venv/bin/python", ".venv-vllm/bin/python"):
        if words[1:3] == ["-m", "pytest"]:
            assert all((REPO / w).exists() for w in words[3:] if not w.startswith("-")), where
        elif words[1] == "-m":  # python -m tokenskip.<module>: the module exists in the package
            import importlib.util

            assert words[2].startswith("tokenskip.") and importlib.util.find_spec(words[2]), \
                f"{where}: module {words[2]} not found"
        else:
            script = REPO / words[1]
            assert script.is_file(), f"{where}: {words[1]} not found"
            src = script.read_text()
            for flag in (w for w in words[2:] if w.startswith("--")):
                assert f'"{flag}"' in src, f"{where}: {words[1]} has no {flag} option"
    elif head == "bash":
        assert (REPO / words[1]).is_file(), f"{where}: {words[1]} not found"
    elif head == "accelerate":
        i = words.index("tokenskip.cli")
        assert words[words.index("--config_file") + 1] and (REPO / words[words.index("--config_file") + 1]).is_file()
        check_tokenskip(words[i + 1:], where)
    elif head == "curl":  # requests to a local server: loopback only
        urls = [w for w in words[1:] if re.match(r"^(https?://)?(localhost|127\.0\.0\.1)[:/]", w)]
        assert urls, f"{where}: curl without a loopback URL"
    elif words[:2] == ["vllm", "serve"]:  # the upstream engine of `tokenskip serve --upstream` (not ours to check)
        assert "--enable-lora" in words, f"{where}: vllm serve needs --enable-lora to serve an adapter"
    elif head == "pip":
        extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for w in words[2:]:
            m = re.match(r"tokenskip\[([\w,\-]+)\]", w)
            assert m and set(m.group(1).split(",")) <= set(extras), f"{where}: {w}"
    else:
        raise AssertionError(f"{where}: no check for the command {head!r}; teach test_readme.py about it")


def test_every_documented_command_parses():
    blocks = shell_blocks(README)
    assert len(blocks) >= 5
    n = 0
    for b, block in enumerate(blocks):
        env: dict[str, str] = {}
        for cmd in block_commands(block):
            check_command(cmd, env, f"README block {b + 1}: {shlex.join(cmd)[:70]}")
            n += 1
    for cmd in inline_commands(README):
        words = shlex.split(cmd)
        if words[0] == "accelerate":
            check_command(cmd, {}, f"README inline: {cmd[:60]}")
        else:
            check_tokenskip(words[1:], f"README inline: {cmd[:60]}")
        n += 1
    assert n >= 25  # the README documents at least this many commands; fewer means the parsing broke


def test_block_parsing_helpers(tmp_path):
    cmds = block_commands('T=.venv/bin/tokenskip; D=data/gsm8k\n# note\n$T report W \\\n    --no-plots  # why\n'
                          'E="evaluate --data $D/test.jsonl"\n$T $E --limit 2\n')
    assert cmds == [["T=.venv/bin/tokenskip"], ["D=data/gsm8k"], ["$T", "report", "W", "--no-plots"],
                    ["E=evaluate --data $D/test.jsonl"], ["$T", "$E", "--limit", "2"]]
    env: dict[str, str] = {}
    for c in cmds[:2] + cmds[3:4]:
        check_command(c, env, "t")
    assert expand(cmds[4], env) == [".venv/bin/tokenskip", "evaluate", "--data", "data/gsm8k/test.jsonl",
                                    "--limit", "2"]
    with pytest.raises(AssertionError, match="does not parse"):
        check_command("tokenskip compress --split train --out x", {}, "t")
    outside = tmp_path / "test.jsonl"  # a data file that exists, but beside the clone, not in it
    outside.write_text("{}\n")
    with pytest.raises(AssertionError, match="not in the repository"):
        check_command(f"tokenskip evaluate --data {outside} --out x", {}, "t")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
                HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENSKIP_THREADS="1")


def test_demo_dry_run_prints_the_plan():
    """The issue's "must work exactly as written" command (with this interpreter for .venv/bin/tokenskip)."""
    r = subprocess.run([sys.executable, "-m", "tokenskip.cli", "run", "recipes/demo-smollm2-gsm8k.yaml", "--dry-run"],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "run folder: runs/demo-smollm2-gsm8k" in r.stdout
    for stage in ("compress", "build_sft", "train", "evaluate", "report"):
        assert re.search(rf"^  {stage} ", r.stdout, re.M), r.stdout


#: README sizes -> tiny sizes; each must occur in the block, so a README change shows up here.
TINY = [("--limit 20", "--limit 2"), ("--limit 40", "--limit 6"), ("--max-steps 20", "--max-steps 1"),
        ("--ratios 0.9 0.7 0.5", "--ratios 0.7 0.5"), ("--out W/eval", "--max-new-tokens 12 --out W/eval")]


@pytest.mark.slow
def test_step_by_step_block_runs_at_tiny_sizes(tmp_path):
    (block,) = [b for b in shell_blocks(README) if b.startswith("T=.venv/bin/tokenskip")]
    for big, tiny in TINY:
        assert big in block, f"README step-by-step block no longer contains {big!r}: update TINY"
        block = block.replace(big, tiny)
    # a folder with what the block expects from the project root: data/ and .venv/bin/tokenskip
    (tmp_path / "data").symlink_to(REPO / "data")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    exe = tmp_path / ".venv" / "bin" / "tokenskip"
    exe.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m tokenskip.cli \"$@\"\n")
    exe.chmod(0o755)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    W = tmp_path / "W"
    for cell in ("original", "tokenskip/ratio-1.0", "tokenskip/ratio-0.5", "prompt/ratio-0.5", "truncation/ratio-0.5"):
        assert (W / "eval" / "gsm8k" / cell / "metrics.json").is_file(), cell
    assert (W / "adapter" / "adapter_config.json").is_file()
    md = (W / "eval" / "report.md").read_text()
    assert "| TokenSkip (γ=0.5) |" in md and "## Training" in md and "1 logged steps" in md
