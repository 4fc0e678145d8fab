"""The whole pipeline on a tiny random model: plan, skip, rerun what changed, resume after a kill."""

import json
from pathlib import Path

import pytest
import yaml

from conftest import GSM8K_TEST, GSM8K_TRAIN, REPO, need_data
from tokenskip.io import read_json, read_jsonl
from tokenskip.pipeline import RecipeError, load_recipe, plan, run_pipeline


class Killed(BaseException):
    """Stands in for a kill: raised mid-stage, after some work is on disk."""


def write_recipe(tmp_path, model, name="tiny", **evaluate_overrides):
    recipe = {
        "name": name, "run_dir": str(tmp_path / "runs"), "model": model, "threads": 1,
        "stages": {
            "generate": {"benchmark": "gsm8k", "data": str(need_data(GSM8K_TRAIN)), "limit": 6,
                         "max_new_tokens": 6, "batch_size": 1},
            "compress": {"cot_source": "gold", "benchmark": "gsm8k", "data": str(GSM8K_TRAIN), "limit": 12,
                         "scorer": "self-information", "ratios": [0.7, 0.5]},
            "build_sft": {"cot_source": "gold", "benchmark": "gsm8k", "data": str(GSM8K_TRAIN), "limit": 12,
                          "ratios": [1.0, 0.7, 0.5], "validation_share": 0.0},
            "train": {"max_steps": 4, "save_steps": 1, "per_device_batch_size": 2, "grad_accum": 1,
                      "logging_steps": 1, "lr": 1e-3, "max_length": 256},
            "evaluate": {"max_new_tokens": 6, "batch_size": 2,
                         "benchmarks": [{"benchmark": "gsm8k", "data": str(need_data(GSM8K_TEST)), "limit": 3}],
                         "methods": [{"method": "original"}, {"method": "truncation", "ratios": [0.5]},
                                     {"method": "tokenskip", "ratios": [1.0, 0.5]}],
                         **evaluate_overrides},
            "report": {"plots": False},
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def row_counts(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): len(read_jsonl(p)) for p in sorted(run.rglob("*.jsonl"))
            if "checkpoint-" not in str(p)}


def test_shipped_recipes_parse_and_plan(tmp_path):
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        recipe = load_recipe(path, [f"run_dir={tmp_path}"])
        run, plans = plan(recipe)
        assert run == tmp_path / recipe["name"]
        lab = ["lab_data", "warmup", "merge"] if "lab_data" in recipe["stages"] else []
        assert [p.name for p in plans] == lab + ["generate", "compress", "build_sft", "train", "evaluate", "report"]
        enabled = {p.name for p in plans if p.enabled}
        assert {"compress", "build_sft", "train", "evaluate", "report"} <= enabled
        methods = {c.method for p in plans if p.name == "evaluate" for c in p.configs}
        assert methods - {"nocot"} == {"original", "prompt", "truncation", "tokenskip"}   # nocot: the lab's control


def test_bad_recipes_are_clear_errors(tmp_path, tiny_model_dir):
    path = write_recipe(tmp_path, tiny_model_dir)
    with pytest.raises(RecipeError, match="stages.train.*unknown setting.*'learning_rate'"):
        plan(load_recipe(path, ["stages.train.learning_rate=0.1"]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages: {trian: {}}\n")
    with pytest.raises(RecipeError, match="unknown stage"):
        load_recipe(bad)


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, tiny_model_dir, monkeypatch):
    # uninterrupted reference run
    ref_recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir, name="ref"))
    run_pipeline(ref_recipe, echo=lambda s: None)
    ref_run = tmp_path / "runs" / "ref"
    ref = row_counts(ref_run)
    assert ref["generate/predictions.jsonl"] == 6 and ref["evaluate/gsm8k/tokenskip/ratio-0.5/predictions.jsonl"] == 3
    assert (ref_run / "report.md").exists()

    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir, name="killed"))
    run = tmp_path / "runs" / "killed"
    import tokenskip.io as tio

    # 1) killed during generation, after 2 rows are on disk
    orig_append = tio.ResumableJsonl.append

    def dying_append(self, row):
        orig_append(self, row)
        if self.path.parent.name == "generate" and len(self.rows) == 2:
            raise Killed()

    monkeypatch.setattr(tio.ResumableJsonl, "append", dying_append)
    with pytest.raises(Killed):
        run_pipeline(recipe, echo=lambda s: None)
    monkeypatch.setattr(tio.ResumableJsonl, "append", orig_append)
    assert len(read_jsonl(run / "generate" / "predictions.jsonl")) == 2
    assert read_json(run / "manifest.json")["stages"]["generate"]["status"] != "done"

    # 2) killed during training, right after checkpoint-2 is saved
    from transformers import Trainer

    orig_save = Trainer._save_checkpoint

    def dying_save(self, *a, **kw):
        orig_save(self, *a, **kw)
        if self.state.global_step == 2:
            raise Killed()

    monkeypatch.setattr(Trainer, "_save_checkpoint", dying_save)
    with pytest.raises(Killed):
        run_pipeline(recipe, echo=lambda s: None)
    monkeypatch.setattr(Trainer, "_save_checkpoint", orig_save)
    assert (run / "train" / "checkpoint-2").is_dir() and not (run / "train" / "adapter_config.json").exists()
    statuses = {p.name: p.status for p in plan(recipe)[1]}
    assert statuses["generate"] == "done" and statuses["train"] == "resume"

    # 3) rerun finishes with exactly the uninterrupted run's rows
    run_pipeline(recipe, echo=lambda s: None)
    assert row_counts(run) == ref
    steps = [r["step"] for r in read_jsonl(run / "train" / "loss_log.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 4
    assert read_json(run / "train" / "train_metrics.json")["global_step"] == 4
    assert all(s["status"] == "done" for s in read_json(run / "manifest.json")["stages"].values())

    # 4) changing only an evaluation setting reruns only evaluate and report
    changed = load_recipe(write_recipe(tmp_path, tiny_model_dir, name="killed", force_answer=True))
    statuses = {p.name: p.status for p in plan(changed)[1]}
    assert statuses == {"generate": "done", "compress": "done", "build_sft": "done", "train": "done",
                        "evaluate": "changed", "report": "changed"}
    ev = run / "evaluate" / "gsm8k"
    before = {p: p.stat().st_mtime_ns for p in [run / "train" / "adapter_model.safetensors",
                                                 ev / "original" / "predictions.jsonl",
                                                 ev / "tokenskip" / "ratio-0.5" / "predictions.jsonl"]}
    trunc_before = read_jsonl(ev / "truncation" / "ratio-0.5" / "predictions.jsonl")
    run_pipeline(changed, echo=lambda s: None)
    # the adapter and the unchanged evaluation runs are reused as they are; truncation is redone
    assert {p: p.stat().st_mtime_ns for p in before} == before
    trunc_after = read_jsonl(ev / "truncation" / "ratio-0.5" / "predictions.jsonl")
    assert trunc_after != trunc_before and (ev / "truncation" / "ratio-0.5" / "predictions.stale").exists()
    assert row_counts(run) == ref
    # nothing left to do; thread count is not a setting that changes results
    assert {p.status for p in plan(changed)[1] if p.enabled} == {"done"}
    more_threads = load_recipe(write_recipe(tmp_path, tiny_model_dir, name="killed", force_answer=True),
                               ["threads=2"])
    assert {p.status for p in plan(more_threads)[1] if p.enabled} == {"done"}
