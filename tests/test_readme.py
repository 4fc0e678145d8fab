"""The README's and docs/*.md's commands stay true: every documented command parses (fast), the step-by-step
block runs at tiny sizes (slow), and the demo recipe's plan prints; every link of the README and the docs
resolves in a clone (no link into the git-ignored ``runs/``), and no page documents ``python -m tokenskip.…``."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
import tomllib

from conftest import REPO
from tokenskip.cli import COMMANDS, build_parser

README = (REPO / "README.md").read_text(encoding="utf-8")
#: The README and every page under docs/ (the lab's copied reports included), by path relative to the repository.
DOCS = {p.relative_to(REPO).as_posix(): p.read_text(encoding="utf-8")
        for p in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]}
TOKENSKIP_BIN = (".venv/bin/tokenskip", ".venv-vllm/bin/tokenskip", "tokenskip")


def shell_blocks(text: str) -> list[str]:
    """Fenced code blocks marked ``bash``/``sh`` or unmarked (the README's command blocks)."""
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M) if m.group(1) in ("", "bash",
                                                                                                          "sh")]


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
            # command names alone (the stage table) are not commands
            and " --" in s and "..." not in s and "COMMAND" not in s]


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
        assert path.is_relative_to(REPO.resolve()) and path.is_file(), \
            f"{where}: --data {data} is not in the repository"
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
    while len(words) > 1 and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value for this command only
        words = words[1:]
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
        elif words[1] == "-m":  # every entry point is a `tokenskip` subcommand: no `python -m tokenskip.<module>`
            raise AssertionError(f"{where}: `python -m {words[2]}` is documented; document the `tokenskip` "
                                 f"subcommand instead (tokenskip lab-targets, ...)")
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
    """Every command of the README and of docs/**/*.md, in blocks and inline."""
    assert shell_blocks(README), "the README lost its command block"
    n_blocks = n = 0
    for doc, text in DOCS.items():
        blocks = shell_blocks(text)
        n_blocks += len(blocks)
        for b, block in enumerate(blocks):
            env: dict[str, str] = {}
            for cmd in block_commands(block):
                check_command(cmd, env, f"{doc} block {b + 1}: {shlex.join(cmd)[:70]}")
                n += 1
        for cmd in inline_commands(text):
            words = shlex.split(cmd)
            if words[0] == "accelerate":
                check_command(cmd, {}, f"{doc} inline: {cmd[:60]}")
            else:
                check_tokenskip(words[1:], f"{doc} inline: {cmd[:60]}")
            n += 1
    assert n_blocks >= 5
    assert n >= 25  # the docs document at least this many commands; fewer means the parsing broke


