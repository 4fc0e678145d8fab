"""``tokenskip run RECIPE``: the whole TokenSkip pipeline from one YAML recipe, resumably.

Stages, in order: ``generate → compress → build_sft → train → evaluate → report``, preceded in the CPU
lab's recipes by ``lab_data → warmup → merge`` (problems, a warm-up fine-tune on their worked
solutions, and the merged target model). Each writes into ``<run_dir>/<name>/<stage>/``;
``manifest.json`` beside them records, per stage, the resolved settings, a fingerprint of settings +
inputs (data file hashes, upstream fingerprints), timings and status.

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
      report:    {}

Paths between stages (``out``, ``predictions``, ``compressed``, ``data`` of train, ``adapter``) are
filled in by the pipeline; a recipe may still set them to use outside inputs.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from tokenskip.config import dataclass_from_dict, to_dict
from tokenskip.console import duration, say
from tokenskip.io import file_hash, fingerprint, read_json, write_json_atomic

logger = logging.getLogger(__name__)

#: the CPU lab's stages (tokenskip.lab_data, tokenskip.warmup, tokenskip.merge), before the method's
LAB_STAGES = ("lab_data", "warmup", "merge")
STAGES = (*LAB_STAGES, "generate", "compress", "build_sft", "train", "evaluate", "report")
#: keys at the top of a recipe that are copied into every stage that has such a field
INHERITED = ("model", "threads", "dtype", "device", "seed", "benchmark", "prompt_style")

#: Settings where the paper's (reference) setting and this project's differ; a plan prints them per stage.
MODE_KEYS = ("prompt_style", "compat", "reference_family", "answer_line", "validation_share", "lora_dropout",
             "batch_size", "grad_accum", "force_answer", "scale_max_new_tokens", "max_model_len")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the key."""


# --------------------------------------------------------------------------- recipe handling

