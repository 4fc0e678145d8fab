"""Typed cross-stage records, the run layout and the γ helpers: one definition each, checked on read."""

from __future__ import annotations

import json

import pytest

from tokenskip.contract.io import DataError
from tokenskip.contract.layout import (
    compressed_file,
    compressed_ratios,
    eval_run_dir,
    eval_runs,
    find_adapter,
    ratio_from_name,
    ratio_name,
)
from tokenskip.contract.ratios import PAPER_RATIOS, format_ratio, paper_grid, parse_ratio, validate_ratios
from tokenskip.contract.records import CompressedCot, Prediction, Problem, RunMetrics, SFTExample, SourceCot, act_ratio

PRED = dict(id="q1", question="What is 2 + 3?", prompt="<p>", output="2 + 3 = 5. The final answer is 5.",
            cot="2 + 3 = 5.", cot_tokens=7, pred="5", gold="5", correct=True, latency_s=0.25, num_tokens=12,
            finish_reason="stop", output_token_ids=[1, 2, 3])


@pytest.mark.parametrize("rec", [
    Problem("p1", "Q?", "5", "because", {"level": 3}),
    Prediction(**PRED),
    Prediction(**{**PRED, "pred": None, "correct": False}, cap=4, original_cot_tokens=8),
    SourceCot("s1", "Q?", "5", "a CoT", 3),
    CompressedCot("s1", "Q?", "5", 0.5, "CoT", 10, 5, 0.5, "random", False, 2, 4, True),
    SFTExample("s1", 0.7, "<prompt>", "cot\n\nThe final answer is: $\\boxed{5}$"),
    RunMetrics(n=3, accuracy=1 / 3, avg_cot_tokens=12.5, benchmark="gsm8k", method="tokenskip", ratio=0.5,
               act_ratio=0.61, ids=["a", "b", "c"], settings={"model": "m"}),
])
def test_round_trip_through_json(rec):
    row = json.loads(json.dumps(rec.to_json()))
    assert row["schema"] == rec.SCHEMA and row["schema_version"] == 1
    assert type(rec).from_json(row, "f.jsonl", 1) == rec


def test_optional_truncation_fields_are_left_out_unless_set():
    assert "cap" not in Prediction(**PRED).to_json()
    assert Prediction(**PRED, cap=4).to_json()["cap"] == 4


def test_rows_written_before_the_tag_are_read_and_numbers_in_text_fields_become_text():
    old = {"id": "s1", "question": "Q?", "answer": 18, "cot": "c", "cot_tokens": 3.0}
    assert SourceCot.from_json(old, "source.jsonl", 4) == SourceCot("s1", "Q?", "18", "c", 3)


@pytest.mark.parametrize("row,field,problem", [
    ({**PRED, "cot_tokens": "many"}, "cot_tokens", "expected an integer"),
    ({**PRED, "correct": "yes"}, "correct", "expected true or false"),
    ({**PRED, "latency_s": float("nan")}, "latency_s", "expected a finite number"),
    ({k: v for k, v in PRED.items() if k != "gold"}, "gold", "missing"),
    ({**PRED, "schema": "sft_example"}, "schema", "expected a 'prediction' row"),
    ({**PRED, "schema_version": 2}, "schema_version", "this tokenskip reads prediction rows up to version 1, got 2"),
])
def test_bad_rows_name_file_line_and_field(row, field, problem):
    with pytest.raises(DataError, match=rf"preds\.jsonl, line 7: field '{field}': {problem}") as e:
        Prediction.from_json(row, "preds.jsonl", 7)
    assert e.value.line == 7 and e.value.field == field


def test_act_ratio_is_over_common_ids():
    assert act_ratio({"a": 50, "b": 30, "x": 999}, {"a": 100, "b": 60, "c": 10}) == (0.5, 2)
    assert act_ratio({"x": 5}, {"a": 100}) == (None, 0)
    assert act_ratio({"a": 5}, {"a": 0}) == (None, 1)


def test_gamma_text_round_trips_and_the_paper_grid():
    assert [format_ratio(r) for r in (0.5, 1, 0.75, 0.33333)] == ["0.5", "1.0", "0.75", "0.3333"]
    assert parse_ratio(format_ratio(0.7)) == 0.7
    assert paper_grid() == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5] == list(PAPER_RATIOS)
    assert paper_grid(include_one=False) == [0.9, 0.8, 0.7, 0.6, 0.5]
    with pytest.raises(ValueError, match="duplicate"):
        validate_ratios([0.5, 0.50])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        validate_ratios([0.5, 1.5])


def test_layout_names_and_parses_every_folder(tmp_path):
    assert ratio_name(0.5) == "ratio-0.5" and compressed_file(tmp_path, 1).name == "ratio-1.0.jsonl"
    assert [ratio_from_name(n) for n in ("ratio-0.6", "ratio-0.6.jsonl", "ratio-x", "ratio-1.5", "source")] \
        == [0.6, 0.6, None, None, None]
    for g in (0.5, 0.9):
        compressed_file(tmp_path / "c", g).parent.mkdir(exist_ok=True)
        compressed_file(tmp_path / "c", g).write_text("")
    assert compressed_ratios(tmp_path / "c") == [0.9, 0.5] and compressed_ratios(tmp_path / "none") == []
    assert eval_run_dir("o", "gsm8k", "original") == eval_run_dir("o", "gsm8k", "original", None)
    for d in (eval_run_dir(tmp_path / "e", "gsm8k", "original"), eval_run_dir(tmp_path / "e", "gsm8k", "prompt", 0.5)):
        d.mkdir(parents=True)
        (d / "metrics.json").write_text("{}")
    assert [(m, r) for m, r, _ in eval_runs(tmp_path / "e" / "gsm8k")] == [("original", None), ("prompt", 0.5)]
    (tmp_path / "t" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "t" / "checkpoint-2" / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="did the train stage finish"):
        find_adapter(tmp_path / "t")
    (tmp_path / "t" / "adapter_config.json").write_text("{}")
    assert find_adapter(tmp_path / "t") == tmp_path / "t"
