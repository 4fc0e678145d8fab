"""The shrunken think lab (issue 24 item 7) runs every stage through the pipeline (slow): the target writes its CoT
inside a <think> block whose opening its chat template writes (recipes/lab-smollm2-legs-think.yaml)."""

from __future__ import annotations

import pytest

pytest.importorskip("reasoning_gym")

from test_lab_pipeline_run import SHRINK  # noqa: E402

from conftest import REPO  # noqa: E402
from tokenskip.contract.io import read_json, read_jsonl  # noqa: E402
from tokenskip.engines.models import load_tokenizer  # noqa: E402
from tokenskip.pipeline.recipe import load_recipe  # noqa: E402
from tokenskip.pipeline.run import run_pipeline  # noqa: E402
from tokenskip.task.think import template_think_mode  # noqa: E402

THINK_RECIPE = REPO / "recipes" / "lab-smollm2-legs-think.yaml"
#: the lab's shrink (tests/slow/test_lab_pipeline_run.py) under another name; truncation forces the answer, as the
#: think recipe's does (a plain cap leaves the block open)
THINK_SHRINK = [s for s in SHRINK if not s.startswith(("name=", "stages.evaluate.methods="))] + [
    "name=lab-think-shrunk",
    "stages.evaluate.methods=[{method: original}, {method: nocot}, {method: prompt, ratios: [0.5]}, "
    "{method: truncation, ratios: [0.5], force_answer: true}, {method: tokenskip, ratios: [1.0, 0.5]}]",
]
OPEN = "<|im_start|>assistant\n<think>\n"


def _count(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.slow
def test_shrunken_think_lab_runs_every_stage(tmp_path):
    run_pipeline(load_recipe(THINK_RECIPE, [f"run_dir={tmp_path}", *THINK_SHRINK]), echo=lambda s: None)
    run = tmp_path / "lab-think-shrunk"
    stages = read_json(run / "manifest.json")["stages"]
    # the lab's shrink sets stages.calibrate.*, which adds the calibration stage to this recipe too
    assert list(stages) == ["lab_data", "warmup", "merge", "generate", "compress", "build_sft", "train",
                            "calibrate", "evaluate", "report"]
    assert all(s["status"] == "done" for s in stages.values())
    # warm-up: the solutions are think turns; the merged target's template opens the block
    for r in read_jsonl(run / "warmup" / "sft" / "train.jsonl"):
        assert r["prompt"].endswith(OPEN) and r["completion"].count("\n</think>\n\nThe final answer is: $\\boxed{") == 1
    tok = load_tokenizer(str(run / "merge"))
    assert template_think_mode(tok) == "open"
    # generate: think rows, the flag and the count, CoT tokens = the block's content in the target's tokens
    gen = read_jsonl(run / "generate" / "predictions.jsonl")
    m = read_json(run / "generate" / "metrics.json")
    assert len(gen) == 4 and all(r["prompt"].endswith(OPEN) and r["think_closed"] in (True, False) for r in gen)
    assert m["think_unclosed"] == sum(not r["think_closed"] for r in gen)
    assert all(r["cot_tokens"] == _count(tok, r["cot"]) and "</think>" not in r["cot"] for r in gen)
    assert all(r["pred"] is None for r in gen if not r["think_closed"])
    # compress: the pruned CoTs hold no tag; build_sft: the targets hold the block's closing and the answer after it
    pruned = {r["id"]: r["cot"] for r in read_jsonl(run / "compress" / "ratio-0.5.jsonl")}
    assert len(pruned) == 8 and not any("think>" in c for c in pruned.values())
    sft = read_jsonl(run / "sft" / "train.jsonl")
    assert sft and all(r["prompt"].endswith(OPEN) and r["completion"].count("</think>") == 1
                       and "<think>" not in r["completion"] for r in sft)
    for r in (r for r in sft if r["ratio"] == 0.5):
        assert r["completion"].startswith(pruned[r["id"].split("@")[0]] + "\n</think>\n\nThe final answer is:")
    # evaluate: every run counts think tokens and unclosed blocks; No CoT is an empty closed block, a forced
    # truncation always closes its block
    ev = run / "evaluate" / "gsm8k"
    for folder in ("original", "nocot", "prompt/ratio-0.5", "truncation/ratio-0.5", "tokenskip/ratio-1.0",
                   "tokenskip/ratio-0.5"):
        rows, m = read_jsonl(ev / folder / "predictions.jsonl"), read_json(ev / folder / "metrics.json")
        assert m["n"] == 3 and m["think_unclosed"] == sum(not r["think_closed"] for r in rows), folder
        assert m["avg_cot_tokens"] == pytest.approx(sum(_count(tok, r["cot"]) for r in rows) / 3), folder
    nocot = read_jsonl(ev / "nocot" / "predictions.jsonl")
    assert all(r["think_closed"] and r["cot_tokens"] == 0 and r["prompt"].endswith(OPEN + "\n</think>\n\n"
                                                                                   "The final answer is: $\\boxed{")
               for r in nocot)
    assert all(r["think_closed"] for r in read_jsonl(ev / "truncation" / "ratio-0.5" / "predictions.jsonl"))
    assert "No CoT" in (run / "report.md").read_text()