def load_recipe(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read a YAML recipe and apply ``--set key.sub=value`` overrides (values parsed as YAML).

    Raises:
        RecipeError: unreadable YAML, missing ``name``/``stages``, unknown stage, bad override.
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
    if not recipe.get("name"):
        raise RecipeError(f"{path}: missing 'name'")
    stages = recipe.get("stages")
    if not isinstance(stages, dict):
        raise RecipeError(f"{path}: missing 'stages' mapping")
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise RecipeError(f"{path}: unknown stage(s) {sorted(unknown)}; valid: {list(STAGES)}")
    recipe["_path"] = str(path)
    return recipe


def _stage_cls(stage: str):
    if stage == "lab_data":
        from tokenskip.lab_data import LabDataConfig
        return LabDataConfig
    if stage == "warmup":
        from tokenskip.warmup import WarmupConfig
        return WarmupConfig
    if stage == "merge":
        from tokenskip.merge import MergeConfig
        return MergeConfig
    if stage == "generate":
        from tokenskip.generate import GenerationConfig
        return GenerationConfig
    if stage == "compress":
        from tokenskip.compress.cli import CompressConfig
        return CompressConfig
    if stage == "build_sft":
        from tokenskip.sft import SFTDataConfig
        return SFTDataConfig
    if stage == "train":
        from tokenskip.train import TrainConfig
        return TrainConfig
    if stage == "evaluate":
        from tokenskip.evaluate import EvaluateConfig
        return EvaluateConfig
    raise KeyError(stage)


def _section(recipe: dict, stage: str) -> dict:
    sec = recipe["stages"].get(stage)
    return {} if sec is None else dict(sec)


def _enabled(recipe: dict, stage: str) -> bool:
    return stage in recipe["stages"] and _section(recipe, stage).get("enabled", True) is not False


def _with_inherited(recipe: dict, cls, sec: dict) -> dict:
    names = {f.name for f in fields(cls)}
    out = {k: recipe[k] for k in INHERITED if k in recipe and k in names}
    out.update(sec)
    return out


def _build(cls, data: dict, where: str):
    try:
        return dataclass_from_dict(cls, data, where)
    except (TypeError, ValueError) as e:
        raise RecipeError(str(e)) from None


#: settings that change how fast a stage runs, never what it writes: left out of fingerprints
RUNTIME_KEYS = ("threads",)


def _without_runtime(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_runtime(v) for k, v in obj.items() if k not in RUNTIME_KEYS}
    if isinstance(obj, list):
        return [_without_runtime(v) for v in obj]
    return obj


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


def plan(recipe: dict) -> tuple[Path, list[StagePlan]]:
    """Resolve every stage of ``recipe`` into configs + fingerprints; nothing is run or written.

    Raises:
        RecipeError: unknown keys or bad values in a stage section (names the recipe and stage).
    """
    src = recipe.get("_path", "recipe")
    run = Path(recipe.get("run_dir", "runs")) / recipe["name"]
    manifest = read_json(run / "manifest.json") if (run / "manifest.json").exists() else {"stages": {}}
    plans: list[StagePlan] = []
    upstream: dict[str, str] = {}

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

    def single(stage: str, folder: Path, defaults: dict, inputs: Callable[[dict], dict],
               adjust: Callable[[dict], None] | None = None) -> None:
        """A stage with one config: recipe section + inherited keys + wired paths -> plan."""
        if stage in LAB_STAGES and stage not in recipe["stages"]:
            return   # recipes outside the CPU lab are planned as if the lab stages did not exist
        if not _enabled(recipe, stage):
            add(StagePlan(stage, False))
            return
        cls = _stage_cls(stage)
        sec = _with_inherited(target if stage not in LAB_STAGES else recipe, cls, _section(recipe, stage))
        sec.pop("enabled", None)
        for k, v in {"out": str(folder), **defaults}.items():
            sec.setdefault(k, v)
        if adjust:
            adjust(sec)
        cfg = _build(cls, sec, f"{src}: stages.{stage}")
        add(StagePlan(stage, True, to_dict(cfg), [cfg], inputs(sec)))

    gen_out, comp_out, sft_out, train_out = run / "generate", run / "compress", run / "sft", run / "train"
    lab_out, warm_out, merge_out = run / "lab_data", run / "warmup", run / "merge"

    def data_input(value: Any) -> Any:
        # a lab split does not exist before its stage ran: identify it by that stage's fingerprint
        if "lab_data" in upstream and isinstance(value, str) and Path(value).parent == lab_out:
            return {"lab_data": upstream["lab_data"], "file": Path(value).name}
        return _data_hash(value)

    single("lab_data", lab_out, {}, lambda sec: {})
    single("warmup", warm_out, {"data": str(lab_out)}, lambda sec: {"lab_data": upstream.get("lab_data")})
    single("merge", merge_out, {"adapter": str(warm_out / "adapter")}, lambda sec: {"warmup": upstream.get("warmup")})
    target = {**recipe, "model": str(merge_out)} if "merge" in upstream else recipe
    lab_train = {"data": str(lab_out / "train.jsonl")} if "lab_data" in upstream else {}

    def wire_compress(sec: dict) -> None:
        if sec.get("cot_source") == "self":   # build_sft's name for the same thing
            sec["cot_source"] = "predictions"
        if sec.get("cot_source", "predictions") == "predictions" and not sec.get("predictions"):
            if "generate" not in upstream:
                raise RecipeError(f"{src}: stages.compress uses self-generated CoTs (cot_source: predictions) but "
                                  "the generate stage is disabled; enable it, set compress.predictions, or use "
                                  "cot_source: gold")
            sec["predictions"] = str(gen_out / "predictions.jsonl")

    single("generate", gen_out, lab_train, lambda sec: {"data": data_input(sec.get("data"))})
    single("compress", comp_out, lab_train, lambda sec: {"generate": upstream.get("generate"),
                                                         "data": data_input(sec.get("data"))}, wire_compress)
    single("build_sft", sft_out, {"compressed": str(comp_out), **lab_train},
           lambda sec: {"compress": upstream.get("compress"), "data": data_input(sec.get("data"))})
    single("train", train_out, {"data": str(sft_out)}, lambda sec: {"build_sft": upstream.get("build_sft")})

    # evaluate: benchmarks x methods
    eval_out = run / "evaluate"
    if _enabled(recipe, "evaluate"):
        cls = _stage_cls("evaluate")
        sec = _section(recipe, "evaluate")
        sec.pop("enabled", None)
        benches = sec.pop("benchmarks", None) or [{}]
        methods = sec.pop("methods", None) or [{"method": "original"}]
        if not isinstance(benches, list) or not isinstance(methods, list):
            raise RecipeError(f"{src}: stages.evaluate.benchmarks and .methods must be lists")
        common = _with_inherited(target, cls, sec)
        if "lab_data" in upstream:
            common.setdefault("data", str(lab_out / "test.jsonl"))
        cfgs, data_hashes = [], {}
        for b in benches:
            for m in methods:
                d = {**common, **b, **m}
                d.setdefault("out", str(eval_out))
                if d.get("method") == "tokenskip" and not d.get("adapter"):
                    if "train" not in upstream:
                        raise RecipeError(f"{src}: stages.evaluate has method tokenskip but no adapter: enable the "
                                          "train stage or set the method's adapter path")
                    d["adapter"] = str(train_out)
                    d["_needs_train"] = True
                needs_train = d.pop("_needs_train", False)
                cfg = _build_eval(cls, d, f"{src}: stages.evaluate", needs_train)
                cfgs.append(cfg)
                if cfg.data:
                    data_hashes[cfg.data] = data_input(cfg.data)
        uses_adapter = any(c.method == "tokenskip" for c in cfgs)
        add(StagePlan("evaluate", True, {"runs": [to_dict(c) for c in cfgs]}, cfgs,
                      {"train": upstream.get("train") if uses_adapter else None, "data": data_hashes}))
    else:
        add(StagePlan("evaluate", False))

    if _enabled(recipe, "report"):
        sec = _section(recipe, "report")
        sec.pop("enabled", None)
        add(StagePlan("report", True, sec, [], {k: v for k, v in upstream.items()}))
    else:
        add(StagePlan("report", False))
    return run, plans


def _build_eval(cls, d: dict, where: str, adapter_from_train: bool):
    # The adapter folder may not exist before training ran: validate without the existence check.
    if adapter_from_train:
        adapter = d.pop("adapter")
        cfg = _build(cls, {**d, "method": "original"}, where)
        cfg.method, cfg.adapter = "tokenskip", adapter
        if "ratios" in d:
            cfg.ratios = [float(r) for r in d["ratios"]]
        return cfg
    return _build(cls, d, where)


# --------------------------------------------------------------------------- execution

def _adapter_dir(train_dir: Path) -> Path:
    if (train_dir / "adapter_config.json").exists():
        return train_dir
    found = sorted(p.parent for p in train_dir.rglob("adapter_config.json") if "checkpoint-" not in str(p))
    if not found:
        raise FileNotFoundError(f"no adapter_config.json under {train_dir}: did the train stage finish?")
    return found[0]


class SharedBackends:
    """One loaded model per (engine, model, dtype, ...) for all evaluation runs of a stage.

    HF: the base model is shared by original/prompt/truncation runs (tokenskip runs load the adapter
    themselves, merged). vLLM: one engine, started with LoRA enabled when any run needs an adapter,
    serves every method, so the engine (minutes for a 7B model) starts once.
    """

    def __init__(self, cfgs: list):
        self.cfgs, self.backends = cfgs, {}

    @staticmethod
    def key(cfg) -> tuple:
        return (cfg.backend, cfg.model, cfg.dtype, cfg.device, cfg.batch_size, cfg.latency_mode,
                cfg.tensor_parallel_size, cfg.gpu_memory_utilization, cfg.threads, tuple(cfg.stop),
                cfg.enforce_eager, cfg.prefix_caching, cfg.max_num_seqs, cfg.kv_cache_space_gb, cfg.max_model_len)

    def get(self, cfg):
        from tokenskip.backends import get_backend

        if cfg.backend == "hf" and cfg.method == "tokenskip":
            return None
        k = self.key(cfg)
        if k not in self.backends:
            kwargs = cfg.backend_kwargs()
            if cfg.backend == "vllm":
                adapters = [c.adapter for c in self.cfgs if c.method == "tokenskip" and self.key(c) == k]
                if adapters:
                    from tokenskip.backends.vllm import adapter_rank
                    kwargs.update(enable_lora=True, max_lora_rank=max(adapter_rank(a) for a in adapters))
            self.backends[k] = get_backend(cfg.backend, **kwargs)
        return self.backends[k]

    def __enter__(self) -> "SharedBackends":
        return self

    def __exit__(self, *exc) -> None:
        for b in self.backends.values():
            b.close()


def _execute(p: StagePlan, run: Path) -> None:
    if p.name == "lab_data":
        from tokenskip.lab_data import run_lab_data
        run_lab_data(p.configs[0])
    elif p.name == "warmup":
        from tokenskip.warmup import run_warmup
        run_warmup(p.configs[0])
    elif p.name == "merge":
        from tokenskip.merge import run_merge
        run_merge(p.configs[0])
    elif p.name == "generate":
        from tokenskip.generate import print_metrics, run_generate
        print_metrics(run_generate(p.configs[0]), "[generate] ")
    elif p.name == "compress":
        from tokenskip.compress.cli import run as run_compress
        from tokenskip.compress.cli import summary_lines
        for line in summary_lines(run_compress(p.configs[0])):
            say(f"[compress] {line}")
    elif p.name == "build_sft":
        from tokenskip.sft import build_sft, summary_line
        say(summary_line(build_sft(p.configs[0])))
    elif p.name == "train":
        from tokenskip.train import summary_line, train
        say(summary_line(train(p.configs[0])))
    elif p.name == "evaluate":
        from tokenskip.evaluate import run_evaluate
        from tokenskip.generate import print_metrics
        from tokenskip.prompts import format_ratio
        cfgs = []
        for cfg in p.configs:
            cfg = copy.copy(cfg)
            if cfg.method == "tokenskip" and cfg.adapter and Path(cfg.adapter).resolve() == (run / "train").resolve():
                cfg.adapter = str(_adapter_dir(run / "train"))
            cfgs.append(cfg)
        shown = set()  # truncation runs return the original run's metrics too: print each run once
        with SharedBackends(cfgs) as shared:
            for cfg in cfgs:
                for m in run_evaluate(cfg, backend=shared.get(cfg)):
                    if m["_dir"] in shown:
                        continue
                    shown.add(m["_dir"])
                    label = m["method"] + ("" if m.get("ratio") is None else f" γ={format_ratio(m['ratio'])}")
                    print_metrics(m, f"[evaluate {m['benchmark']}] {label}: ")
    elif p.name == "report":
        from tokenskip.report import ReportConfig, write_report
        write_report(run, dataclass_from_dict(ReportConfig, p.settings or {}, "recipe: stages.report"))


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


def run_pipeline(recipe: dict, stages: list[str] | None = None, dry_run: bool = False,
                 echo: Callable[[str], None] = print) -> list[StagePlan]:
    """Run (or with ``dry_run`` only print) the recipe's plan; returns the stage plans.

    ``stages`` restricts execution to those stage names (others are neither run nor cleared).
    """
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
    if dry_run:
        return plans
    t_start = time.perf_counter()
    run.mkdir(parents=True, exist_ok=True)
    mpath = run / "manifest.json"
    manifest = read_json(mpath) if mpath.exists() else {}
    manifest.update({"name": recipe["name"], "recipe": recipe.get("_path"),
                     "recipe_resolved": {k: v for k, v in recipe.items() if not k.startswith("_")}})
    manifest.setdefault("stages", {})
    write_json_atomic(mpath, manifest)
    lab_ran = False
    for p in plans:
        if not p.enabled or (stages and p.name not in stages) or p.status == "done":
            continue
        folder = run / ("sft" if p.name == "build_sft" else p.name)
        # generate/evaluate keep their folders: their row files carry their own settings fingerprints, so
        # rows still valid (e.g. after a larger --limit, or for an unchanged method) are reused, stale ones
        # not -- unless a lab stage just ran: the merged target has the same path but other weights
        keep = p.name in ("generate", "evaluate", "report") and not lab_ran
        lab_ran = lab_ran or p.name in LAB_STAGES
        if p.status == "changed" and folder.exists() and not keep:
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
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")


def run_cli(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    stages = None
    if args.stages:
        stages = [s.replace("-", "_") for a in args.stages for s in a.replace(",", " ").split()]
    # the dry-run plan is the command's output; a real run's progress lines are silenced by --quiet
    run_pipeline(recipe, stages, args.dry_run, echo=print if args.dry_run else say)
    return 0