def test_readme_is_short_and_opens_with_the_two_commands():
    lines = README.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/*.md"
    demo = ("make demo    # fresh machine: set up .venv, run the whole TokenSkip pipeline offline on a 2-core CPU, "
            "write the report")
    assert lines[:4] == ["```", demo, "make test    # fresh machine: set up .venv, run the test suite", "```"]


#: ``python -m tokenskip...`` / ``python3 -m tokenskip`` / ``.venv/bin/python -m tokenskip.cli`` in any form.
PYTHON_M_TOKENSKIP = re.compile(r"python[\w.\-/]*\s+-m\s+tokenskip\b")


def test_no_doc_uses_python_m_tokenskip():
    """Every user-facing entry point is a `tokenskip` subcommand; the docs say so everywhere, prose included."""
    offenders = [f"{doc}:{i}: {line.strip()[:100]}" for doc, text in DOCS.items()
                 for i, line in enumerate(text.splitlines(), 1) if PYTHON_M_TOKENSKIP.search(line)]
    assert not offenders, "documented `python -m tokenskip...` (use `tokenskip <command>`):\n" + "\n".join(offenders)


def markdown_links(text: str) -> list[str]:
    """Targets of ``[text](target)`` and ``![alt](target)`` outside code (fenced blocks and code spans)."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    prose = re.sub(r"`[^`\n]+`", "code", prose)
    return [m.group(1) for m in re.finditer(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose)]


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to ``-``, ``-1`` on repeats."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", prose, re.M):
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def link_problems(doc: str, text: str) -> list[str]:
    """What is wrong with the links of one page (``doc`` relative to the repository): a target outside the
    repository, under ``runs/``, missing, git-ignored, or an anchor its page does not have."""
    problems = []
    base = (REPO / doc).parent
    for target in markdown_links(text):
        if re.match(r"^[a-z][\w+.\-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (base / path_part).resolve() if path_part else (REPO / doc).resolve()
        rel = path.relative_to(REPO.resolve()).as_posix() if path.is_relative_to(REPO.resolve()) else None
        if rel is None:
            problems.append(f"{doc}: {target} points outside the repository")
        elif rel == "runs" or rel.startswith("runs/"):
            problems.append(f"{doc}: {target} points into the git-ignored runs/ (dead in a clone)")
        elif not path.exists():
            problems.append(f"{doc}: {target} does not exist")
        elif subprocess.run(["git", "check-ignore", "-q", rel], cwd=REPO, check=False).returncode == 0:
            problems.append(f"{doc}: {target} is git-ignored (not in a clone)")
        elif anchor and path.suffix == ".md" and anchor not in heading_anchors(
                text if not path_part else path.read_text(encoding="utf-8")):
            problems.append(f"{doc}: {target}: no heading #{anchor} in {rel}")
    return problems


def test_every_link_resolves_in_a_clone():
    """The README, docs/**/*.md, the CHANGELOG and data/README.md."""
    pages = {**DOCS, **{f: (REPO / f).read_text(encoding="utf-8") for f in ("CHANGELOG.md", "data/README.md")}}
    n = sum(len(markdown_links(text)) for text in pages.values())
    assert n >= 20  # the README and docs link each other; fewer means the link parsing broke
    problems = [p for doc, text in pages.items() for p in link_problems(doc, text)]
    assert not problems, "\n".join(problems)


def test_link_checker_finds_bad_links():
    page = ("[ok](docs/usage.md) [img](docs/img/ratio_control.png) [web](https://example.org/x) [top](#stages)\n"
            "[run](runs/demo/report.md) [gone](docs/nothere.md) [anchor](docs/usage.md#no-such-heading)\n"
            "`[in code](runs/x.jsonl)`\n\n## Stages\n")
    problems = link_problems("README.md", page)
    assert len(problems) == 3, problems
    assert "runs/" in problems[0] and "does not exist" in problems[1] and "no heading" in problems[2]
    assert heading_anchors("## The offline demo (`make demo`)\n## A\n## A\n") == \
        {"the-offline-demo-make-demo", "a", "a-1"}
    assert PYTHON_M_TOKENSKIP.search("`.venv-vllm/bin/python -m tokenskip.lab.targets runs/x`")
    assert not PYTHON_M_TOKENSKIP.search(".venv/bin/python -m pytest tests/test_grading.py -q")


PKG = REPO / "src" / "tokenskip"


def path_problems(doc: str, text: str) -> list[str]:
    """Source paths and module names a page names in code spans that do not exist: ``pkg/module.py`` (relative
    to the repository or to ``src/tokenskip/``) and ``tokenskip.pkg.module[.attribute]``."""
    problems = []
    packages = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    for span in re.findall(r"`([^`\n]+)`", text):
        for word in span.split():
            word = word.strip("(),;:")
            if re.fullmatch(r"(\w+/)+\w+\.py", word):
                head = word.split("/")[0]
                if head in packages | {"src", "tests", "benchmarks"} and not (REPO / word).is_file() \
                        and not (PKG / word).is_file():
                    problems.append(f"{doc}: {word} does not exist")
            elif re.fullmatch(r"tokenskip(\.\w+)+", word):
                parts = word.split(".")
                known = [i for i in range(1, len(parts) + 1)
                         if (PKG.parent.joinpath(*parts[:i]).with_suffix(".py")).is_file()
                         or (PKG.parent.joinpath(*parts[:i]) / "__init__.py").is_file()]
                if max(known, default=0) < len(parts) - 1:  # at most one trailing attribute (a function, a class)
                    problems.append(f"{doc}: module {word} does not exist")
    return problems


def test_every_named_module_exists():
    """The package map, the stage table and the docs name modules that exist (after a move, they follow)."""
    n = sum(len(re.findall(r"\w\.py`|`tokenskip\.\w", text)) for text in DOCS.values())
    assert n >= 40
    problems = [p for doc, text in DOCS.items() for p in path_problems(doc, text)]
    assert not problems, "\n".join(problems)
    assert path_problems("t", "`compress/prune.py` `tokenskip.task.prompts.stop_rule` `tests/test_io.py`") == []
    assert len(path_problems("t", "`compress/runner.py` `tokenskip.budget.fit` `tokenskip.backends.vllm`")) == 3


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
    with pytest.raises(AssertionError, match="tokenskip. subcommand instead"):
        check_command(".venv/bin/python -m tokenskip.lab.targets runs/x", {}, "t")
    check_command(".venv-vllm/bin/tokenskip lab-targets runs/lab-smollm2-legs", {}, "t")
    outside = tmp_path / "test.jsonl"  # a data file that exists, but beside the clone, not in it
    outside.write_text("{}\n")
    with pytest.raises(AssertionError, match="not in the repository"):
        check_command(f"tokenskip evaluate --data {outside} --out x", {}, "t")


def subprocess_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
                HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENSKIP_THREADS="1")


def test_demo_dry_run_prints_the_plan():
    """The issue's "must work exactly as written" command (with this interpreter for .venv/bin/tokenskip)."""
    r = subprocess.run([sys.executable, "-m", "tokenskip.cli", "run", "recipes/demo-smollm2-gsm8k.yaml", "--dry-run"],
                       cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "run folder: runs/demo-smollm2-gsm8k" in r.stdout
    for stage in ("compress", "build_sft", "train", "evaluate", "report"):
        assert re.search(rf"^  {stage} ", r.stdout, re.M), r.stdout
