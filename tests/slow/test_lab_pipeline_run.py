"""The shrunken lab recipe runs every stage through the pipeline (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("reasoning_gym")

from test_lab_pipeline import LAB_RECIPE  # noqa: E402
from tokenskip.contract.io import read_json, read_jsonl  # noqa: E402
from tokenskip.pipeline.recipe import load_recipe  # noqa: E402
from tokenskip.pipeline.run import run_pipeline  # noqa: E402

#: the lab recipe shrunk to seconds per stage (a 2-step warm-up solves nothing, so the CoTs to compress
#: are the gold solutions of the lab's train split instead of the target's own correct ones)
SHRINK = [
    "name=lab-shrunk", "threads=1", "backend=hf",
    "stages.lab_data.train=24", "stages.lab_data.validation=4", "stages.lab_data.test=6",
    "stages.warmup.limit=16", "stages.warmup.validation_limit=4", "stages.warmup.max_steps=2",
    "stages.warmup.per_device_batch_size=4", "stages.warmup.batch_size=4",
    "stages.generate.offset=16", "stages.generate.limit=4", "stages.generate.max_new_tokens=32",
    "stages.generate.batch_size=4",
    "stages.compress.cot_source=gold", "stages.compress.limit=8", "stages.compress.ratios=[0.5]",
    "stages.build_sft.cot_source=gold", "stages.build_sft.limit=8", "stages.build_sft.ratios=[1.0, 0.5]",
    "stages.train.max_steps=2", "stages.train.per_device_batch_size=4", "stages.train.batch_size=4",
    "stages.calibrate.limit=3", "stages.calibrate.max_new_tokens=32", "stages.calibrate.scales=[0.5, 1.0]",
    "stages.evaluate.max_new_tokens=32", "stages.evaluate.batch_size=4",
    "stages.evaluate.benchmarks=[{benchmark: gsm8k, limit: 3}]",
    "stages.evaluate.methods=[{method: original}, {method: nocot}, {method: prompt, ratios: [0.5]}, "
    "{method: truncation, ratios: [0.5]}, {method: tokenskip, ratios: [1.0, 0.5]}]",
]


@pytest.mark.slow
def test_shrunken_lab_runs_every_stage(tmp_path, smol_tokenizer):
    recipe = load_recipe(LAB_RECIPE, [f"run_dir={tmp_path}", *SHRINK])
    run_pipeline(recipe, echo=lambda s: None)
    run = tmp_path / "lab-shrunk"
    stages = read_json(run / "manifest.json")["stages"]
    assert list(stages) == ["lab_data", "warmup", "merge", "generate", "compress", "build_sft", "train",
                            "calibrate", "evaluate", "report"]
    assert all(s["status"] == "done" for s in stages.values())
    assert (run / "merge" / "config.json").exists() and (run / "warmup" / "adapter" / "adapter_config.json").exists()
    gen = read_jsonl(run / "generate" / "predictions.jsonl")
    assert [r["id"] for r in gen] == [f"lab/train/{i}" for i in range(16, 20)]
    assert read_json(run / "generate" / "metrics.json")["model"] == str(run / "merge")
    ev = run / "evaluate" / "gsm8k"
    for folder in ("original", "nocot", "prompt/ratio-0.5", "truncation/ratio-0.5", "tokenskip/ratio-1.0",
                   "tokenskip/ratio-0.5"):
        m = read_json(ev / folder / "metrics.json")
        assert m["n"] == 3 and m["model"] == str(run / "merge"), folder
    assert [r["id"] for r in read_jsonl(ev / "original" / "predictions.jsonl")] == [f"lab/test/{i}" for i in range(3)]
    report = (run / "report.md").read_text()
    assert "No CoT" in report and "TokenSkip (γ=0.5)" in report
    # a second run finds every stage done
    plans = run_pipeline(load_recipe(LAB_RECIPE, [f"run_dir={tmp_path}", *SHRINK]), echo=lambda s: None)
    assert [p.status for p in plans] == ["done"] * 10
    assert Path(run / "lab_data" / "summary.json").exists()
