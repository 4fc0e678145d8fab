"""The no-CoT control: the answer line is forced open, no CoT token is written, grading reads the answer."""

from __future__ import annotations

import json

import pytest

from tokenskip.contract.io import read_json, read_jsonl
from tokenskip.engines import Generation
from tokenskip.methods import get_method
from tokenskip.stages.evaluate import EvaluateConfig, run_dir, run_evaluate
from tokenskip.task.grading import grade

OPENER = "The final answer is: $\\boxed{"


@pytest.fixture()
def data(tmp_path):
    rows = [{"id": f"q{i}", "question": f"How many legs do {i} dogs have?",
             "answer": f"{i} x 4 = {4 * i}\n#### {4 * i}"}
            for i in range(1, 4)]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


class Echo:
    """A stand-in engine that answers each prompt with a fixed continuation."""

    name, batch_size, tokenizer = "fake", 4, None

    def __init__(self, texts):
        self.texts, self.seen = texts, []

    def count_tokens(self, text):
        return len(text.split())

    def generate(self, prompts, max_new_tokens, adapter=None):
        self.seen.append((list(prompts), max_new_tokens))
        return [Generation(t, 2, 0.1, "stop", [1, 2]) for t in self.texts[:len(prompts)]]


def test_forced_answer_backend_puts_the_opener_back():
    inner = Echo(["12}$", "7", "x"])
    # the nocot method's decoding (a method object of the registry, tokenskip.methods.nocot)
    gens = get_method("nocot").generate(inner, ["p1" + OPENER, "p2" + OPENER, "p3" + OPENER], 24, None, None)
    assert [g.text for g in gens] == [OPENER + "12}$", OPENER + "7}", OPENER + "x}"]
    assert inner.seen[0][1] == 24
    g = grade(gens[0].text, "12", "gsm8k")
    assert g.correct and g.answer == "12" and g.cot == ""
    assert grade(gens[1].text, "7", "gsm8k").correct and not grade(gens[2].text, "7", "gsm8k").correct


def test_nocot_runs_with_zero_cot_tokens(tmp_path, tiny_model_dir, data):
    base = dict(model=tiny_model_dir, benchmark="gsm8k", data=data, max_new_tokens=8, batch_size=3,
                out=str(tmp_path / "eval"), answer_max_tokens=5)
    run_evaluate(EvaluateConfig(**base))
    (m,) = run_evaluate(EvaluateConfig(**base, method="nocot"))
    d = run_dir(tmp_path / "eval", "gsm8k", "nocot")
    assert d == tmp_path / "eval" / "gsm8k" / "nocot"
    rows = read_jsonl(d / "predictions.jsonl")
    assert [r["id"] for r in rows] == ["q1", "q2", "q3"]
    assert all(r["prompt"].endswith(OPENER) and r["output"].startswith(OPENER) for r in rows)
    assert all(r["cot_tokens"] == 0 and 0 < r["num_tokens"] <= 5 for r in rows)
    assert m["method"] == "nocot" and m["ratio"] is None and m["avg_cot_tokens"] == 0
    assert read_json(d / "metrics.json")["act_ratio"] == 0.0
    assert EvaluateConfig(**base, method="nocot").resolved_ratios == []


# ------------------------------------------------------------------------------------------- think models

def test_a_think_model_gets_an_empty_closed_block_before_the_answer(smol_tokenizer):
    """The No-CoT control of a think model is Qwen3's 'thinking off' turn: an empty closed block, then the answer."""
    from types import SimpleNamespace

    from conftest import QWEN3_STYLE_TEMPLATE, R1_STYLE_TEMPLATE, think_tokenizer
    from tokenskip.contract.records import Problem
    from tokenskip.task.prompts import build_prompt
    from tokenskip.task.think import pin_enable_thinking

    method, p = get_method("nocot"), Problem("q", "What is 2 + 3?", "5")
    cfg = SimpleNamespace(system_prompt=None, cot_format="auto")
    r1 = think_tokenizer(smol_tokenizer, R1_STYLE_TEMPLATE)
    assert method.prompt(r1, p, None, cfg) == build_prompt(r1, p.question) + "\n</think>\n\n" + OPENER
    assert method.prompt(r1, p, None, cfg).endswith("<|Assistant|><think>\n\n</think>\n\n" + OPENER)
    q3 = think_tokenizer(smol_tokenizer, QWEN3_STYLE_TEMPLATE)
    thinking = method.prompt(q3, p, None, cfg)
    q3_off = pin_enable_thinking(think_tokenizer(smol_tokenizer, QWEN3_STYLE_TEMPLATE), False)
    assert thinking == build_prompt(q3_off, p.question) + OPENER   # what Qwen3's own template writes
    assert method.prompt(q3_off, p, None, cfg) == thinking        # a prompt that closed the block gets no second one
    # a plain template: only the think format asks for the block
    assert method.prompt(smol_tokenizer, p, None, cfg) == build_prompt(smol_tokenizer, p.question) + OPENER
    think_cfg = SimpleNamespace(system_prompt=None, cot_format="think")
    assert method.prompt(smol_tokenizer, p, None, think_cfg).endswith("assistant\n<think>\n\n</think>\n\n" + OPENER)
    (g,) = method.generate(Echo(["5}$"]), [thinking], 24, None, None)
    assert g.text == "</think>\n\n" + OPENER + "5}$"
    parts = grade(g.text, "5", "gsm8k", cot_format="think")
    assert parts.correct and parts.cot == "" and parts.think_closed is True


def test_nocot_on_a_think_model_closes_every_block(tmp_path, smol_tokenizer, data):
    """Through evaluate on an R1-style tiny model (auto resolves to think): no row is flagged unclosed, none
    counts a CoT token, and the prompt holds one empty block."""
    from conftest import R1_STYLE_TEMPLATE, make_tiny_llama, think_tokenizer
    from tokenskip.engines.hf import HFBackend

    tok = think_tokenizer(smol_tokenizer, R1_STYLE_TEMPLATE)
    engine = HFBackend(hf_model=make_tiny_llama(tok, seed=3), hf_tokenizer=tok, batch_size=3)
    cfg = EvaluateConfig(model="tiny-think", benchmark="gsm8k", data=data, out=str(tmp_path / "eval"),
                         method="nocot", answer_max_tokens=4, threads=1)
    (m,) = run_evaluate(cfg, backend=engine)
    rows = read_jsonl(run_dir(tmp_path / "eval", "gsm8k", "nocot") / "predictions.jsonl")
    assert m["think_unclosed"] == 0 and m["avg_cot_tokens"] == 0
    assert all(r["think_closed"] is True and r["cot"] == "" and r["cot_tokens"] == 0 for r in rows)
    assert all(r["prompt"].endswith("<think>\n\n</think>\n\n" + OPENER) for r in rows)
    assert all(r["output"].startswith("</think>\n\n" + OPENER) and r["output"].endswith("}") for r in rows)
