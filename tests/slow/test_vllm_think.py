"""Budget forcing on vLLM (slow, needs vLLM): a think request with max_cot_tokens N thinks at most N tokens and ends
with an answer after ``</think>``, on the offline engine (evaluate's budget method) and on the async engine the
server uses, streamed or not. The packaged SmolLM2 model gets a chat template whose generation prompt opens a
think block (R1-Distill style; the tags are plain text to its tokenizer). Run in the vLLM venv:
``.venv-vllm/bin/python -m pytest -m vllm tests/slow/test_vllm_think.py``; the HF engine's tests are in
``tests/test_think.py``."""

from __future__ import annotations

import importlib.util

import pytest

from tokenskip.generation.inference import FORCE_ANSWER, Decoding, ForcedAnswerEngine, Query, answer, render_prompt
from tokenskip.task.grading import split_output
from tokenskip.task.prompt_format import PromptFormat

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")]

MODEL = "smollm2-135m-instruct"
#: ChatML whose generation prompt opens the think block (written here) and whose history drops thinking.
THINK_CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'].split('</think>')[-1] | trim }}"
                "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
QUESTIONS = ("Tom has 7 apples and eats 2. How many are left?", "What is 12 times 3?")


def _engine(kind: str):
    from tokenskip.engines import get_backend
    from tokenskip.engines.vllm_async import AsyncVLLMBackend

    kw = dict(model=MODEL, dtype="float32", enforce_eager=True, max_model_len=1024, batch_size=8)
    be = AsyncVLLMBackend(**kw) if kind == "async" else get_backend("vllm", **kw)
    be.tokenizer.chat_template = THINK_CHATML
    return be


def _check(text: str, think_ids: int, budget: int) -> None:
    think, sep, after = text.partition("</think>")
    assert sep, text
    assert think_ids <= budget and after.strip() and "</think>" not in after
    assert split_output(text).think_closed


@pytest.mark.parametrize("kind", ["offline", "async"])
def test_vllm_budget_closes_the_block_and_answers(kind):
    be = _engine(kind)
    try:
        fmt = PromptFormat().for_tokenizer(be.tokenizer)
        assert fmt.cot_format == "think"
        for budget in (4, 16):
            qs = [Query(question=q, max_cot_tokens=budget, decoding=Decoding(max_tokens=64)) for q in QUESTIONS]
            streamed: dict[int, list[int]] = {}
            hook = (lambda i, ids: streamed.setdefault(i, []).extend(ids)) if kind == "async" else None
            for i, a in enumerate(answer(be, qs, fmt, length_model=None, on_tokens=hook)):
                assert a.prompt.endswith("<think>\n") and a.cot_tokens <= budget and a.output_tokens <= 64
                _check(a.text, len(a.token_ids), budget)
                if a.finish_reason == "length":   # the budget, not the model, ended the thinking
                    assert FORCE_ANSWER in a.text.partition("</think>")[2]
                if hook:
                    assert len(streamed[i]) <= budget
        prompts = [render_prompt(be.tokenizer, fmt, question=q) for q in QUESTIONS]
        for g in ForcedAnswerEngine(be, answer_max_tokens=8).generate(prompts, 6):   # evaluate's budget method
            _check(g.text, len(g.token_ids), 6)
    finally:
        be.close()


@pytest.mark.parametrize("kind", ["offline", "async"])
def test_vllm_forces_an_answer_after_a_block_closed_with_none(kind, tmp_path, smol_tokenizer):
    """A model that closes its block and stops at once (scripted: conftest.stops_at_once) is made to answer, served
    (streamed on the async engine) and through the budget method's engine."""
    from conftest import R1_STYLE_TEMPLATE, stops_at_once, think_tokenizer
    from tokenskip.engines import get_backend
    from tokenskip.engines.vllm_async import AsyncVLLMBackend

    tok = think_tokenizer(smol_tokenizer, R1_STYLE_TEMPLATE)
    prompt = render_prompt(tok, PromptFormat(), question="What is 2 + 3?")
    stops_at_once(tok, prompt).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    kw = dict(model=str(tmp_path / "m"), dtype="float32", enforce_eager=True, max_model_len=512, batch_size=4)
    be = AsyncVLLMBackend(**kw) if kind == "async" else get_backend("vllm", **kw)
    try:
        (g,) = be.generate([prompt], [20])
        assert (g.text, g.finish_reason) == ("</think>", "stop")   # by itself the model writes no answer
        want = "</think>" + FORCE_ANSWER + "7}"
        streamed: list[int] = []
        hook = (lambda i, ids: streamed.extend(ids)) if kind == "async" else None
        (a,) = answer(be, [Query(question="What is 2 + 3?", max_cot_tokens=8, decoding=Decoding(max_tokens=40))],
                      PromptFormat().for_tokenizer(be.tokenizer), on_tokens=hook)
        assert a.text == want and a.final_answer == "7" and a.think_closed is True and a.cot_tokens == 0
        if hook:
            assert streamed == tok("</think>", add_special_tokens=False)["input_ids"]
        assert ForcedAnswerEngine(be, answer_max_tokens=5).generate([prompt], 8)[0].text == want
    finally:
        be.close()
