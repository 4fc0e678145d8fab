"""Paper-exact mode (issue 13): the answer line per mode, small defaults, and the paper recipes."""

from __future__ import annotations

import pytest

from tokenskip.finetune.sft import completion_for, ends_with_answer
from tokenskip.stages.build_sft import SFTDataConfig
from tokenskip.task.prompts import answer_line

QWEN_COT = "Natalia sold 48 / 2 = 24 clips in May.\nSo she sold 48 + 24 = 72 clips.\nThe answer is $\\boxed{72}$."


@pytest.mark.parametrize("cot,ends", [
    (QWEN_COT, True),
    ("3 + 4 = 7\n#### 7\n", True),
    ("3 + 4 = 7, so the answer is 7.", False),
    ("The answer is \\boxed{7}.\nLet me double-check: 3 + 4 = 7.", False),
    ("", False),
])
def test_ends_with_answer(cot, ends):
    assert ends_with_answer(cot) is ends


def test_answer_line_per_mode():
    # the reference keeps the full output and appends the line: the answer twice
    assert completion_for(QWEN_COT, "72", "always") == QWEN_COT + "\n\nThe final answer is: $\\boxed{72}$"
    # this project: a CoT that already ends with its answer is left as it is
    assert completion_for(QWEN_COT + "\n", "72", "if-missing") == QWEN_COT
    # a CoT without its answer (e.g. compressed past it) gets the line in both modes
    cut = "Natalia sold 48 / 2 = 24 clips May. 48 + 24 = 72"
    for mode in ("always", "if-missing"):
        assert completion_for(cut, "72", mode) == cut + answer_line("72")
    with pytest.raises(ValueError, match="answer_line"):
        completion_for(cut, "72", "never")
    assert SFTDataConfig().answer_line == "if-missing"


def test_small_defaults():
    from tokenskip.finetune.train_config import TrainConfig, lora_config
    from tokenskip.stages.evaluate import EvaluateConfig

    assert TrainConfig().lora_dropout == 0.0
    assert lora_config(TrainConfig(data="d", out="o")).lora_dropout == 0.0
    e = EvaluateConfig(model="m", max_model_len=4096)
    assert e.backend_kwargs()["max_model_len"] == 4096
    assert "max_model_len" not in EvaluateConfig(model="m").backend_kwargs()  # the model's own
    assert e.force_answer is False and e.scale_max_new_tokens is False and e.prompt_style == "chat-template"
    with pytest.raises(ValueError, match="max-model-len"):
        EvaluateConfig(model="m", max_model_len=0).validate()


PAPER_RECIPES = {"qwen2.5-7b-instruct-gsm8k": "qwen", "qwen2.5-7b-instruct-math": "qwen",
                 "llama3.1-8b-instruct-gsm8k": "llama"}


@pytest.mark.parametrize("name,family", sorted(PAPER_RECIPES.items()))
def test_paper_recipes_use_the_reference_mode(name, family, tmp_path, monkeypatch):
    from conftest import REPO
    from tokenskip.finetune.train_config import resolve_grad_accum
    from tokenskip.pipeline.recipe import load_recipe
    from tokenskip.pipeline.run import run_pipeline

    monkeypatch.chdir(tmp_path)
    # the paper's inputs (Hub models, MATH's train file) are not here: the dry run's input check, tested in
    # test_pipeline, would stop after the plan, which is what this test reads
    monkeypatch.setattr("tokenskip.pipeline.run.missing_inputs", lambda run, plans: [])
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    lines: list[str] = []
    plans = {p.name: p for p in run_pipeline(recipe, dry_run=True, echo=lines.append)}
    text = "\n".join(lines)
    assert f"compat=reference, reference_family={family}" in text
    assert "prompt_style=reference, answer_line=always, validation_share=0.1" in text
    assert "truncation=plain-cap" in text
    assert ("max_new_tokens×γ" in text) == name.endswith("math")
    gen, comp, sft, train = (plans[s].configs[0] for s in ("generate", "compress", "build_sft", "train"))
    assert gen.prompt_style == sft.prompt_style == "reference" and gen.max_model_len == 4096
    assert comp.compat == "reference" and comp.scorer == "llmlingua2"
    assert train.lora_dropout == 0.0
    # the effective batch stays the paper's 8 on 1, 2 and 8 GPUs
    assert [resolve_grad_accum(train, n) * train.per_device_batch_size * n for n in (1, 2, 8)] == [8, 8, 8]
    evals = plans["evaluate"].configs
    assert all(c.prompt_style == "reference" and not c.force_answer for c in evals)
    ts = [c for c in evals if c.method == "tokenskip"]
    assert ts and all(c.scale_max_new_tokens == name.endswith("math") for c in ts)
    if name.endswith("math"):
        assert comp.protect_kinds == ["boxed"] and "latex" in comp.prefer_kinds
