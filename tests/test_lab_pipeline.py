"""The lab recipe in the pipeline: wiring of data and target model, stable fingerprints, and (slow) every stage."""

from __future__ import annotations

import pytest

pytest.importorskip("reasoning_gym")

from conftest import REPO  # noqa: E402
from tokenskip.lab.data import run_lab_data  # noqa: E402
from tokenskip.pipeline.plan import plan  # noqa: E402
from tokenskip.pipeline.recipe import load_recipe  # noqa: E402
from tokenskip.pipeline.run import run_pipeline  # noqa: E402

LAB_RECIPE = REPO / "recipes" / "lab-smollm2-legs.yaml"
PAPER_LAB_RECIPE = REPO / "recipes" / "lab-smollm2-legs-paper.yaml"


def plans_by_name(recipe):
    run, plans = plan(recipe)
    return run, {p.name: p for p in plans}


def test_lab_recipe_wires_splits_and_the_merged_target(tmp_path):
    recipe = load_recipe(LAB_RECIPE, [f"run_dir={tmp_path}"])
    run, p = plans_by_name(recipe)
    lab, merged = run / "lab_data", str(run / "merge")
    assert p["warmup"].configs[0].model == "smollm2-135m-instruct"
    assert p["warmup"].configs[0].data == str(lab)
    assert p["merge"].configs[0].adapter == str(run / "warmup" / "adapter")
    for stage in ("generate", "compress", "build_sft", "train"):
        assert p[stage].configs[0].model == merged, stage
    for stage in ("generate", "compress", "build_sft"):
        assert p[stage].configs[0].data == str(lab / "train.jsonl"), stage
    assert p["generate"].configs[0].offset == 600
    assert p["generate"].configs[0].backend == "vllm" and {c.backend for c in p["evaluate"].configs} == {"vllm"}
    assert p["build_sft"].configs[0].ratios_per_cot == 2
    assert {c.model for c in p["evaluate"].configs} == {merged}
    assert {c.data for c in p["evaluate"].configs} == {str(lab / "test.jsonl")}
    assert {c.method for c in p["evaluate"].configs} == {"original", "nocot", "prompt", "truncation", "tokenskip"}
    assert p["generate"].inputs["merge"] == p["merge"].fingerprint

    # once the splits exist, nothing is re-planned (their identity is the lab_data fingerprint, not a hash)
    before = {k: v.fingerprint for k, v in p.items()}
    run_lab_data(p["lab_data"].configs[0].__class__(**{**vars(p["lab_data"].configs[0]),
                                                       "train": 5, "validation": 2, "test": 2}))
    assert (lab / "train.jsonl").exists()
    assert {k: v.fingerprint for k, v in plans_by_name(recipe)[1].items()} == before
    # a changed warm-up changes the target model of everything after it
    _, p2 = plans_by_name(load_recipe(LAB_RECIPE, [f"run_dir={tmp_path}", "stages.warmup.lr=2e-3"]))
    assert p2["lab_data"].fingerprint == before["lab_data"]
    assert all(p2[s].fingerprint != before[s] for s in ("warmup", "merge", "generate", "evaluate", "report"))


def test_top_level_system_prompt_reaches_every_prompt_writing_stage(tmp_path):
    sys_turn = "You are a helpful assistant."
    recipe = load_recipe(LAB_RECIPE, [f"run_dir={tmp_path}", f"system_prompt={sys_turn}",
                                      "stages.evaluate.system_prompt=Be brief."])
    _, p = plans_by_name(recipe)
    for stage in ("warmup", "generate", "build_sft"):
        assert p[stage].configs[0].system_prompt == sys_turn, stage
    assert {c.system_prompt for c in p["evaluate"].configs} == {"Be brief."}   # a stage's own setting wins
    assert not hasattr(p["train"].configs[0], "system_prompt")   # train reads the prompts build_sft wrote
    # the system turn changes what the warm-up trains on, so everything after it is planned anew
    _, plain = plans_by_name(load_recipe(LAB_RECIPE, [f"run_dir={tmp_path}", "system_prompt=Be terse."]))
    assert plain["lab_data"].fingerprint == p["lab_data"].fingerprint
    assert all(plain[s].fingerprint != p[s].fingerprint for s in ("warmup", "generate", "build_sft", "evaluate"))


