"""The README's and docs' documented ``tokenskip compress`` forms parse and run (issue 10: ``--prefer-kinds`` with no
value was documented but rejected by argparse). Each documented command runs on 3 CoTs with the random
scorer (appended flags win), so the test is fast; what it checks is that the documented flags work."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from conftest import GSM8K_TRAIN, REPO, need_data
from tokenskip.cli import main
from tokenskip.contract.io import read_json

#: The README and docs/**/*.md (where the step-by-step commands and the results moved), one text.
README = "\n\n".join(p.read_text(encoding="utf-8") for p in [REPO / "README.md",
                                                             *sorted((REPO / "docs").rglob("*.md"))])
#: `tokenskip compress ...` in inline code or code blocks (a command may wrap over lines)
COMMANDS = [" ".join(m.split()) for m in re.findall(r"(?:\.venv/bin/)?tokenskip compress ([^`\n]*(?:\n[^`\n]+)*)",
                                                    README)]
#: flag fragments documented for compress (`--protect-kinds ... --prefer-kinds`)
FRAGMENTS = [" ".join(m.split()) for m in re.findall(r"`(--(?:protect|prefer)-kinds[^`]*)`", README)]
FAST = ["--scorer", "random", "--limit", "3"]


def test_readme_documents_compress():
    assert COMMANDS and any("--prefer-kinds" in f and f.rstrip().endswith("--prefer-kinds") for f in FRAGMENTS)


@pytest.mark.parametrize("command", COMMANDS)
def test_documented_compress_command_runs(command, tmp_path, monkeypatch):
    need_data(GSM8K_TRAIN)
    monkeypatch.chdir(REPO)  # the README's paths are relative to the project root
    args = shlex.split(command.replace("\\ ", " "))
    if "--out" in args:
        args[args.index("--out") + 1] = str(tmp_path / "out")
    assert main(["compress", *args, *FAST]) == 0
    summary = read_json(tmp_path / "out" / "summary.json")
    assert summary["n_source"] == 3 and all(s["n"] == 3 for s in summary["ratios"].values())


@pytest.mark.parametrize("fragment", FRAGMENTS)
def test_documented_protect_and_prefer_forms_run(fragment, tmp_path, monkeypatch):
    need_data(GSM8K_TRAIN)
    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    args = ["--cot-source", "gold", "--benchmark", "gsm8k", "--data", str(GSM8K_TRAIN), "--ratios", "0.5",
            "--out", str(out), *shlex.split(fragment), *FAST]
    assert main(["compress", *args]) == 0
    settings = read_json(out / "summary.json")["settings"]
    flags = shlex.split(fragment)
    if flags[-1] == "--prefer-kinds":  # the flag alone: prefer nothing
        assert settings["prefer_kinds"] == []
    if "--protect-kinds" in flags:
        i = flags.index("--protect-kinds") + 1
        kinds = []
        while i < len(flags) and not flags[i].startswith("--"):
            kinds.append(flags[i])
            i += 1
        assert settings["protect_kinds"] == kinds
    rows = [json.loads(line) for line in (out / "ratio-0.5.jsonl").read_text().splitlines()]
    assert len(rows) == 3


def test_empty_list_flags():
    from tokenskip.cli import build_parser
    from tokenskip.contract.config import dataclass_from_args
    from tokenskip.stages.compress import CompressConfig

    parser = build_parser("compress")
    cfg = dataclass_from_args(CompressConfig, parser.parse_args(
        ["--out", "o", "--predictions", "p", "--prefer-kinds", "--protect-kinds"]))
    assert (cfg.prefer_kinds, cfg.protect_kinds) == ([], [])
    with pytest.raises(SystemExit):  # γ list still needs values
        parser.parse_args(["--out", "o", "--ratios"])
