"""The CPU lab's problems: seeded, disjoint splits; worked solutions whose arithmetic holds; GSM8K-loadable."""

from __future__ import annotations

import random
import re

import pytest

pytest.importorskip("reasoning_gym")

from reasoning_gym.arithmetic.leg_counting import ANIMALS  # noqa: E402

from tokenskip.contract.io import read_json, read_jsonl  # noqa: E402
from tokenskip.lab.data import (  # noqa: E402
    TASKS,
    LabDataConfig,
    chain_sum_solution,
    leg_counting_solution,
    make_splits,
    run_lab_data,
)
from tokenskip.task.data import load_problems  # noqa: E402
from tokenskip.task.grading import is_correct  # noqa: E402
from tokenskip.task.prompts import answer_line  # noqa: E402

EQUATION = re.compile(r"(-?\d+(?: [x+\-] -?\d+)+) = (-?\d+)")


def equations(text: str) -> list[tuple[str, int, int]]:
    """Every ``a op b (op c...) = v`` in ``text``: (expression, its value, stated value)."""
    out = []
    for expr, stated in EQUATION.findall(text):
        value = eval(expr.replace(" x ", " * "))  # digits and + - * only (matched by the pattern)
        out.append((expr, value, int(stated)))
    return out


def cfg(**kw) -> LabDataConfig:
    base = dict(out="unused", train=30, validation=10, test=10, seed=3)
    return LabDataConfig(**(base | kw))


def test_same_seed_same_rows_other_seed_other_rows():
    a, b = make_splits(cfg()), make_splits(cfg())
    assert a == b
    c = make_splits(cfg(seed=4))
    assert [r["question"] for r in c["test"]] != [r["question"] for r in a["test"]]


def test_splits_are_disjoint_and_sized_and_test_is_stable():
    c = cfg(tasks=["leg_counting", "chain_sum"], train=40)
    s = make_splits(c)
    assert {k: len(v) for k, v in s.items()} == {"test": 10, "validation": 10, "train": 40}
    keys = {split: {(r["task"], *TASKS[r["task"]].key({"metadata": r["meta"]})) for r in rows}
            for split, rows in s.items()}
    assert sum(len(k) for k in keys.values()) == 60          # no duplicate within a split either
    assert not (keys["train"] & keys["test"]) and not (keys["train"] & keys["validation"])
    assert not (keys["validation"] & keys["test"])
    assert {r["task"] for r in s["train"]} == {"leg_counting", "chain_sum"}
    # more training questions never change the test split
    assert make_splits(cfg(tasks=["leg_counting", "chain_sum"], train=80))["test"] == s["test"]


def test_leg_counting_solution_known_example():
    text = leg_counting_solution({"crab": 2, "duck": 3}, ANIMALS, random.Random(0))
    assert "2 x 10 = 20" in text and "3 x 2 = 6" in text
    assert "20 + 6 = 26" in text and text.splitlines()[-1].count("26") == 1
    one = leg_counting_solution({"elephant": 1, "spider": 3}, ANIMALS, random.Random(5))
    assert "1 x 4 = 4" in one and "3 x 8 = 24" in one and "4 + 24 = 28" in one
    assert "a elephant" not in one.lower()


@pytest.mark.parametrize("seed", range(6))
def test_leg_counting_three_kinds_adds_one_pair_per_step(seed):
    text = leg_counting_solution({"woodlouse": 3, "leech": 1, "bee": 5}, ANIMALS, random.Random(seed))
    eqs = equations(text)
    assert [e[2] for e in eqs[:3]] == [42, 0, 30]
    assert all(value == stated for _, value, stated in eqs)
    assert eqs[-1][2] == 72
    assert "42 + 0 = 42" in text and "42 + 30 = 72" in text and "42 + 0 + 30" not in text


def test_chain_sum_solution_steps():
    text = chain_sum_solution("4 - 1 - 7", random.Random(0))
    assert "4 - 1 = 3" in text and "3 - 7 = -4" in text
    text = chain_sum_solution("12 + 30 - 5 + 8", random.Random(1))
    assert ["12 + 30 = 42" in text, "42 - 5 = 37" in text, "37 + 8 = 45" in text] == [True] * 3
    for bad in ("4 * 5", "4 -", "x + 1 + 2"):
        with pytest.raises(ValueError):
            chain_sum_solution(bad, random.Random(0))


