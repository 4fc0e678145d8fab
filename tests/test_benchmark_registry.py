"""Benchmark registry: names, aliases, grader kinds, the custom JSONL benchmark, grading by kind."""

from __future__ import annotations

import json

import pytest

from tokenskip.contract.io import DataError
from tokenskip.task.benchmarks import get_benchmark, grader_kind, names
from tokenskip.task.data import load_problems
from tokenskip.task.grading import extract_answer, is_correct


def test_registered_benchmarks_and_aliases():
    assert {"gsm8k", "math", "math500", "math-500", "math-train", "custom"} <= set(names())
    g, m = get_benchmark("GSM8K"), get_benchmark("math500")
    assert (g.name, g.grader, g.max_new_tokens, g.hub_id, g.label) == ("gsm8k", "numeric", 512, "openai/gsm8k", "GSM8K")
    assert (m.name, m.grader, m.max_new_tokens, m.label) == ("math", "symbolic", 1024, "MATH-500")
    t = get_benchmark("math-train")
    assert (t.grader, t.hub_split) == ("symbolic", "train")
    assert get_benchmark("gsm8k", grader="symbolic").grader == "symbolic"
    with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'"):
        get_benchmark("gsm9k")
    with pytest.raises(ValueError, match="custom only"):
        get_benchmark("gsm8k", question_field="problem")


def test_custom_benchmark_reads_named_fields(tmp_path):
    p = tmp_path / "mine.jsonl"
    p.write_text(json.dumps({"problem": "What is 2 + 3?", "answer": "5"}) + "\n"
                 + json.dumps({"problem": "What is 10 / 4?", "answer": 2.5, "id": "q-div"}) + "\n")
    bench = get_benchmark("custom", "problem", "answer", "numeric")
    assert (bench.name, bench.grader, bench.max_new_tokens) == ("custom", "numeric", 512)
    probs = load_problems(bench, str(p))
    assert [(x.id, x.question, x.answer) for x in probs] == [("mine/0", "What is 2 + 3?", "5"),
                                                             ("q-div", "What is 10 / 4?", "2.5")]
    assert get_benchmark("custom", grader="symbolic").max_new_tokens == 1024
    with pytest.raises(ValueError, match="needs --grader"):
        get_benchmark("custom", "problem", "answer")
    with pytest.raises(DataError, match=r"mine\.jsonl, line 1: field 'question': missing"):
        load_problems(get_benchmark("custom", grader="numeric"), str(p))
    with pytest.raises(ValueError, match="no Hub dataset"):
        load_problems(bench)


@pytest.mark.parametrize("text,gold,bench,kind,want", [
    ("so 3 + 2 = 5 apples", "5", "gsm8k", "numeric", True),
    ("The final answer is $\\frac{1}{2}$", "0.5", "gsm8k", "numeric", True),
    ("The final answer is $\\frac{1}{2}$", "\\frac12", "math500", "symbolic", True),
    ("so 3 + 2 = 5", "5", "math", "symbolic", False),   # symbolic: no last-number fallback
])
def test_grading_by_kind_equals_grading_by_benchmark_name(text, gold, bench, kind, want):
    assert grader_kind(bench) == kind
    assert is_correct(text, gold, bench) is want
    assert is_correct(text, gold, kind) is want
    assert extract_answer(text, bench) == extract_answer(text, kind)


def test_unknown_grader_is_an_error():
    with pytest.raises(ValueError, match="unknown benchmark or grader 'fuzzy'"):
        is_correct("5", "5", "fuzzy")


def test_a_new_benchmark_is_one_registry_entry(tmp_path):
    # what the README's "adding a benchmark" says
    from tokenskip.task import benchmarks as B

    p = tmp_path / "svamp.jsonl"
    p.write_text(json.dumps({"ID": "chal-1", "Body": "Jack had 8 pens.", "Question": "?", "Answer": 8.0}) + "\n")
    B.register(B.Benchmark("svamp", "SVAMP", grader="numeric", max_new_tokens=512,
                           parse_row=B.mapped_parser("Body", "Answer", id_field="ID"), hub_id="ChilleD/SVAMP"))
    try:
        (pb,) = load_problems("svamp", str(p))
        assert (pb.id, pb.question, pb.answer) == ("chal-1", "Jack had 8 pens.", "8.0")
        assert is_correct("so 8 pens", pb.answer, "svamp")
        with pytest.raises(ValueError, match="already taken"):
            B.register(B.Benchmark("svamp2", "x", "numeric", 1, B.parse_gsm8k_row, aliases=("svamp",)))
        assert "svamp2" not in B.names()  # a refused entry leaves nothing behind
    finally:
        B._REGISTRY.pop("svamp", None)
        B._ALIASES.pop("svamp", None)
