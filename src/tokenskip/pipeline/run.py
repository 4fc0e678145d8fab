"""``tokenskip run RECIPE``: execute a plan stage by stage, resumably, and record it in ``manifest.json``
(see :mod:`tokenskip.pipeline` for the rules)."""

from __future__ import annotations

import copy
import logging
import shutil
import time
from pathlib import Path
from typing import Callable

from tokenskip.contract.config import to_dict
from tokenskip.contract.console import duration, say
from tokenskip.contract.io import read_json, write_json_atomic
from tokenskip.contract.layout import MANIFEST, REPORT_MD, find_adapter
from tokenskip.pipeline.plan import StagePlan, missing_inputs, plan
from tokenskip.pipeline.recipe import MODE_KEYS, Recipe, RecipeError, load_recipe
from tokenskip.stages import NAMES as STAGES
from tokenskip.stages import get_stage

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- execution

def _execute(p: StagePlan, run: Path) -> None:
    stage = get_stage(p.name)
    if p.name == "evaluate":
        cfgs = []
        for cfg in p.configs:
            cfg = copy.copy(cfg)
            trained = (run / get_stage("train").folder).resolve()
            if cfg.method_obj.uses_adapter and Path(cfg.adapter).resolve() == trained:
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


def _action(p: StagePlan, selected: bool) -> str:
    """What a run does with plan ``p`` (the dry-run line)."""
    if not p.enabled:
        return "skip (disabled)"
    if not selected:
        return "skip (not selected)"
    return {"done": "skip (done, unchanged)", "resume": "resume",
            "changed": "rerun (settings or inputs changed)"}.get(p.status, "run")


def _print_plan(run: Path, plans: list[StagePlan], stages: list[str] | None, echo: Callable[[str], None]) -> None:
    echo(f"run folder: {run}")
    for p in plans:
        action = _action(p, p.enabled and (not stages or p.name in stages))
        echo(f"  {p.name:<10} {action:<34} fingerprint {p.fingerprint[:8] if p.enabled else '-'}")
        if p.enabled and (mode := mode_summary(p)):
            echo(f"             {mode}")


def _run_stage(p: StagePlan, run: Path, manifest: dict, mpath: Path, keep: bool, echo: Callable[[str], None]) -> None:
    """Run one stage, recording it in the manifest (``running`` → ``done``/``failed``, seconds) atomically.

    ``keep``: a changed stage keeps its folder (row files that carry their own settings fingerprints are
    reused where still valid); otherwise a changed stage starts from an empty folder. The report writes into
    the run folder itself (folder ``""``), which is never cleared.
    """
    folder = run / get_stage(p.name).folder
    if p.status == "changed" and get_stage(p.name).folder and folder.exists() and not keep:
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
    entry.update(status="done", seconds=round(time.perf_counter() - t0, 1), finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json_atomic(mpath, manifest)
    echo(f"== stage {p.name} done in {duration(entry['seconds'])}")


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
    if stages and (bad := set(stages) - set(STAGES)):
        raise RecipeError(f"--stages: unknown {sorted(bad)}; valid: {list(STAGES)}")
    _print_plan(run, plans, stages, echo)
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
    todo = [p for p in plans if p.enabled and (not stages or p.name in stages) and p.status != "done"]
    lab_ran = False
    for p in todo:
        stage = get_stage(p.name)
        # unless a lab stage just ran: the merged target has the same path but other weights
        _run_stage(p, run, manifest, mpath, stage.keeps_rows and not lab_ran, echo)
        lab_ran = lab_ran or stage.lab
    echo(f"== {len(todo)} stage(s) run ({', '.join(p.name for p in todo) or 'none'}) in "
         f"{duration(time.perf_counter() - t_start)}; {len(plans) - len(todo)} skipped")
    if (run / REPORT_MD).exists():
        echo(f"report: {run / REPORT_MD}")
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
