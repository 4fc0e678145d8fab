"""``tokenskip run RECIPE``: the whole TokenSkip pipeline from one YAML recipe, resumably.

Stages, in order (:mod:`tokenskip.stages`): ``generate → compress → build_sft → train → evaluate →
report``, preceded in the CPU lab's recipes by ``lab_data → warmup → merge`` (problems, a warm-up
fine-tune on their worked solutions, and the merged target model). Each writes into
``<run_dir>/<name>/<stage>/``; ``manifest.json`` beside them records, per stage, the resolved settings,
a fingerprint of settings + inputs (data file hashes, upstream fingerprints), timings and status.

* A stage whose fingerprint is unchanged and whose status is ``done`` is skipped.
* A changed stage reruns, and so does everything downstream, because downstream fingerprints
  include it. compress, build_sft and train start from an empty folder; generate and evaluate keep
  the rows whose own settings fingerprint still matches (a larger ``limit`` only adds rows; a changed
  method reruns only that method's γ runs).
* A killed run resumes: a stage left ``running`` with the same fingerprint keeps its folder, and
  the stage's own resumability (row files, trainer checkpoints) continues where it stopped.

With ``lab_data`` enabled, the ``data`` of generate/compress/build_sft defaults to its
``train.jsonl`` and every evaluation benchmark's to its ``test.jsonl``; with ``merge`` enabled, the
merged folder is the ``model`` of every stage after it (the top-level ``model`` is the base of the
warm-up). When a lab stage runs, changed generate/evaluate stages start from an empty folder (their
rows came from another target model).

Recipe layout (see ``recipes/``)::

    name: demo                      # run folder name
    run_dir: runs                   # parent folder (default: runs)
    model: smollm2-135m-instruct    # default `model` of every stage
    threads: 2                      # default `threads` of every stage
    dtype / device / seed / benchmark / backend / prompt_style / system_prompt  # also copied into every
                                    # stage with such a field
    stages:
      lab_data:  {...LabDataConfig fields}             # CPU lab only
      warmup:    {...WarmupConfig fields}              # CPU lab only
      merge:     {...MergeConfig fields}               # CPU lab only
      generate:  {enabled: false, ...GenerationConfig fields}
      compress:  {...CompressConfig fields}
      build_sft: {...SFTDataConfig fields}
      train:     {...TrainConfig fields}
      evaluate:  {...EvaluateConfig fields shared by all runs,
                  benchmarks: [{benchmark, data, limit, ...}], methods: [{method, ratios, ...}]}
      report:    {...ReportConfig fields}

Unknown keys (top level or in any stage section) are errors at plan time, so ``--dry-run`` catches
typos; so is a data file, model or adapter that neither exists nor is made by an earlier stage.
Settings are fingerprinted as written (defaults that depend on the disk, such as build-sft's ratios,
are resolved only when the stage runs), so an unchanged recipe reruns nothing.

Paths between stages (``out``, ``predictions``, ``compressed``, ``data`` of train, ``adapter``) are
filled in by the pipeline; a recipe may still set them to use outside inputs.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from tokenskip.config import dataclass_from_dict, to_dict
from tokenskip.console import duration, say
from tokenskip.errors import TokenskipError
from tokenskip.io import file_hash, fingerprint, read_json, write_json_atomic
from tokenskip.layout import MANIFEST, ORIGINAL, PREDICTIONS, find_adapter
from tokenskip.stages import LAB_STAGES
from tokenskip.stages import NAMES as STAGES
from tokenskip.stages import get_stage

logger = logging.getLogger(__name__)

#: keys at the top of a recipe that are copied into every stage that has such a field
INHERITED = ("model", "threads", "dtype", "device", "seed", "benchmark", "prompt_style", "backend", "system_prompt")
#: settings that change how fast a stage runs, never what it writes: left out of fingerprints
RUNTIME_KEYS = ("threads",)
#: Settings where the paper's (reference) setting and this project's differ; a plan prints them per stage.
MODE_KEYS = ("prompt_style", "compat", "reference_family", "answer_line", "validation_share", "lora_dropout",
             "batch_size", "grad_accum", "force_answer", "scale_max_new_tokens", "max_model_len")


class RecipeError(TokenskipError, ValueError):
    """A recipe that cannot be used; the message names the file and the key."""


# --------------------------------------------------------------------------- the recipe

@dataclass
class Recipe:
    """The top level of a recipe (see the module docstring); every other key is an error.

    Attributes:
        name: run folder name; run_dir: its parent folder.
        stages: ``{stage name: section}``; each section is checked against its stage's config class.
        model, threads, dtype, device, seed, benchmark, prompt_style, backend, system_prompt: defaults of every
            stage that has such a field (``prompt_style: reference`` makes generate, build_sft and evaluate use the
            reference's prompts; ``backend: vllm`` makes generate and evaluate decode with vLLM; ``system_prompt``
            is the system turn of warmup, generate, build_sft and evaluate alike, so the target model is trained
            and asked with the same one — the paper's Qwen runs used "You are a helpful assistant.").
    """

    name: str = ""
    stages: dict = field(default_factory=dict)
    run_dir: str = "runs"
    model: str | None = None
    threads: int | str | None = None  # N or auto (tokenskip.hardware)
    dtype: str | None = None
    device: str | None = None
    seed: int | None = None
    benchmark: str | None = None
    prompt_style: str | None = None  # chat-template or reference (paper-exact prompts, issue 13)
    backend: str | None = None  # hf, vllm or openai: the generation engine of generate and evaluate
    system_prompt: str | None = None  # the system turn of every stage that writes or reads prompts

    def validate(self) -> None:
        if not self.name:
            raise ValueError("missing 'name'")
        if not isinstance(self.stages, dict) or not self.stages:
            raise ValueError("missing 'stages' mapping")
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; valid: {list(STAGES)}")
        for name, sec in self.stages.items():
            if sec is not None and not isinstance(sec, dict):
                raise ValueError(f"stages.{name}: expected a mapping of settings, got {sec!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        """Check and build a recipe from its YAML mapping (keys starting with ``_`` are the loader's).

        Raises:
            RecipeError: an unknown top-level key (named), a value of the wrong type, no name or stages.
        """
        src = data.get("_path", "recipe")
        try:
            return dataclass_from_dict(cls, {k: v for k, v in data.items() if not k.startswith("_")},
                                       f"{src}: top level")
        except (TypeError, ValueError) as e:
            msg = str(e)
            raise RecipeError(msg if msg.startswith(str(src)) else f"{src}: {msg}") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read a YAML recipe and apply ``--set key.sub=value`` overrides (values parsed as YAML).

    Returns the recipe mapping (checked by :meth:`Recipe.from_dict`), with ``_path`` added.

    Raises:
        RecipeError: unreadable YAML, an unknown top-level key, missing ``name``/``stages``, unknown
            stage, bad override.
    """
    path = Path(path)
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level")
    for ov in overrides or []:
        if "=" not in ov:
            raise RecipeError(f"--set {ov!r}: expected key.path=value")
        key, value = ov.split("=", 1)
        node = recipe
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {key}: {p!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(value)
    recipe["_path"] = str(path)
    Recipe.from_dict(recipe)
    return recipe


def _section(recipe: Recipe, stage: str) -> dict:
    sec = recipe.stages.get(stage)
    return {} if sec is None else dict(sec)


def _enabled(recipe: Recipe, stage: str) -> bool:
    return stage in recipe.stages and _section(recipe, stage).get("enabled", True) is not False


def _with_inherited(recipe: Recipe, cls, sec: dict) -> dict:
    names = {f.name for f in fields(cls)}
    out = {k: getattr(recipe, k) for k in INHERITED if getattr(recipe, k) is not None and k in names}
    out.update(sec)
    return out


def _settings(cfg) -> dict:
    """A config's settings for its fingerprint, without those its ``unused_settings()`` names (e.g. generate's
    sampling settings under greedy decoding), so they do not re-plan runs they cannot change."""
    out = to_dict(cfg)
    for k in getattr(cfg, "unused_settings", tuple)():
        out.pop(k, None)
    return out


def _build(cls, data: dict, where: str):
    try:
        return dataclass_from_dict(cls, data, where)
    except (TypeError, ValueError) as e:
        raise RecipeError(str(e)) from None


def _without_runtime(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_runtime(v) for k, v in obj.items() if k not in RUNTIME_KEYS}
    if isinstance(obj, list):
        return [_without_runtime(v) for v in obj]
    return obj


def _uses_adapter(method: str) -> bool:
    from tokenskip.methods import get_method

    try:
        return get_method(method).uses_adapter
    except ValueError:
        return False  # the config check names the unknown method


def _data_hash(value: Any) -> str | None:
    return file_hash(value) if isinstance(value, str) and Path(value).is_file() else None


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
        p.fingerprint = fingerprint({"settings": _without_runtime(p.settings), "inputs": p.inputs})
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
        if not _enabled(recipe, stage):
            add(StagePlan(stage, False))
            return
        cls = get_stage(stage).config_cls
        sec = _with_inherited(recipe if stage in LAB_STAGES else target, cls, _section(recipe, stage))
        sec.pop("enabled", None)
        for k, v in {"out": str(out[stage]), **defaults}.items():
            sec.setdefault(k, v)
        if adjust:
            adjust(sec)
        cfg = _build(cls, sec, f"{src}: stages.{stage}")
        add(StagePlan(stage, True, _settings(cfg), [cfg], inputs(sec)))

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
        return _data_hash(value)

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
    if _enabled(recipe, "evaluate"):
        cls = get_stage("evaluate").config_cls
        sec = _section(recipe, "evaluate")
        sec.pop("enabled", None)
        benches = sec.pop("benchmarks", None) or [{}]
        methods = sec.pop("methods", None) or [{"method": ORIGINAL}]
        if not isinstance(benches, list) or not isinstance(methods, list):
            raise RecipeError(f"{src}: stages.evaluate.benchmarks and .methods must be lists")
        common = _with_inherited(target, cls, sec)
        if "lab_data" in upstream:
            common.setdefault("data", str(out["lab_data"] / "test.jsonl"))
        cfgs, data_hashes = [], {}
        for b in benches:
            for m in methods:
                d = {**common, **b, **m}
                d.setdefault("out", str(out["evaluate"]))
                if _uses_adapter(d.get("method", ORIGINAL)) and not d.get("adapter"):
                    if "train" not in upstream:
                        raise RecipeError(f"{src}: stages.evaluate has method {d['method']} but no adapter: enable "
                                          "the train stage or set the method's adapter path")
                    d["adapter"] = str(out["train"])  # the adapter folder is found in it when evaluate runs
                cfg = _build(cls, d, f"{src}: stages.evaluate")
                cfgs.append(cfg)
                if cfg.data:
                    data_hashes[cfg.data] = data_input(cfg.data)
        uses_adapter = any(c.method_obj.uses_adapter for c in cfgs)
        add(StagePlan("evaluate", True, {"runs": [to_dict(c) for c in cfgs]}, cfgs,
                      {"train": upstream.get("train") if uses_adapter else None, "data": data_hashes}))
    else:
        add(StagePlan("evaluate", False))

    if _enabled(recipe, "report"):
        sec = _section(recipe, "report")
        sec.pop("enabled", None)
        cfg = _build(get_stage("report").config_cls, {"run_dir": str(run), **sec}, f"{src}: stages.report")
        add(StagePlan("report", True, sec, [cfg], {k: v for k, v in upstream.items()}))
    else:
        add(StagePlan("report", False))
    return run, plans


# --------------------------------------------------------------------------- inputs

#: config fields that name an input file or folder, checked before anything runs
PATH_FIELDS = ("data", "predictions", "compressed", "adapter")


def _model_problem(name: str) -> str | None:
    """Why model ``name`` cannot be loaded here, or ``None`` if it can (or cannot be told offline)."""
    from tokenskip.models import resolve_model

    try:
        ref = resolve_model(name)
    except FileNotFoundError as e:
        return str(e)
    if Path(ref.path).exists():
        return None
    if name.startswith((".", "/")) or os.sep + os.sep in name or name.count("/") != 1:
        return f"model {name!r}: no such folder, alias or Hub id"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            return f"model {name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    return None


def missing_inputs(run: Path, plans: list[StagePlan]) -> list[str]:
    """Every data file, model and adapter the enabled stages read that neither exists nor is written by an
    earlier enabled stage, one line each (``stages.<stage>.<field>: <value>: <why>``)."""
    from tokenskip.data import looks_like_path

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
                if not v or (f == "data" and not looks_like_path(v)):
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
        why = _model_problem(model)
        if why:
            problems.append(f"model of {', '.join(dict.fromkeys(users))}: {why}")
    return list(dict.fromkeys(problems))


# --------------------------------------------------------------------------- execution

def _execute(p: StagePlan, run: Path) -> None:
    stage = get_stage(p.name)
    if p.name == "evaluate":
        cfgs = []
        for cfg in p.configs:
            cfg = copy.copy(cfg)
            if cfg.method_obj.uses_adapter and Path(cfg.adapter).resolve() == (run / get_stage("train").folder).resolve():
                cfg.adapter = str(find_adapter(cfg.adapter))
            cfgs.append(cfg)
        stage.run(cfgs)  # prints one line per run
        return
    result = stage.run(p.configs[0])
    summary = getattr(stage.load(), "summary_lines", None)
    for line in summary(result) if summary else []:
        say(f"[{p.name}] {line}")


def mode_summary(p: StagePlan) -> str:
    """The stage's settings among :data:`MODE_KEYS`, e.g. ``compat=reference`` (evaluate: per method)."""
    def pick(s: dict) -> list[str]:
        out = []
        for k in MODE_KEYS:
            v = s.get(k)
            if v is None or (k == "reference_family" and s.get("compat") != "reference"):
                continue
            if k == "force_answer":
                if s.get("method") == "truncation":
                    out.append("truncation=" + ("force-answer" if v else "plain-cap"))
            elif k == "scale_max_new_tokens":
                if s.get("method") == "tokenskip" and v:
                    out.append("max_new_tokens×γ")
            elif k != "batch_size" or "lora_dropout" in s:
                out.append(f"{k}={v}")
        return out

    if p.name != "evaluate":
        return ", ".join(pick(p.settings))
    parts: list[str] = []
    for s in p.settings.get("runs", []):
        for item in pick(s):
            if item not in parts:
                parts.append(item)
    return ", ".join(parts)


def run_pipeline(recipe: dict | Recipe, stages: list[str] | None = None, dry_run: bool = False,
                 echo: Callable[[str], None] = print) -> list[StagePlan]:
    """Run (or with ``dry_run`` only print) the recipe's plan; returns the stage plans.

    ``stages`` restricts execution to those stage names (others are neither run nor cleared).

    Raises:
        RecipeError: bad recipe, unknown ``stages``, or inputs that are missing (listed, before anything runs).
    """
    src = recipe.get("_path") if isinstance(recipe, dict) else None
    recipe_obj = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
    run, plans = plan(recipe)
    if stages:
        bad = set(stages) - set(STAGES)
        if bad:
            raise RecipeError(f"--stages: unknown {sorted(bad)}; valid: {list(STAGES)}")
    echo(f"run folder: {run}")
    for p in plans:
        selected = p.enabled and (not stages or p.name in stages)
        action = ("skip (disabled)" if not p.enabled else "skip (not selected)" if not selected else
                  "skip (done, unchanged)" if p.status == "done" else
                  "resume" if p.status == "resume" else "rerun (settings or inputs changed)" if p.status == "changed"
                  else "run")
        echo(f"  {p.name:<10} {action:<34} fingerprint {p.fingerprint[:8] if p.enabled else '-'}")
        if p.enabled and (mode := mode_summary(p)):
            echo(f"             {mode}")
    missing = missing_inputs(run, plans)
    if missing:
        raise RecipeError(f"{src or 'recipe'}: {len(missing)} missing input(s); nothing was run\n" + "\n".join(missing))
    if dry_run:
        return plans
    t_start = time.perf_counter()
    run.mkdir(parents=True, exist_ok=True)
    mpath = run / MANIFEST
    manifest = read_json(mpath) if mpath.exists() else {}
    manifest.update({"name": recipe_obj.name, "recipe": src,
                     "recipe_resolved": {k: v for k, v in to_dict(recipe_obj).items()}})
    manifest.setdefault("stages", {})
    write_json_atomic(mpath, manifest)
    lab_ran = False
    for p in plans:
        if not p.enabled or (stages and p.name not in stages) or p.status == "done":
            continue
        stage = get_stage(p.name)
        folder = run / stage.folder
        # stages whose row files carry their own settings fingerprints keep their folders, so rows still
        # valid (e.g. after a larger --limit, or for an unchanged method) are reused, stale ones not --
        # unless a lab stage just ran: the merged target has the same path but other weights. The report
        # writes into the run folder itself (folder ""), which is never cleared.
        keep = stage.keeps_rows and not lab_ran
        lab_ran = lab_ran or stage.lab
        if p.status == "changed" and stage.folder and folder.exists() and not keep:
            logger.info("%s: settings or inputs changed; clearing %s", p.name, folder)
            shutil.rmtree(folder)
        entry = {"status": "running", "fingerprint": p.fingerprint, "settings": p.settings, "inputs": p.inputs,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        manifest["stages"][p.name] = entry
        write_json_atomic(mpath, manifest)
        echo(f"== stage {p.name}")
        t0 = time.perf_counter()
        try:
            _execute(p, run)
        except BaseException:
            entry["status"] = "failed"
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            write_json_atomic(mpath, manifest)
            raise
        entry.update(status="done", seconds=round(time.perf_counter() - t0, 1),
                     finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        write_json_atomic(mpath, manifest)
        echo(f"== stage {p.name} done in {duration(entry['seconds'])}")
    ran = [p.name for p in plans if p.enabled and (not stages or p.name in stages) and p.status != "done"]
    echo(f"== {len(ran)} stage(s) run ({', '.join(ran) or 'none'}) in {duration(time.perf_counter() - t_start)}; "
         f"{len(plans) - len(ran)} skipped")
    if (run / "report.md").exists():
        echo(f"report: {run / 'report.md'}")
    return plans


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="YAML recipe (see recipes/)")
    parser.add_argument("--stages", nargs="+", default=None,
                        help=f"only these stages (space or comma separated; from {', '.join(STAGES)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set stages.train.max_steps=10 (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan, check every setting and input, and exit")


def run_cli(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    stages = None
    if args.stages:
        stages = [s.replace("-", "_") for a in args.stages for s in a.replace(",", " ").split()]
    # the dry-run plan is the command's output; a real run's progress lines are silenced by --quiet
    run_pipeline(recipe, stages, args.dry_run, echo=print if args.dry_run else say)
    return 0
