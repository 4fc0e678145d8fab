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
