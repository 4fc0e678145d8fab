"""The rooms of the house, held apart by reading the imports (``ast``): stages talk through files.

* a stage module never imports another stage module (they share the cores: rollout, records, layout...);
* the report imports only records / layout / io / config (plus the γ helpers and the error classes
  those rest on): it reads files, never another stage's code;
* the pipeline never imports a generation engine (``tokenskip.backends...``) nor a stage module by name
  (it reaches stages through the stage registry).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tokenskip.stages import STAGES

SRC = Path(__file__).resolve().parents[1] / "src"
STAGE_MODULES = {s.module for s in STAGES}


def module_file(name: str) -> Path:
    p = SRC / Path(*name.split("."))
    return p / "__init__.py" if p.is_dir() else p.with_suffix(".py")


def tokenskip_imports(name: str) -> set[str]:
    """Every ``tokenskip.*`` module ``name`` imports, at any depth of its code (lazy imports included)."""
    tree = ast.parse(module_file(name).read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if module_file(f"{node.module}.{a.name}").exists()}
    return {m for m in found if m == "tokenskip" or m.startswith("tokenskip.")}


def test_every_registered_stage_module_exists():
    assert all(module_file(m).exists() for m in STAGE_MODULES)
    assert [s.name for s in STAGES] == ["lab_data", "warmup", "merge", "generate", "compress", "build_sft", "train",
                                        "evaluate", "report"]


#: the one allowed exception: the lab's warm-up is a training run on SFT records (same config and trainer)
ALLOWED = {"tokenskip.warmup": {"tokenskip.train", "tokenskip.sft"}}


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_no_stage_imports_another_stage(stage):
    others = STAGE_MODULES - {stage} - ALLOWED.get(stage, set())
    assert not tokenskip_imports(stage) & others, f"{stage} imports a stage: {tokenskip_imports(stage) & others}"


REPORT_MODULES = ["tokenskip.report"] + [f"tokenskip.report.{p.stem}" for p in sorted((SRC / "tokenskip" / "report").glob("*.py"))
                                         if p.stem != "__init__"]


@pytest.mark.parametrize("module", REPORT_MODULES)
def test_report_reads_files_only(module):
    # + the γ helpers and the error classes those rest on, the console (what the command prints) and the
    # report's own parts (collect / markdown / plots)
    allowed = {"tokenskip.records", "tokenskip.layout", "tokenskip.io", "tokenskip.config", "tokenskip.ratios",
               "tokenskip.errors", "tokenskip.console", *REPORT_MODULES}
    assert len(REPORT_MODULES) == 4  # __init__ (runner), collect, markdown, plots
    assert tokenskip_imports(module) <= allowed, tokenskip_imports(module) - allowed


def test_pipeline_imports_no_engine_and_no_stage_by_name():
    imports = tokenskip_imports("tokenskip.pipeline")
    assert not {m for m in imports if m.startswith("tokenskip.backends")}
    assert not imports & STAGE_MODULES


def test_the_checker_sees_lazy_imports():
    # compress imports the data loader only inside a function: the walk must see such imports, or the
    # tests above prove nothing
    assert "tokenskip.data" in tokenskip_imports("tokenskip.compress.runner")
    assert "tokenskip.rollout" in tokenskip_imports("tokenskip.generate")
