"""The rooms of the house, held apart by reading the imports (``ast``), stated per package.

Layers, lowest first; a module may import its own package and any package of a LOWER layer, never one
of its own layer or above (so stages, lab and serving never import each other):

    errors < contract < task < engines < {generation, compress, finetune} < methods
           < {stages, lab, serving} < pipeline < cli

Two narrower rules: ``pipeline`` reaches stages only through the registry (``tokenskip.stages`` itself,
never a stage module) and imports nothing else but ``contract``/``errors``; ``stages/report`` reads files
only (contract + errors). Lazy (function-level) imports count the same as top-level ones.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "tokenskip"

LAYERS: list[set[str]] = [
    {"errors"}, {"contract"}, {"task"}, {"engines"}, {"generation", "compress", "finetune"}, {"methods"},
    {"stages", "lab", "serving"}, {"pipeline"}, {"cli"},
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def all_modules() -> list[str]:
    out = []
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append(".".join(parts))
    return out


def room(module: str) -> str | None:
    """The package (room) of ``tokenskip.<room>...``; ``None`` for the package root itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def is_module(name: str) -> bool:
    p = SRC.joinpath(*name.split("."))
    return (p / "__init__.py").is_file() or p.with_suffix(".py").is_file()


def imported(source: str) -> set[str]:
    """Every ``tokenskip.*`` module named by an import in ``source``, at any depth (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if is_module(f"{node.module}.{a.name}")}
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.add("<relative import>")
    return {m for m in found if m == "<relative import>" or m == "tokenskip" or m.startswith("tokenskip.")}


def violations(module: str, source: str) -> list[str]:
    """The imports of ``module`` (whose code is ``source``) that break the layer rules, one line each."""
    own = room(module)
    bad = []
    for target in sorted(imported(source)):
        if target == "<relative import>":
            bad.append(f"{module}: relative import (write tokenskip.<package>...)")
            continue
        other = room(target)
        if other is None:   # the package root holds only the version: below everything
            continue
        if other not in RANK:
            # `from tokenskip.stages import STAGES` names an attribute, not a package: judged by its package
            continue
        if own == "pipeline" and other not in ("pipeline", "contract", "errors") and target not in (
                "tokenskip.stages", *(f"tokenskip.stages.{n}" for n in REGISTRY_NAMES)):
            bad.append(f"{module} -> {target}: the pipeline reaches stages only through the registry")
        elif module.startswith("tokenskip.stages.report") and other not in ("contract", "errors") and not \
                target.startswith("tokenskip.stages.report"):
            bad.append(f"{module} -> {target}: the report reads files only")
        elif own != other and RANK[other] >= RANK[own]:
            bad.append(f"{module} -> {target}: {other} is not below {own}")
    return bad


#: what the registry module exports (the pipeline may import these names from ``tokenskip.stages``)
REGISTRY_NAMES = ("STAGES", "Stage", "get_stage", "NAMES", "LAB_STAGES", "BY_NAME")


def test_every_package_has_a_layer():
    rooms = {room(m) for m in all_modules()} - {None}
    assert rooms <= set(RANK), rooms - set(RANK)
    assert {"contract", "task", "engines", "stages", "lab", "serving", "pipeline"} <= rooms


@pytest.mark.parametrize("module", all_modules())
def test_module_imports_only_downward(module):
    path = PKG.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    assert violations(module, path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(("module", "source", "expected"), [
    # an upward import, top-level and lazy
    ("tokenskip.contract.layout", "from tokenskip.stages.train import train", "stages is not below contract"),
    ("tokenskip.engines.vllm", "def f():\n    from tokenskip.lab.merge import run_merge\n", "lab is not below engines"),
    # sideways: stages, lab and serving never import each other
    ("tokenskip.lab.warmup", "import tokenskip.stages.build_sft", "stages is not below lab"),
    ("tokenskip.serving.app", "from tokenskip.stages.evaluate import run_evaluate", "stages is not below serving"),
    # the pipeline: registry only
    ("tokenskip.pipeline.plan", "from tokenskip.engines.models import resolve_model", "only through the registry"),
    ("tokenskip.stages.report.collect", "from tokenskip.methods import get_method", "reads files only"),
    ("tokenskip.task.grading", "from . import prompts", "relative import"),
])
def test_the_checker_catches_an_injected_import(module, source, expected):
    found = violations(module, source)
    assert len(found) == 1 and expected in found[0], found


def test_the_checker_accepts_downward_imports():
    assert violations("tokenskip.stages.train", "from tokenskip.finetune.lora import train\n"
                                                "from tokenskip.contract.layout import ADAPTER_FILE") == []
    assert violations("tokenskip.pipeline.plan", "from tokenskip.stages import STAGES, get_stage") == []


# ---------------------------------------------------------------- file names live in contract/layout.py

#: A string constant that is a file name of a run (``"metrics.json"``, ``".state.json"``, ``"train_loss.png"``).
FILE_NAME = re.compile(r"[A-Za-z_.-]+\.(jsonl?|md|png|safetensors)")
LAYOUT = "tokenskip.contract.layout"


def file_name_literals(source: str) -> list[str]:
    """The string constants of ``source`` that are file names (docstrings excluded), as ``line: 'name'``."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [f"{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and FILE_NAME.fullmatch(node.value)]


@pytest.mark.parametrize("module", [m for m in all_modules() if m != LAYOUT])
def test_file_names_only_in_layout(module):
    path = PKG.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    assert file_name_literals(path.read_text(encoding="utf-8")) == [], f"use a constant of {LAYOUT}"


def test_the_file_name_check_catches_an_injected_literal():
    assert file_name_literals('def f(out):\n    """Writes metrics.json."""\n    return out / "metrics.json"\n') \
        == ["3: 'metrics.json'"]
    assert file_name_literals('STATE = ".state.json"\nPLOT = "train_loss.png"\n') \
        == ["1: '.state.json'", "2: 'train_loss.png'"]
    # docstrings, messages and f-strings naming a file are not file-name constants
    assert file_name_literals('"""metrics.json"""\nHELP = "write metrics.json"\n'
                              'def g(x):\n    """report.md"""\n    return f"{x}.jsonl"\n') == []


def test_layout_itself_holds_the_file_names():
    source = (PKG / "contract" / "layout.py").read_text(encoding="utf-8")
    assert {"'metrics.json'", "'predictions.jsonl'", "'.state.json'"} <= {
        line.split(": ", 1)[1] for line in file_name_literals(source)}
