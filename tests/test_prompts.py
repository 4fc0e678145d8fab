import copy

import pytest

from conftest import LLAMA3_TEMPLATE
from tokenskip.task.prompts import (
    INSTRUCTION,
    answer_line,
    build_messages,
    build_prompt,
    format_ratio,
    prompt_reduction_instruction,
    ratio_marker,
)


@pytest.fixture()
def llama_tok(smol_tokenizer):
    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def test_chatml_prompt_with_and_without_ratio(smol_tokenizer):
    p = build_prompt(smol_tokenizer, "What is 2+3?")
    assert p.endswith("<|im_start|>user\n" + INSTRUCTION + "\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    p5 = build_prompt(smol_tokenizer, "What is 2+3?", 0.5)
    assert "What is 2+3?<|eot_id|>0.5<|eot_id|><|im_end|>" in p5
    assert build_prompt(smol_tokenizer, "Q", 1.0) == build_prompt(smol_tokenizer, "Q")


def test_llama_template_with_ratio_and_system(llama_tok):
    p = build_prompt(llama_tok, "Q?", 0.7, system_prompt="You are a helpful assistant.")
    assert p.startswith(llama_tok.bos_token + "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful "
                                              "assistant.<|eot_id|>")
    assert p.endswith("Q?<|eot_id|>0.7<|eot_id|><|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_custom_delimiter_and_formatting():
    msgs = build_messages("Q", 0.9, marker_delimiter="<SEP>")
    assert msgs == [{"role": "user", "content": INSTRUCTION + "\nQ<SEP>0.9<SEP>"}]
    assert format_ratio(1) == "1.0" and format_ratio(0.70000001) == "0.7" and format_ratio(0.55) == "0.55"
    assert ratio_marker(1.0) == ""


@pytest.mark.parametrize("bad", [0, -0.1, 1.01, float("nan"), "x", None])
def test_invalid_ratio_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        build_messages("Q", bad) if bad is not None else ratio_marker(bad)


def test_prompt_baseline_and_answer_line():
    assert "by 30%" in prompt_reduction_instruction(0.7)
    assert answer_line("18") == "\n\nThe final answer is: $\\boxed{18}$"


def test_template_missing_is_an_error(smol_tokenizer):
    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        build_prompt(tok, "Q")
