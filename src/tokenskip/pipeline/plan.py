"""The plan of a run: each stage's resolved configs, settings, inputs and fingerprint, and the check that
every input a stage reads exists or is made upstream."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import tokenskip.stages as stage_registry
from tokenskip.contract.config import to_dict
from tokenskip.contract.io import fingerprint, read_json
from tokenskip.contract.layout import MANIFEST, ORIGINAL, PREDICTIONS
from tokenskip.pipeline.recipe import (
    Recipe,
    RecipeError,
    build_config,
    data_hash,
    settings_of,
    stage_enabled,
    stage_section,
    with_inherited,
    without_runtime,
)
from tokenskip.stages import LAB_STAGES, STAGES, Stage, get_stage

logger = logging.getLogger(__name__)

@dataclass
class StagePlan:
    """One stage as resolved from a recipe: its configs, settings and fingerprint."""

    name: str
    enabled: bool
    settings: dict = field(default_factory=dict)
    configs: list = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    fingerprint: str = ""
    status: str = "new"     # new | done | changed | resume | disabled


class _Planner:
    """The state of one :func:`plan` call: the recipe, the manifest on disk, and what is planned so far."""

    def __init__(self, recipe: dict | Recipe):
        self.src = recipe.get("_path", "recipe") if isinstance(recipe, dict) else "recipe"
        self.lines = recipe.get("_lines", {}) if isinstance(recipe, dict) else {}   # setting path -> its line
        self.recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
        self.target = self.recipe          # the recipe as later stages see it (model = the lab's merged target)
        self.run = Path(self.recipe.run_dir) / self.recipe.name
        self.manifest = read_json(self.run / MANIFEST) if (self.run / MANIFEST).exists() else {"stages": {}}
        self.out = {s.name: self.run / s.folder for s in STAGES}
        self.upstream: dict[str, str] = {}    # enabled stage -> its fingerprint
        self.plans: list[StagePlan] = []

    def add(self, p: StagePlan) -> None:
        """Fingerprint ``p`` (settings + inputs), give it its status against the manifest, append it."""
        maker = next((s.name for s in STAGES if s.makes_model and s.name in self.upstream), None)
        if p.enabled and p.name not in LAB_STAGES and maker:
            p.inputs = {**p.inputs, maker: self.upstream[maker]}   # the target model
        p.fingerprint = fingerprint({"settings": without_runtime(p.settings), "inputs": p.inputs})
        prev = self.manifest.get("stages", {}).get(p.name)
        if not p.enabled:
            p.status = "disabled"
        elif prev is None:
            p.status = "new"
        elif prev.get("fingerprint") != p.fingerprint:
            p.status = "changed"
        else:
            p.status = "done" if prev.get("status") == "done" else "resume"
        if p.enabled:
            self.upstream[p.name] = p.fingerprint
        self.plans.append(p)

    def data_input(self, value: Any) -> Any:
        """How a data reference enters a fingerprint: a lab split (not on disk before its stage ran) by that
        stage's fingerprint, a file by its hash."""
        lab = self.out["lab_data"]
        if "lab_data" in self.upstream and isinstance(value, str) and Path(value).parent == lab:
            return {"lab_data": self.upstream["lab_data"], "file": Path(value).name}
        return data_hash(value)

    def wired(self, stage: Stage, sec: dict) -> None:
        """Fill the paths the recipe left unset: ``out``, then the stage's wires (registry)."""
        sec.setdefault("out", str(self.out[stage.name]))
        for w in stage.wires:
            if not w.only_if_planned or w.stage in self.upstream:
                sec.setdefault(w.field, str(self.out[w.stage] / w.path) if w.path else str(self.out[w.stage]))

    def section(self, stage: Stage) -> dict:
        sec = stage_section(self.recipe, stage.name)
        sec.pop("enabled", None)
        return sec

    def inputs(self, stage: Stage, sec: dict) -> dict:
        found = {name: self.upstream.get(name) for name in stage.inputs}
        if stage.data_input:
            found["data"] = self.data_input(sec.get("data"))
        return found

    def single(self, stage: Stage) -> StagePlan:
        """A stage with one config: recipe section + inherited keys + wired paths."""
        cls = stage.config_cls
        sec = with_inherited(self.recipe if stage.base_model else self.target, cls, self.section(stage))
        self.wired(stage, sec)
        if stage.name in ADJUST:
            ADJUST[stage.name](self, sec)
        cfg = build_config(cls, sec, f"{self.src}: stages.{stage.name}", self.lines)
        return StagePlan(stage.name, True, settings_of(cfg), [cfg], self.inputs(stage, sec))

    def grid(self, stage: Stage) -> StagePlan:
        """The evaluate stage: one config per (benchmark, method) of the recipe."""
        cls, sec, where = stage.config_cls, self.section(stage), f"{self.src}: stages.{stage.name}"
        benches = sec.pop("benchmarks", None) or [{}]
        methods = sec.pop("methods", None) or [{"method": ORIGINAL}]
        if not isinstance(benches, list) or not isinstance(methods, list):
            raise RecipeError(f"{where}.benchmarks and .methods must be lists")
        common = with_inherited(self.target, cls, sec)
        self.wired(stage, common)
        cfgs, data_hashes = [], {}
        for d in ({**common, **b, **m} for b in benches for m in methods):
            if stage_registry.method_uses_adapter(d.get("method", ORIGINAL)) and not d.get("adapter"):
                if "train" not in self.upstream:
                    raise RecipeError(f"{where} has method {d['method']} but no adapter: enable "
                                      "the train stage or set the method's adapter path")
                d["adapter"] = str(self.out["train"])  # the adapter folder is found in it when evaluate runs
            cfg = build_config(cls, d, where, self.lines)
            cfgs.append(cfg)
            if cfg.data:
                data_hashes[cfg.data] = self.data_input(cfg.data)
        uses_adapter = any(c.method_obj.uses_adapter for c in cfgs)
        inputs = {"train": self.upstream.get("train") if uses_adapter else None, "data": data_hashes}
        if uses_adapter and "calibrate" in self.upstream:   # the adapter's calibration decides its γ runs
            inputs["calibrate"] = self.upstream["calibrate"]
        return StagePlan(stage.name, True, {"runs": [to_dict(c) for c in cfgs]}, cfgs, inputs)

    def report(self, stage: Stage) -> StagePlan:
        """The report: reads the whole run folder, so every upstream fingerprint is its input."""
        sec = self.section(stage)
        cfg = build_config(stage.config_cls, {"run_dir": str(self.run), **sec}, f"{self.src}: stages.{stage.name}",
                           self.lines)
        return StagePlan(stage.name, True, sec, [cfg], dict(self.upstream))