def test_every_solution_adds_up_to_the_answer():
    s = make_splits(cfg(tasks=["leg_counting", "chain_sum"], train=60))
    for rows in s.values():
        for r in rows:
            solution, gold = r["answer"].rsplit("\n#### ", 1)
            eqs = equations(solution)
            assert eqs, r["id"]
            assert all(value == stated for _, value, stated in eqs), (r["id"], solution)
            if r["task"] == "leg_counting":
                products = [count * ANIMALS[a] for a, count in r["meta"]["animals"].items()]
                assert [e[2] for e in eqs[:len(products)]] == products, r["id"]
                assert int(gold) == sum(products) == r["meta"]["total_legs"]
            assert eqs[-1][2] == int(gold), (r["id"], solution)
            assert len(eqs) >= 2   # at least two arithmetic steps


def test_rows_load_as_a_numeric_benchmark(tmp_path):
    summary = run_lab_data(cfg(out=str(tmp_path / "lab"), tasks=["leg_counting", "chain_sum"]))
    assert summary["n"] == {"test": 10, "validation": 10, "train": 30}
    assert summary["generator"] == "reasoning-gym==0.1.25"
    assert read_json(tmp_path / "lab" / "summary.json")["per_task"]["train"] == {"leg_counting": 15, "chain_sum": 15}
    problems = load_problems("gsm8k", str(tmp_path / "lab" / "test.jsonl"))
    rows = read_jsonl(tmp_path / "lab" / "test.jsonl")
    assert [p.id for p in problems] == [f"lab/test/{i}" for i in range(10)]
    for p, r in zip(problems, rows):
        assert p.answer == r["answer"].rsplit("#### ", 1)[1] and "####" not in p.solution
        assert p.solution.strip() and p.question == r["question"]
        assert is_correct(p.solution + answer_line(p.answer), p.answer, "gsm8k")
        assert not is_correct(p.solution + answer_line(str(int(p.answer) + 1)), p.answer, "gsm8k")
    # rewriting gives the same bytes
    before = (tmp_path / "lab" / "train.jsonl").read_bytes()
    run_lab_data(cfg(out=str(tmp_path / "lab"), tasks=["leg_counting", "chain_sum"]))
    assert (tmp_path / "lab" / "train.jsonl").read_bytes() == before


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="--tasks"):
        cfg(tasks=["poetry"]).validate()
    with pytest.raises(ValueError, match="--train"):
        cfg(train=-1).validate()
    with pytest.raises(ValueError, match="--min-animals"):
        cfg(min_animals=3, max_animals=2).validate()
    # one kind of animal, one of it: only 37 distinct questions exist
    with pytest.raises(ValueError, match="distinct questions"):
        make_splits(cfg(min_animals=1, max_animals=1, max_instances=1, train=40))


def test_cli_writes_the_splits(tmp_path):
    from tokenskip.cli import main

    assert main(["lab-data", "--out", str(tmp_path / "d"), "--train", "4", "--validation", "2", "--test", "3",
                 "--tasks", "chain_sum"]) == 0
    assert len(read_jsonl(tmp_path / "d" / "test.jsonl")) == 3
    assert {r["task"] for r in read_jsonl(tmp_path / "d" / "train.jsonl")} == {"chain_sum"}
    assert main(["lab-data", "--out", str(tmp_path / "e"), "--tasks", "poetry"]) == 2


def test_redundancy_drops_only_the_optional_sentences():
    full = leg_counting_solution({"crab": 2, "duck": 3}, ANIMALS, random.Random(0))
    bare = leg_counting_solution({"crab": 2, "duck": 3}, ANIMALS, random.Random(0), redundancy=0.0)
    assert len(full.splitlines()) == 5 and len(bare.splitlines()) == 3
    assert [e[1:] for e in equations(bare)] == [(20, 20), (6, 6), (26, 26)]
    assert "2 x 10 = 20" in bare.splitlines()[0] and bare.splitlines()[-1].endswith(("26 legs in total.", "= 26.",
                                                                                    "26 legs."))
    steps = chain_sum_solution("4 - 1 - 7", random.Random(0), 0.0).splitlines()
    assert len(steps) == 2 and "4 - 1 = 3" in steps[0] and "3 - 7 = -4" in steps[1]
    half = make_splits(cfg(redundancy=0.5, train=60))["train"]
    lines = [len(r["answer"].rsplit("\n#### ", 1)[0].splitlines()) - len(r["meta"]["animals"]) for r in half]
    assert set(lines) == {1, 2, 3}       # sum line always, plus 0, 1 or 2 optional sentences
    with pytest.raises(ValueError, match="--redundancy"):
        cfg(redundancy=1.5).validate()
