"""Paper-exact mode (issue 13): the answer line per mode, small defaults, and the paper recipes."""

from __future__ import annotations

import pytest

from tokenskip.prompts import answer_line
from tokenskip.sft import SFTDataConfig, completion_for, ends_with_answer

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
    from tokenskip.evaluate import EvaluateConfig
    from tokenskip.train import TrainConfig, lora_config

    assert TrainConfig().lora_dropout == 0.0
    assert lora_config(TrainConfig(data="d", out="o")).lora_dropout == 0.0
    e = EvaluateConfig(model="m", max_model_len=4096)
    assert e.backend_kwargs()["max_model_len"] == 4096
    assert EvaluateConfig(model="m").backend_kwargs()["max_model_len"] is None
    assert e.force_answer is False and e.scale_max_new_tokens is False and e.prompt_style == "chat-template"
    with pytest.raises(ValueError, match="max-model-len"):
        EvaluateConfig(model="m", max_model_len=0).validate()