def _wire_predictions(planner: _Planner, sec: dict) -> None:
    """compress on the target's own CoTs reads the generate stage's predictions."""
    if sec.get("cot_source", "self") in ("self", "predictions") and not sec.get("predictions"):
        if "generate" not in planner.upstream:
            raise RecipeError(f"{planner.src}: stages.compress uses self-generated CoTs (cot_source: self) but "
                              "the generate stage is disabled; enable it, set compress.predictions, or use "
                              "cot_source: gold")
        sec["predictions"] = str(planner.out["generate"] / PREDICTIONS)


#: stage-specific wiring beyond the registry's path wires
ADJUST: dict[str, Callable[[_Planner, dict], None]] = {"compress": _wire_predictions}


def plan(recipe: dict | Recipe) -> tuple[Path, list[StagePlan]]:
    """Resolve every stage of ``recipe`` into configs + fingerprints; nothing is run or written.

    Stages come from the registry (:data:`tokenskip.stages.STAGES`), in order; each is planned by its
    shape (one config, the evaluate grid, the report) with the paths its wires name. Fingerprints cover the
    settings as the recipe gives them (plus code defaults) and the inputs (data file hashes, upstream
    fingerprints); nothing that an earlier stage's output on disk would change.

    Raises:
        RecipeError: unknown keys or bad values at the top level or in a stage section (names the
            recipe, the section and the key).
    """
    planner = _Planner(recipe)
    shapes = {"single": planner.single, "grid": planner.grid, "report": planner.report}
    for stage in STAGES:
        if stage.lab and stage.name not in planner.recipe.stages:
            continue   # recipes outside the CPU lab are planned as if the lab stages did not exist
        if not stage_enabled(planner.recipe, stage.name):
            planner.add(StagePlan(stage.name, False))
            continue
        planner.add(shapes[stage.shape](stage))
        if stage.makes_model:
            planner.target = dataclasses.replace(planner.recipe, model=str(planner.out[stage.name]))
    return planner.run, planner.plans


# --------------------------------------------------------------------------- inputs

#: config fields that name an input file or folder, checked before anything runs
PATH_FIELDS = ("data", "predictions", "compressed", "adapter")


def missing_inputs(run: Path, plans: list[StagePlan]) -> list[str]:
    """Every data file, model and adapter the enabled stages read that neither exists nor is written by an
    earlier enabled stage, one line each (``stages.<stage>.<field>: <value>: <why>``)."""
    problems: list[str] = []
    produced: list[Path] = []
    models: dict[str, list[str]] = {}
    for p in plans:
        if not p.enabled:
            continue
        for cfg in p.configs:
            used = cfg.input_fields() if hasattr(cfg, "input_fields") else PATH_FIELDS
            for f in PATH_FIELDS:
                v = getattr(cfg, f, None) if f in used else None
                if not v or (f == "data" and not stage_registry.looks_like_path(v)):
                    continue
                path = Path(v).resolve()
                if path.exists() or any(path == d or d in path.parents for d in produced):
                    continue
                problems.append(f"stages.{p.name}.{f}: {v}: not found, and no earlier stage writes it")
            model = getattr(cfg, "model", None)
            made = model and any(Path(model).resolve() == d or d in Path(model).resolve().parents for d in produced)
            if model and not made:  # a model made by an earlier stage (the lab's merge) exists when it is needed
                models.setdefault(model, []).append(p.name)
        produced.append((run / get_stage(p.name).folder).resolve())
    for model, users in models.items():
        why = stage_registry.model_problem(model)
        if why:
            problems.append(f"model of {', '.join(dict.fromkeys(users))}: {why}")
    return list(dict.fromkeys(problems))
