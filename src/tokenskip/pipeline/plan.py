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
    stage_enabled,
    stage_section,
    settings_of,
    with_inherited,
    without_runtime,
)
from tokenskip.stages import LAB_STAGES, get_stage
from tokenskip.stages import NAMES as STAGES

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


def plan(recipe: dict | Recipe) -> tuple[Path, list[StagePlan]]:
    """Resolve every stage of ``recipe`` into configs + fingerprints; nothing is run or written.

    Fingerprints cover the settings as the recipe gives them (plus code defaults) and the inputs (data
    file hashes, upstream fingerprints); nothing that an earlier stage's output on disk would change.

    Raises:
        RecipeError: unknown keys or bad values at the top level or in a stage section (names the
            recipe, the section and the key).
    """
    src = recipe.get("_path", "recipe") if isinstance(recipe, dict) else "recipe"
    recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
    run = Path(recipe.run_dir) / recipe.name
    manifest = read_json(run / MANIFEST) if (run / MANIFEST).exists() else {"stages": {}}
    plans: list[StagePlan] = []
    upstream: dict[str, str] = {}
    out = {name: run / get_stage(name).folder for name in STAGES}

    def add(p: StagePlan) -> None:
        if p.enabled and p.name not in LAB_STAGES and "merge" in upstream:
            p.inputs = {**p.inputs, "merge": upstream["merge"]}   # the target model
        p.fingerprint = fingerprint({"settings": without_runtime(p.settings), "inputs": p.inputs})
        prev = manifest.get("stages", {}).get(p.name)
        if not p.enabled:
            p.status = "disabled"
        elif prev is None:
            p.status = "new"
        elif prev.get("fingerprint") != p.fingerprint:
            p.status = "changed"
        elif prev.get("status") == "done":
            p.status = "done"
        else:
            p.status = "resume"
        if p.enabled:
            upstream[p.name] = p.fingerprint
        plans.append(p)

    def single(stage: str, defaults: dict, inputs: Callable[[dict], dict],
               adjust: Callable[[dict], None] | None = None) -> None:
        """A stage with one config: recipe section + inherited keys + wired paths -> plan."""
        if stage in LAB_STAGES and stage not in recipe.stages:
            return   # recipes outside the CPU lab are planned as if the lab stages did not exist
        if not stage_enabled(recipe, stage):
            add(StagePlan(stage, False))
            return
        cls = get_stage(stage).config_cls
        sec = with_inherited(recipe if stage in LAB_STAGES else target, cls, stage_section(recipe, stage))
        sec.pop("enabled", None)
        for k, v in {"out": str(out[stage]), **defaults}.items():
            sec.setdefault(k, v)
        if adjust:
            adjust(sec)
        cfg = build_config(cls, sec, f"{src}: stages.{stage}")
        add(StagePlan(stage, True, settings_of(cfg), [cfg], inputs(sec)))

    def wire_compress(sec: dict) -> None:
        if sec.get("cot_source", "self") in ("self", "predictions") and not sec.get("predictions"):
            if "generate" not in upstream:
                raise RecipeError(f"{src}: stages.compress uses self-generated CoTs (cot_source: self) but "
                                  "the generate stage is disabled; enable it, set compress.predictions, or use "
                                  "cot_source: gold")
            sec["predictions"] = str(out["generate"] / PREDICTIONS)

    def data_input(value: Any) -> Any:
        # a lab split does not exist before its stage ran: identify it by that stage's fingerprint
        if "lab_data" in upstream and isinstance(value, str) and Path(value).parent == out["lab_data"]:
            return {"lab_data": upstream["lab_data"], "file": Path(value).name}
        return data_hash(value)

    target = recipe
    single("lab_data", {}, lambda sec: {})
    single("warmup", {"data": str(out["lab_data"])}, lambda sec: {"lab_data": upstream.get("lab_data")})
    single("merge", {"adapter": str(out["warmup"] / "adapter")}, lambda sec: {"warmup": upstream.get("warmup")})
    target = dataclasses.replace(recipe, model=str(out["merge"])) if "merge" in upstream else recipe
    lab_train = {"data": str(out["lab_data"] / "train.jsonl")} if "lab_data" in upstream else {}

    single("generate", lab_train, lambda sec: {"data": data_input(sec.get("data"))})
    single("compress", lab_train, lambda sec: {"generate": upstream.get("generate"), "data": data_input(sec.get("data"))},
           wire_compress)
    single("build_sft", {"compressed": str(out["compress"]), **lab_train},
           lambda sec: {"compress": upstream.get("compress"), "data": data_input(sec.get("data"))})
    single("train", {"data": str(out["build_sft"])}, lambda sec: {"build_sft": upstream.get("build_sft")})

    # evaluate: benchmarks x methods
    if stage_enabled(recipe, "evaluate"):
        cls = get_stage("evaluate").config_cls
        sec = stage_section(recipe, "evaluate")
        sec.pop("enabled", None)
        benches = sec.pop("benchmarks", None) or [{}]
        methods = sec.pop("methods", None) or [{"method": ORIGINAL}]
        if not isinstance(benches, list) or not isinstance(methods, list):
            raise RecipeError(f"{src}: stages.evaluate.benchmarks and .methods must be lists")
        common = with_inherited(target, cls, sec)
        if "lab_data" in upstream:
            common.setdefault("data", str(out["lab_data"] / "test.jsonl"))
        cfgs, data_hashes = [], {}
        for b in benches:
            for m in methods:
                d = {**common, **b, **m}
                d.setdefault("out", str(out["evaluate"]))
                if stage_registry.method_uses_adapter(d.get("method", ORIGINAL)) and not d.get("adapter"):
                    if "train" not in upstream:
                        raise RecipeError(f"{src}: stages.evaluate has method {d['method']} but no adapter: enable "
                                          "the train stage or set the method's adapter path")
                    d["adapter"] = str(out["train"])  # the adapter folder is found in it when evaluate runs
                cfg = build_config(cls, d, f"{src}: stages.evaluate")
                cfgs.append(cfg)
                if cfg.data:
                    data_hashes[cfg.data] = data_input(cfg.data)
        uses_adapter = any(c.method_obj.uses_adapter for c in cfgs)
        add(StagePlan("evaluate", True, {"runs": [to_dict(c) for c in cfgs]}, cfgs,
                      {"train": upstream.get("train") if uses_adapter else None, "data": data_hashes}))
    else:
        add(StagePlan("evaluate", False))

    if stage_enabled(recipe, "report"):
        sec = stage_section(recipe, "report")
        sec.pop("enabled", None)
        cfg = build_config(get_stage("report").config_cls, {"run_dir": str(run), **sec}, f"{src}: stages.report")
        add(StagePlan("report", True, sec, [cfg], {k: v for k, v in upstream.items()}))
    else:
        add(StagePlan("report", False))
    return run, plans


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
