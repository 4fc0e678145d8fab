"""The whole pipeline on a tiny random model: plan, skip, rerun what changed, resume after a kill."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import GSM8K_TEST, GSM8K_TRAIN, REPO, need_data
from tokenskip.contract.io import read_json, read_jsonl
from tokenskip.pipeline.plan import plan
from tokenskip.pipeline.recipe import RecipeError, load_recipe
from tokenskip.pipeline.run import run_pipeline


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
        calibrate = ["calibrate"] if "calibrate" in recipe["stages"] else []
        assert [p.name for p in plans] == lab + ["generate", "compress", "build_sft", "train", *calibrate, "evaluate",
                                                 "report"]
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
    import tokenskip.contract.io as tio

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


def test_recipe_without_sft_ratios_skips_every_stage_on_its_second_run(tmp_path, tiny_model_dir):
    # build-sft's default ratios come from the compress folder: resolved when it runs, so the planned
    # fingerprint does not change once that folder exists (it used to, and retrained on every 2nd run)
    recipe = {
        "name": "twice", "run_dir": str(tmp_path / "runs"), "model": tiny_model_dir, "threads": 1,
        "stages": {
            "compress": {"cot_source": "gold", "benchmark": "gsm8k", "data": str(need_data(GSM8K_TRAIN)),
                         "limit": 6, "scorer": "random", "ratios": [0.5]},
            "build_sft": {"cot_source": "gold", "benchmark": "gsm8k", "data": str(GSM8K_TRAIN), "limit": 6,
                          "validation_share": 0.0},
            "train": {"max_steps": 2, "per_device_batch_size": 2, "grad_accum": 1, "max_length": 192},
            "evaluate": {"max_new_tokens": 4, "batch_size": 1,
                         "benchmarks": [{"benchmark": "gsm8k", "data": str(need_data(GSM8K_TEST)), "limit": 1}],
                         "methods": [{"method": "original"}, {"method": "tokenskip", "ratios": [0.5]}]},
            "report": {"plots": False},
        },
    }
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_pipeline(load_recipe(path), echo=lambda s: None)
    run = tmp_path / "runs" / "twice"
    assert read_json(run / "sft" / "stats.json")["config"]["ratios"] == [1.0, 0.5]
    adapter = run / "train" / "adapter_model.safetensors"
    stamp = adapter.stat().st_mtime_ns
    lines: list[str] = []
    plans = run_pipeline(load_recipe(path), echo=lines.append)
    assert {p.name: p.status for p in plans if p.enabled} == {s: "done" for s in
                                                              ("compress", "build_sft", "train", "evaluate", "report")}
    assert not any(line.startswith("== stage") for line in lines)
    assert adapter.stat().st_mtime_ns == stamp


def test_dry_run_names_unknown_keys_in_every_section(tmp_path, tiny_model_dir):
    path = write_recipe(tmp_path, tiny_model_dir)
    # each names the setting by its full path, as given on the command line
    cases = {"modle=x": r"--set modle: unknown setting\(s\) \['modle'\]",
             "stages.report.hist_bin=3": r"--set stages\.report\.hist_bin: unknown setting\(s\) \['hist_bin'\]",
             "stages.generate.max_new_token=3": r"--set stages\.generate\.max_new_token: unknown setting\(s\) "
                                                r"\['max_new_token'\]",
             "stages.compress.ratio=[0.5]": r"--set stages\.compress\.ratio: unknown setting\(s\) \['ratio'\]",
             "stages.build_sft.seeds=1": r"--set stages\.build_sft\.seeds: unknown setting\(s\) \['seeds'\]",
             "stages.evaluate.answer_max_token=3": r"--set stages\.evaluate\.answer_max_token: unknown setting\(s\) "
                                                   r"\['answer_max_token'\]",
             "stages.report.plots=maybe": r"--set stages\.report\.plots: expected true or false, got 'maybe'"}
    for override, message in cases.items():
        with pytest.raises(RecipeError, match=message):
            run_pipeline(load_recipe(path, [override]), dry_run=True, echo=lambda s: None)
    assert not (tmp_path / "runs").exists()


def test_dry_run_reports_missing_inputs_before_anything_runs(tmp_path, tiny_model_dir, capsys):
    from tokenskip.cli import main

    path = write_recipe(tmp_path, tiny_model_dir)
    plans = run_pipeline(load_recipe(path), dry_run=True, echo=lambda s: None)  # all inputs present
    assert len(plans) == 6
    overrides = ["stages.compress.data=" + str(tmp_path / "gone.jsonl"),
                 "stages.evaluate.methods=[{method: tokenskip, adapter: " + str(tmp_path / "no-adapter") + "}]",
                 "stages.build_sft.model=" + str(tmp_path / "no-model"),
                 "stages.train.enabled=false"]
    with pytest.raises(RecipeError) as e:
        run_pipeline(load_recipe(path, overrides), echo=lambda s: None)
    msg = str(e.value)
    assert "3 missing input(s); nothing was run" in msg
    assert f"stages.compress.data: {tmp_path / 'gone.jsonl'}: not found" in msg
    assert f"stages.evaluate.adapter: {tmp_path / 'no-adapter'}: not found" in msg
    assert "model of build_sft: model " in msg and "no-model" in msg
    assert not (tmp_path / "runs").exists()
    # the compress output build-sft reads is made by an earlier stage: not reported; without compress it is
    with pytest.raises(RecipeError, match=r"stages\.build_sft\.compressed: .*compress: not found"):
        run_pipeline(load_recipe(path, ["stages.compress.enabled=false"]), dry_run=True, echo=lambda s: None)
    # on the command line: one error line, then the list
    assert main(["run", str(path), "--dry-run", "--set", overrides[0]]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("1 missing input(s); nothing was run") and "gone.jsonl" in err[1]


def test_custom_benchmark_in_a_recipe_is_planned_and_checked(tmp_path, tiny_model_dir):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"problem": "What is 2 + 3?", "answer": "5"}\n')
    bench = {"benchmark": "custom", "data": str(data), "question_field": "problem", "grader": "numeric"}
    path = write_recipe(tmp_path, tiny_model_dir, benchmarks=[bench])
    run, plans = plan(load_recipe(path))
    (ev,) = [p for p in plans if p.name == "evaluate"]
    assert {(c.bench.name, c.bench.grader, c.question_field) for c in ev.configs} == {("custom", "numeric", "problem")}
    with pytest.raises(RecipeError, match=r"tiny\.yaml:\d+: stages\.evaluate\.grade: unknown setting\(s\) \['grade'\]"):
        plan(load_recipe(write_recipe(tmp_path, tiny_model_dir, benchmarks=[{**bench, "grade": "numeric"}])))
    no_grader = {k: v for k, v in bench.items() if k != "grader"}
    with pytest.raises(RecipeError, match="custom needs --grader"):
        plan(load_recipe(write_recipe(tmp_path, tiny_model_dir, benchmarks=[no_grader])))


BAD_EDITS = [   # (what the user typed in the demo recipe, the one line it must give); issue 26 item 8
    ("    limit: 200\n", "\tlimit: 200\n", r"demo.yaml:33:1: invalid YAML: found character '\\t' .*not tabs\)$"),
    ("    limit: 200\n    scorer", "    limit: 10.5\n    scorer",
     r"demo.yaml:33: stages.compress.limit: expected an integer, got 10.5$"),
    ("    limit: 200\n    scorer", "    limit: true\n    scorer",
     r"demo.yaml:33: stages.compress.limit: expected an integer, got True$"),
    ("    limit: 200\n    scorer", "    limit: -3\n    scorer",
     r"demo.yaml:33: stages.compress.limit: --limit must be >= 0, got -3$"),
    ("    ratios: [0.9, 0.8, 0.7, 0.6, 0.5]", "    ratios: [1.5]",
     r"demo.yaml:35: stages.compress.ratios: compression ratio γ must be in \(0, 1\], got 1.5$"),
    ("    epochs: 1\n", "    epochs: true\n", r"demo.yaml:46: stages.train.epochs: expected a number, got True$"),
    ("    group_by_length: true\n", "    group_by_length: 1\n",
     r"demo.yaml:54: stages.train.group_by_length: expected true or false, got 1$"),
    ("    lr: 3.0e-4\n", "    lr: [0.1]\n", r"demo.yaml:47: stages.train.lr: expected a number, got \[0.1\]$"),
    ("    epochs: 1\n", "    epochs: 1\n    learning_rate: 0.1\n",
     r"demo.yaml:47: stages.train.learning_rate: unknown setting\(s\) \['learning_rate'\]"),
]


@pytest.mark.parametrize(("old", "new", "error"), BAD_EDITS, ids=[f"edit{i}" for i in range(len(BAD_EDITS))])
def test_recipe_errors_are_one_line_naming_file_line_and_setting(tmp_path, old, new, error):

    text = (REPO / "recipes" / "demo-smollm2-gsm8k.yaml").read_text()
    assert old in text
    bad = tmp_path / "demo.yaml"
    bad.write_text(text.replace(old, new, 1))
    with pytest.raises(RecipeError, match=error):
        plan(load_recipe(bad, [f"run_dir={tmp_path}"]))
    err = subprocess.run([sys.executable, "-m", "tokenskip.cli", "run", str(bad), "--dry-run"], capture_output=True,
                         text=True, cwd=REPO).stderr.strip().splitlines()
    assert len(err) == 1 and re.search(error, err[0]), err


def test_a_setting_given_with_set_is_named_without_a_line(tmp_path):
    with pytest.raises(RecipeError, match=r"demo-smollm2-gsm8k.yaml: --set stages.compress.limit: expected an integer"):
        plan(load_recipe(REPO / "recipes" / "demo-smollm2-gsm8k.yaml",
                         [f"run_dir={tmp_path}", "stages.compress.limit=10.5"]))


def test_a_recipes_ray_block_reaches_the_stages_and_where_the_pool_runs_is_left_out_of_fingerprints(
        tmp_path, tiny_model_dir):
    recipe = yaml.safe_load(write_recipe(tmp_path, tiny_model_dir).read_text())

    def planned(backend: str, **ray) -> dict:
        r = recipe | {"backend": backend, "ray": ray or None, "_path": str(tmp_path / "tiny.yaml")}
        return {p.name: p for p in plan(r)[1]}

    here = planned("hf")
    pooled = planned("ray", actors=1)
    moved = planned("ray", actors=8, address="auto", cpus_per_actor=4, gpus_per_actor=1)
    gen = moved["generate"].configs[0]
    assert (gen.backend, gen.ray_actors, gen.ray_address, gen.ray_gpus_per_actor) == ("ray", 8, "auto", 1)
    assert all(c.ray_actors == 8 and c.backend == "ray" for c in moved["evaluate"].configs)
    assert moved["compress"].configs[0].ray_actors == 8
    for stage in ("generate", "compress", "evaluate"):   # the same rows wherever the pool runs
        assert pooled[stage].fingerprint == moved[stage].fingerprint
    # compress scores the same here or pooled: its own settings do not change (its fingerprint does, through
    # generate's: generate's rows record their backend)
    assert here["compress"].settings == pooled["compress"].settings
    # the shard size decides the rows (a shard is decoded as one chunk), so it is kept
    assert planned("ray", shard_size=3)["generate"].fingerprint != pooled["generate"].fingerprint
    with pytest.raises(ValueError, match="ray: unknown key"):
        planned("ray", workers=2)


@pytest.mark.parametrize("name", ["qwen2.5-7b-instruct-gsm8k", "qwen2.5-7b-instruct-math", "llama3.1-8b-instruct-gsm8k",
                                  "qwen3-8b-thinking", "deepseek-r1-distill-qwen-7b"])
def test_the_gpu_recipes_show_a_ray_block_commented_that_plans_once_uncommented(tmp_path, name):
    text = (REPO / "recipes" / f"{name}.yaml").read_text()
    block = re.search(r"^# ray:\n(?:#   .*\n)+", text, re.M)
    assert block, f"{name}.yaml: no commented `ray:` block"
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace(block.group(0), "".join(line[2:] + "\n" for line in block.group(0).splitlines())))
    recipe = load_recipe(path, [f"run_dir={tmp_path}", "stages.generate.backend=ray", "stages.evaluate.backend=ray"])
    plans = {p.name: p for p in plan(recipe)[1]}
    for cfg in plans["generate"].configs + plans["evaluate"].configs:
        assert (cfg.backend, cfg.ray_engine, cfg.ray_address, cfg.ray_gpus_per_actor) == ("ray", "vllm", "auto", 1)
        assert cfg.backend_kwargs()["engine"] == "vllm"