def test_sampled_generation_in_a_recipe_changes_only_what_it_should(tmp_path):
    _, greedy = plans_by_name(load_recipe(LAB_RECIPE, [f"run_dir={tmp_path}"]))
    # greedy decoding: the sampling settings stay out of the fingerprint (runs made before them stay done),
    # even with a recipe-wide seed (the paper recipes set seed: 42)
    assert not {"samples", "temperature", "top_p", "seed"} & set(greedy["generate"].settings)
    _, seeded = plans_by_name(load_recipe(LAB_RECIPE, [f"run_dir={tmp_path}", "seed=42"]))
    assert seeded["generate"].configs[0].seed == 42
    assert seeded["generate"].fingerprint == greedy["generate"].fingerprint
    _, sampled = plans_by_name(load_recipe(LAB_RECIPE, [f"run_dir={tmp_path}", "stages.generate.samples=4",
                                                        "stages.generate.temperature=0.7"]))
    g = sampled["generate"].configs[0]
    assert (g.samples, g.temperature, sampled["generate"].settings["samples"]) == (4, 0.7, 4)
    assert sampled["warmup"].fingerprint == greedy["warmup"].fingerprint
    assert all(sampled[s].fingerprint != greedy[s].fingerprint for s in ("generate", "compress", "train"))


def test_recipes_without_lab_stages_do_not_list_them(tmp_path):
    lines = []
    recipe = load_recipe(REPO / "recipes" / "demo-smollm2-gsm8k.yaml", [f"run_dir={tmp_path}"])
    plans = run_pipeline(recipe, dry_run=True, echo=lines.append)
    assert not any(w in " ".join(lines) for w in ("lab_data", "warmup", "merge"))
    assert all("merge" not in p.inputs for p in plans)
    assert [p.name for p in plans] == ["generate", "compress", "build_sft", "train", "evaluate", "report"]


def test_lab_recipe_wires_the_calibrate_stage(tmp_path):
    recipe = load_recipe(LAB_RECIPE, [f"run_dir={tmp_path}"])
    run, p = plans_by_name(recipe)
    assert list(p) == ["lab_data", "warmup", "merge", "generate", "compress", "build_sft", "train", "calibrate",
                       "evaluate", "report"]
    cal = p["calibrate"].configs[0]
    # the target model (not the base), the trained adapter, the lab's validation split (never test)
    assert cal.model == str(run / "merge") and cal.adapter == str(run / "train")
    assert cal.data == str(run / "lab_data" / "validation.jsonl") and cal.limit == 200
    assert p["calibrate"].inputs == {"merge": p["merge"].fingerprint, "train": p["train"].fingerprint,
                                     "lab_data": p["lab_data"].fingerprint}
    assert p["build_sft"].configs[0].ratios == [1.0, 0.5]
    # evaluate's TokenSkip runs follow the calibration: a new calibration re-plans evaluate
    assert p["evaluate"].inputs["calibrate"] == p["calibrate"].fingerprint
    _, p2 = plans_by_name(load_recipe(LAB_RECIPE, [f"run_dir={tmp_path}", "stages.calibrate.scales=[0.5, 1.0]"]))
    assert p2["calibrate"].fingerprint != p["calibrate"].fingerprint
    assert p2["evaluate"].fingerprint != p["evaluate"].fingerprint and p2["train"].fingerprint == p["train"].fingerprint
    # the paper-mixture recipe (no calibrate) plans no such stage and evaluate's inputs are as before
    _, plain = plans_by_name(load_recipe(PAPER_LAB_RECIPE, [f"run_dir={tmp_path}"]))
    assert plain["build_sft"].configs[0].ratios == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    assert "calibrate" not in plain and "calibrate" not in plain["evaluate"].inputs
