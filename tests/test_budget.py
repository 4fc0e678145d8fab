"""Budget mode: the CoT-length regressor, γ from a budget, evaluate --method budget and its report table."""

from __future__ import annotations

import json
import math

import pytest

from conftest import GSM8K_TEST, need_data
from tokenskip.cli import main
from tokenskip.contract.io import DataError, read_json, read_jsonl, write_jsonl_atomic
from tokenskip.generation.length_model import (
    LengthModel,
    fit_length_model,
    load_length_model,
    question_features,
    read_cot_rows,
)
from tokenskip.stages.evaluate import EvaluateConfig, run_dir, run_evaluate
from tokenskip.stages.report import write_report


def gsm_questions(n):
    return [r["question"] for r in read_jsonl(need_data(GSM8K_TEST))[:n]]


def test_features_of_a_question():
    f = question_features("Tom has 3 apples and buys 12 more. How many apples does he have in total?")
    assert f[1] == pytest.approx(math.log1p(2))       # two numbers
    assert f[2] == 2.0 and f[3] == pytest.approx(math.log10(13))  # two sentences, largest 12
    assert f[4] == 2.0 and f[5] == 1.0                                # "more", "total"; bias


def test_regressor_beats_the_mean_on_held_out_questions():
    qs = gsm_questions(80)
    rows = [(q, 2 * len(q.split()) + 10) for q in qs]   # length driven by the question's words
    m = fit_length_model(rows, heldout_share=0.25, seed=0)
    assert m.metrics["n_heldout"] == 20 and m.metrics["n_train"] == 60
    assert m.metrics["mae_tokens"] < 0.5 * m.metrics["mae_tokens_mean_baseline"]
    long_q = max(qs, key=lambda q: len(q.split()))
    short_q = min(qs, key=lambda q: len(q.split()))
    assert m.predict(long_q) > m.predict(short_q)


def test_ratio_from_budget_is_clipped_to_the_trained_range():
    m = LengthModel([0.0, 0.0, 0.0, 0.0, 0.0, math.log1p(200)])  # always predicts 200 tokens
    assert m.predict("anything") == pytest.approx(200)
    assert m.ratio_for("q", 140) == 0.7
    assert m.ratio_for("q", 20) == 0.5 and m.ratio_for("q", 20, min_ratio=0.3) == 0.3
    assert m.ratio_for("q", 500) == 1.0
    with pytest.raises(ValueError, match=">= 1"):
        m.ratio_for("q", 0)


def test_bad_inputs_name_file_line_field(tmp_path):
    p = tmp_path / "p.jsonl"
    write_jsonl_atomic(p, [{"question": "a", "cot_tokens": 3}, {"question": "b", "cot_tokens": "x"}])
    with pytest.raises(DataError, match=r"p\.jsonl.*2.*cot_tokens"):
        read_cot_rows(p)
    (tmp_path / "m.json").write_text(json.dumps({"kind": "ridge-log-length", "features": ["x"], "weights": [1]}))
    with pytest.raises(DataError, match="features"):
        load_length_model(tmp_path / "m.json")
    with pytest.raises(FileNotFoundError, match="length model not found"):
        load_length_model(tmp_path / "none.json")
    with pytest.raises(ValueError, match="at least 5"):
        fit_length_model([("q", 1)] * 4)


def test_fit_length_cli(tmp_path, capsys):
    write_jsonl_atomic(tmp_path / "p.jsonl", [{"question": q, "cot_tokens": 3 * len(q.split())}
                                              for q in gsm_questions(30)])
    assert main(["fit-length", "--cots", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "lm.json")]) == 0
    m = LengthModel.load(tmp_path / "lm.json")
    assert json.loads(capsys.readouterr().out)["n_heldout"] == 6 and m.metrics["n_train"] == 24
    assert main(["fit-length", "--cots", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x.json")]) == 2


def test_evaluate_budget_method_and_report(tmp_path, tiny_model_dir):
    from test_serve import FMT

    base = dict(model=tiny_model_dir, benchmark="gsm8k", data=str(need_data(GSM8K_TEST)), limit=4,
                max_new_tokens=16, batch_size=2, out=str(tmp_path / "evaluate"), threads=1)
    run_evaluate(EvaluateConfig(**{**base, "limit": 8}))   # original CoTs: the length model is fitted on them
    orig = run_dir(tmp_path / "evaluate", "gsm8k", "original") / "predictions.jsonl"
    adapter = _adapter(tmp_path, tiny_model_dir)
    FMT.save(adapter)
    with pytest.raises(ValueError, match="--budgets"):
        run_evaluate(EvaluateConfig(**base, method="budget", adapter=adapter, length_model=str(orig)))
    ms = run_evaluate(EvaluateConfig(**base, method="budget", adapter=adapter, budgets=[3, 200],
                                     length_model=str(orig)))
    assert [m["budget"] for m in ms] == [3, 200]
    lm = load_length_model(orig)
    for m in ms:
        rows = read_jsonl(run_dir(tmp_path / "evaluate", "gsm8k", "budget", m["budget"]) / "predictions.jsonl")
        assert len(rows) == 4
        for r in rows:
            assert r["ratio"] == lm.ratio_for(r["question"], m["budget"], FMT.min_ratio, 1.0)
            assert ("[[G]]" in r["prompt"]) == (r["ratio"] < 1.0) and r["budget"] == m["budget"]
            assert r["within_budget"] == (r["cot_tokens"] <= m["budget"])
        assert m["within_budget"] == sum(r["within_budget"] for r in rows) / 4
        assert m["avg_cot_tokens"] == pytest.approx(sum(r["cot_tokens"] for r in rows) / 4)
    tight = read_jsonl(run_dir(tmp_path / "evaluate", "gsm8k", "budget", 3) / "predictions.jsonl")
    assert all(r["ratio"] == 0.5 for r in tight)  # 3 tokens is far below any predicted length
    assert all("The final answer is: $\\boxed{" in r["output"] for r in tight if r["finish_reason"] == "length")
    report = write_report(tmp_path)
    text = report.read_text() if report.suffix == ".md" else (report / "report.md").read_text()
    assert "### Token budget" in text
    line3 = next(row for row in text.splitlines() if row.startswith("| 3 |"))
    assert f"{100 * ms[0]['within_budget']:.1f}" in line3 and f"{ms[0]['avg_cot_tokens']:.1f}" in line3
    assert read_json(tmp_path / "report.json")["budgets"]["gsm8k"][1]["budget"] == 200


def _adapter(tmp_path, model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    m = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                       LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    d = tmp_path / "adapter"
    m.save_pretrained(d)
    return str(d)
