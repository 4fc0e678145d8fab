"""Reasoning-model benchmarks (issue 24 item 5): AIME 2024/2025 and GPQA-Diamond in the registry with their
graders, and evaluate's sampled decoding with pass@1 averaged over n samples and its spread."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tokenskip.contract.io import DataError, read_json, read_jsonl
from tokenskip.engines import Capabilities, Generation
from tokenskip.stages.evaluate import EvaluateConfig, run_evaluate
from tokenskip.stages.report.collect import read_metrics_row
from tokenskip.stages.report.markdown import render_table
from tokenskip.task.benchmarks import get_benchmark, shuffled_choices
from tokenskip.task.data import load_problems
from tokenskip.task.grading import answers_match, extract_answer, extract_choice, grade

AIME_ROWS = [
    {"id": 60, "problem": "Find the remainder when 2024 is divided by 1000.", "answer": "24", "solution": "24."},
    {"id": 61, "problem": "How many positive divisors does 12 have?", "answer": "006"},
]
GPQA_ROWS = [
    {"Record ID": f"rec{k}", "Question": f"Which particle is described in case {k}?", "Correct Answer": "muon",
     "Incorrect Answer 1": "pion", "Incorrect Answer 2": "kaon", "Incorrect Answer 3": "tau",
     "Explanation": "It decays like a heavy electron."} for k in range(12)
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_registry_has_reasoning_benchmarks():
    for name, label, grader, hub in (("aime24", "AIME 2024", "integer", "HuggingFaceH4/aime_2024"),
                                     ("aime2025", "AIME 2025", "integer", "math-ai/aime25"),
                                     ("gpqa", "GPQA-Diamond", "choice", "Idavidrein/gpqa")):
        b = get_benchmark(name)
        assert (b.label, b.grader, b.hub_id) == (label, grader, hub)
        assert b.max_new_tokens == 32768  # DeepSeek-R1 distills' evaluation length (model card)
    assert get_benchmark("gpqa-diamond").hub_config == "gpqa_diamond"


def test_aime_rows_from_a_local_file(tmp_path):
    path = write_jsonl(tmp_path / "aime.jsonl", AIME_ROWS)
    probs = load_problems("aime2024", str(path))
    assert [(p.id, p.answer) for p in probs] == [("60", "24"), ("61", "6")]   # leading zeros dropped
    bad = write_jsonl(tmp_path / "bad.jsonl", AIME_ROWS[:1] + [{"problem": "x?", "answer": "12.5"}])
    with pytest.raises(DataError) as e:
        load_problems("aime2025", str(bad))
    assert e.value.line == 2 and e.value.field == "answer" and "0 to 999" in str(e.value)


def test_gpqa_choices_shuffled_deterministically_per_question(tmp_path):
    path = write_jsonl(tmp_path / "gpqa.jsonl", GPQA_ROWS)
    probs = load_problems("gpqa-diamond", str(path))
    again = load_problems("gpqa-diamond", str(path))
    assert [(p.question, p.answer) for p in probs] == [(p.question, p.answer) for p in again]
    for p in probs:
        listing = p.question.split("\n\n", 1)[1].splitlines()
        assert [line[:3] for line in listing] == ["A) ", "B) ", "C) ", "D) "]
        assert sorted(line[3:] for line in listing) == ["kaon", "muon", "pion", "tau"]
        assert listing["ABCD".index(p.answer)][3:] == "muon"     # the gold letter points at the correct choice
        assert p.meta["choices"][("ABCD".index(p.answer))] == "muon"
    # the order depends on the question, so the correct letter is not always the same one
    assert len(Counter(p.answer for p in probs)) >= 3
    assert shuffled_choices("k", "a", ["b", "c", "d"]) == shuffled_choices("k", "a", ["b", "c", "d"])


@pytest.mark.parametrize("text, gold, correct", [
    ("so the total is \\boxed{033}.", "33", True),
    ("\\boxed{33.0}", "33", True),
    ("The final answer is: 204", "204", True),
    ("\\boxed{33.5}", "33", False),
    ("\\boxed{1000}", "1000", False),     # outside the AIME range
    ("\\boxed{-33}", "33", False),
    ("no answer at all", "33", False),
])
def test_integer_grader(text, gold, correct):
    assert grade(text, gold, "aime2024").correct is correct


@pytest.mark.parametrize("text, letter", [
    ("Thus \\boxed{B}", "B"), ("\\boxed{(C)}", "C"), ("\\boxed{\\text{D}}", "D"), ("\\boxed{A) muon}", "A"),
    ("A is tempting, but the answer is (C).", "C"), ("Answer: B", "B"), ("Final answer: **D**", "D"),
    ("the answer is a subtle one", None), ("\\boxed{Blue}", None),
])
def test_choice_extraction(text, letter):
    assert extract_choice(text) == letter
    assert extract_answer(text, "gpqa-diamond") == letter


def test_choice_grader():
    assert grade("\\boxed{b}", "B", "choice").correct
    assert not grade("Answer: C", "B", "gpqa").correct
    assert answers_match("(B)", "B", "choice") and not answers_match("Bee", "B", "choice")


def test_custom_benchmark_takes_the_new_graders(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"question": "2+2?", "answer": "4"}])
    assert load_problems(get_benchmark("custom", grader="integer"), str(path))[0].answer == "4"
    assert get_benchmark("custom", grader="choice").max_new_tokens == 32768


class ScriptedBackend:
    """Answers from a script: the k-th time it sees a prompt it answers ``script[question][k]``; records the
    sampling settings it was called with."""

    capabilities = Capabilities(sampling=True, chunk_size=64)

    def __init__(self, tokenizer, script: dict[str, list[str]]):
        self.tokenizer, self.script, self.seen, self.calls = tokenizer, script, Counter(), []

    def generate(self, prompts, caps, adapter=None, temperature=0.0, top_p=1.0):
        self.calls.append((temperature, top_p))
        out = []
        for p in prompts:
            q = next(k for k in self.script if k in p)
            text = f"Some steps.\n\nThe final answer is: $\\boxed{{{self.script[q][self.seen[p]]}}}$"
            self.seen[p] += 1
            out.append(Generation(text, 9, 0.01, "stop", list(range(9))))
        return out

    def count_tokens(self, text):
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def close(self):
        pass


def test_evaluate_samples_report_pass_at_1_with_spread(tmp_path, smol_tokenizer):
    path = write_jsonl(tmp_path / "aime.jsonl", AIME_ROWS)
    # question 60 right in samples 0-2, question 61 right in sample 0 only: per-sample accuracy 1, .5, .5, 0
    backend = ScriptedBackend(smol_tokenizer, {"2024 is divided": ["24", "24", "24", "7"],
                                               "divisors": ["6", "5", "5", "5"]})
    cfg = EvaluateConfig(model="scripted", benchmark="aime2024", data=str(path), out=str(tmp_path / "ev"),
                         samples=4, temperature=0.6, top_p=0.95, seed=3, max_new_tokens=64)
    m = run_evaluate(cfg, backend=backend)[0]
    assert set(backend.calls) == {(0.6, 0.95)}   # the model card's sampling reached the engine
    rows = read_jsonl(tmp_path / "ev" / "aime2024" / "original" / "predictions.jsonl")
    assert [r["id"] for r in rows] == [f"{q}#s{k}" for q in ("60", "61") for k in range(4)]
    saved = read_json(tmp_path / "ev" / "aime2024" / "original" / "metrics.json")
    assert saved["samples"] == 4 and saved["accuracy_per_sample"] == [1.0, 0.5, 0.5, 0.0]
    assert saved["pass_at_1"] == pytest.approx(0.5) and saved["accuracy"] == pytest.approx(0.5)
    assert saved["accuracy_std"] == pytest.approx(0.4082, abs=1e-4) and m["accuracy_std"] == saved["accuracy_std"]
    row = read_metrics_row(tmp_path / "ev" / "aime2024" / "original" / "metrics.json", "aime2024", "original",
                           None, tmp_path / "ev", [])
    assert "50.0 ± 40.8 (pass@1, 4 samples)" in render_table([row.to_dict()])


def test_greedy_evaluate_metrics_unchanged_and_sampling_limits(tmp_path, smol_tokenizer):
    path = write_jsonl(tmp_path / "aime.jsonl", AIME_ROWS)
    backend = ScriptedBackend(smol_tokenizer, {"2024 is divided": ["24"], "divisors": ["5"]})
    run_evaluate(EvaluateConfig(model="scripted", benchmark="aime2024", data=str(path), out=str(tmp_path / "g"),
                                max_new_tokens=64), backend=backend)
    saved = read_json(tmp_path / "g" / "aime2024" / "original" / "metrics.json")
    assert saved["accuracy"] == 0.5 and "samples" not in saved and "accuracy_std" not in saved
    assert set(backend.calls) == {(0.0, 1.0)}
    with pytest.raises(ValueError, match="copies of the same greedy CoT"):
        EvaluateConfig(model="m", benchmark="aime2024", samples=4).validate()
    with pytest.raises(ValueError, match="decodes greedily"):
        EvaluateConfig(model="m", benchmark="aime2024", method="truncation", force_answer=True,
                       temperature=0.6).validate()
