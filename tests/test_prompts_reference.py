"""The reference prompt style: the TokenSkip reference's hand-written prompt strings, byte for byte."""

from __future__ import annotations

import pytest

from conftest import LLAMA3_TEMPLATE
from tokenskip.task.prompts import reference_prompt, reference_prompt_family, styled_prompt, warn_default_system

Q = "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"
INSTR = "Please reason step by step, and put your final answer within \\boxed{}."

# The reference's strings, written out by hand from the reference facts in docs/method.md.
QWEN_05 = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + INSTR + "\n" + Q
           + "<|eot_id|>0.5<|eot_id|><|im_end|>\n<|im_start|>assistant\n")
QWEN_10 = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + INSTR + "\n" + Q
           + "<|im_end|>\n<|im_start|>assistant\n")
LLAMA_EVAL_07 = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + INSTR + "\n" + Q
                 + "\n<|eot_id|>0.7<|eot_id|><|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
LLAMA_TRAIN_07 = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + INSTR + "\n" + Q
                  + "<|eot_id|>0.7<|eot_id|><|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
LLAMA_EVAL_10 = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + INSTR + "\n" + Q
                 + "\n<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_reference_strings_byte_for_byte():
    assert reference_prompt(Q, 0.5, "qwen") == QWEN_05
    assert reference_prompt(Q, 1.0, "qwen") == QWEN_10
    assert reference_prompt(Q, None, "qwen") == QWEN_10
    assert reference_prompt(Q, 0.5, "qwen", training=True) == QWEN_05
    assert reference_prompt(Q, 0.7, "llama") == LLAMA_EVAL_07
    assert reference_prompt(Q, 0.7, "llama", training=True) == LLAMA_TRAIN_07
    assert reference_prompt(Q, 1.0, "llama") == LLAMA_EVAL_10
    assert "Cutting Knowledge" not in LLAMA_EVAL_07


def test_styled_prompt_picks_the_family_from_the_model(smol_tokenizer):
    assert styled_prompt(smol_tokenizer, Q, 0.5, style="reference", model="Qwen/Qwen2.5-7B-Instruct") == QWEN_05
    assert styled_prompt(smol_tokenizer, Q, 0.7, style="reference",
                         model="meta-llama/Llama-3.1-8B-Instruct") == LLAMA_EVAL_07
    assert styled_prompt(smol_tokenizer, Q, 0.7, style="reference", model="/models/Llama-3.1-8B-Instruct",
                         training=True) == LLAMA_TRAIN_07
    # the chat-template style is unchanged: SmolLM2's own template
    ct = styled_prompt(smol_tokenizer, Q, 0.5, system_prompt="You are a helpful assistant.")
    assert ct == QWEN_05  # SmolLM2's ChatML renders the same string as the reference's Qwen prompt
    with pytest.raises(ValueError, match="unknown prompt style"):
        styled_prompt(smol_tokenizer, Q, style="alpaca")
    with pytest.raises(ValueError, match="no system turn"):
        reference_prompt(Q, 0.5, "llama", system_prompt="Be brief.")
    assert reference_prompt_family("Qwen/Qwen2.5-Math-7B") == "qwen"


def test_warns_when_the_template_inserts_a_default_system(smol_tokenizer):
    msg = warn_default_system(smol_tokenizer, "chat-template", None)
    assert msg is not None and "default system turn" in msg
    assert warn_default_system(smol_tokenizer, "chat-template", "You are a helpful assistant.") is None
    assert warn_default_system(smol_tokenizer, "reference", None) is None
    import copy

    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = LLAMA3_TEMPLATE  # inserts no system block when none is given
    assert warn_default_system(tok, "chat-template", None) is None
