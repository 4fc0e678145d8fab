import math

import pytest

from conftest import GSM8K_TEST, need_data
from tokenskip.contract.io import read_json, read_jsonl
from tokenskip.generation.rollout import GenerationConfig
from tokenskip.stages.evaluate import EvaluateConfig, run_dir, run_evaluate
from tokenskip.stages.generate import run_generate


def cfg(model, out, **kw):
    base = dict(model=model, benchmark="gsm8k", data=str(need_data(GSM8K_TEST)), limit=3, max_new_tokens=8,
                batch_size=2, out=str(out))
    base.update(kw)
    return EvaluateConfig(**base)


def test_original_writes_rows_and_metrics_and_resumes(tmp_path, tiny_model_dir):
    (m,) = run_evaluate(cfg(tiny_model_dir, tmp_path, limit=2))
    d = run_dir(tmp_path, "gsm8k", "original")
    rows = read_jsonl(d / "predictions.jsonl")
    assert [r["id"] for r in rows] == ["gsm8k/test/0", "gsm8k/test/1"]
    assert all(0 < r["num_tokens"] <= 8 and r["gold"] for r in rows)
    assert m["n"] == 2 and m["act_ratio"] == 1.0
    assert m["avg_cot_tokens"] == pytest.approx(sum(r["cot_tokens"] for r in rows) / 2)
    # a bigger slice reuses the 2 rows on disk and adds one: no duplicates
    (m3,) = run_evaluate(cfg(tiny_model_dir, tmp_path, limit=3))
    rows3 = read_jsonl(d / "predictions.jsonl")
    assert [r["id"] for r in rows3] == ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2"]
    assert rows3[:2] == rows and m3["n"] == 3
    # changed settings: rows regenerated, not reused
    run_evaluate(cfg(tiny_model_dir, tmp_path, limit=3, max_new_tokens=4))
    assert all(r["num_tokens"] <= 4 for r in read_jsonl(d / "predictions.jsonl"))


def test_truncation_default_is_a_plain_cap(tmp_path, tiny_model_dir):
    ms = run_evaluate(cfg(tiny_model_dir, tmp_path, method="truncation", ratios=[0.5], max_new_tokens=12))
    assert ms[1]["truncation"] == "plain-cap"
    orig = {r["id"]: r for r in read_jsonl(run_dir(tmp_path, "gsm8k", "original") / "predictions.jsonl")}
    rows = read_jsonl(run_dir(tmp_path, "gsm8k", "truncation", 0.5) / "predictions.jsonl")
    assert any(orig[r["id"]]["num_tokens"] > r["cap"] for r in rows)
    for r in rows:
        assert r["num_tokens"] <= r["cap"] == max(1, math.ceil(0.5 * orig[r["id"]]["cot_tokens"]))
        assert r["output_token_ids"] == orig[r["id"]]["output_token_ids"][:r["cap"]]
        assert "The final answer is: $\\boxed{" not in r["output"]
    from tokenskip.stages.report.collect import ReportRow

    label = ms[1]["method_label"]  # the report's labels come from metrics.json
    row = ReportRow(benchmark="gsm8k", method="truncation", ratio=0.5, method_label=label, truncation="force-answer")
    assert row.label == "Truncation + forced answer (γ=0.5)"
    assert ReportRow(benchmark="gsm8k", method="truncation", ratio=0.5, method_label=label,
                     truncation="plain-cap").label == "Truncation (γ=0.5)"


def test_truncation_force_answer_variant(tmp_path, tiny_model_dir):
    ms = run_evaluate(cfg(tiny_model_dir, tmp_path, method="truncation", ratios=[0.5], max_new_tokens=12,
                          force_answer=True))
    assert ms[1]["truncation"] == "force-answer"
    orig = {r["id"]: r for r in read_jsonl(run_dir(tmp_path, "gsm8k", "original") / "predictions.jsonl")}
    rows = read_jsonl(run_dir(tmp_path, "gsm8k", "truncation", 0.5) / "predictions.jsonl")
    forced = [r for r in rows if orig[r["id"]]["num_tokens"] > r["cap"]]
    assert forced and all("The final answer is: $\\boxed{" in r["output"] for r in forced)
    assert all(r["output_token_ids"] == orig[r["id"]]["output_token_ids"][:r["cap"]] for r in rows)
    assert [m["method"] for m in ms] == ["original", "truncation"]
    orig = {r["id"]: r for r in read_jsonl(run_dir(tmp_path, "gsm8k", "original") / "predictions.jsonl")}
    rows = read_jsonl(run_dir(tmp_path, "gsm8k", "truncation", 0.5) / "predictions.jsonl")
    for r in rows:
        o = orig[r["id"]]
        assert r["cap"] == max(1, math.ceil(0.5 * o["cot_tokens"]))
        # greedy: the truncated CoT is exactly the original output's first `cap` tokens
        assert r["output_token_ids"] == o["output_token_ids"][:r["cap"]]
        if o["num_tokens"] > r["cap"]:
            assert "The final answer is: $\\boxed{" in r["output"]
    assert ms[1]["act_ratio"] is not None and ms[1]["act_ratio"] < 1.0


def test_tokenskip_gets_act_ratio_and_merged_equals_unmerged(tmp_path, tiny_model_dir, adapter_dir):
    run_evaluate(cfg(tiny_model_dir, tmp_path))
    merged = run_evaluate(cfg(tiny_model_dir, tmp_path / "a", method="tokenskip", adapter=adapter_dir,
                              ratios=[1.0, 0.5]))
    assert [m["ratio"] for m in merged] == [1.0, 0.5]
    assert merged[0]["act_ratio"] is None  # no original run in that --out
    import tokenskip.stages.evaluate as ev

    loads = []
    real_get = ev.get_backend

    def counting(name, **kw):
        loads.append(kw.get("adapter"))
        return real_get(name, **kw)

    ev.get_backend = counting
    try:
        ms = run_evaluate(cfg(tiny_model_dir, tmp_path, method="tokenskip", adapter=adapter_dir, ratios=[1.0, 0.5]))
    finally:
        ev.get_backend = real_get
    assert all(m["act_ratio"] is not None for m in ms)
    assert loads == [adapter_dir]   # one model load for both γ (a vLLM engine start costs ~30 s)
    run_evaluate(cfg(tiny_model_dir, tmp_path / "b", method="tokenskip", adapter=adapter_dir,
                                ratios=[0.5], merge_adapter=False))
    a = read_jsonl(run_dir(tmp_path / "a", "gsm8k", "tokenskip", 0.5) / "predictions.jsonl")
    b = read_jsonl(run_dir(tmp_path / "b", "gsm8k", "tokenskip", 0.5) / "predictions.jsonl")
    assert [r["output_token_ids"] for r in a] == [r["output_token_ids"] for r in b]
    base = read_jsonl(run_dir(tmp_path, "gsm8k", "original") / "predictions.jsonl")
    assert [r["output_token_ids"] for r in base] != [r["output_token_ids"] for r in a]  # the adapter matters
    assert "<|eot_id|>0.5<|eot_id|>" in a[0]["prompt"]


def test_scale_max_new_tokens_caps_tokenskip_at_gamma(tmp_path, tiny_model_dir, adapter_dir):
    from tokenskip.methods.tokenskip import scaled_max_new_tokens

    assert scaled_max_new_tokens(1024, 0.5) == 512 and scaled_max_new_tokens(1024, 0.7) == 716
    ms = run_evaluate(cfg(tiny_model_dir, tmp_path, method="tokenskip", adapter=adapter_dir, ratios=[1.0, 0.5],
                          max_new_tokens=10, scale_max_new_tokens=True))
    assert [m["max_new_tokens"] for m in ms] == [10, 5]
    rows = read_jsonl(run_dir(tmp_path, "gsm8k", "tokenskip", 0.5) / "predictions.jsonl")
    assert max(r["num_tokens"] for r in rows) == 5  # the tiny random model never stops early
    plain = run_evaluate(cfg(tiny_model_dir, tmp_path / "p", method="tokenskip", adapter=adapter_dir, ratios=[0.5],
                             max_new_tokens=10))
    assert plain[0]["max_new_tokens"] == 10


def test_prompt_method_uses_reduction_instruction(tmp_path, tiny_model_dir):
    (m,) = run_evaluate(cfg(tiny_model_dir, tmp_path, method="prompt", ratios=[0.6], limit=1))
    (row,) = read_jsonl(run_dir(tmp_path, "gsm8k", "prompt", 0.6) / "predictions.jsonl")
    assert "by 40%" in row["prompt"] and m["ratio"] == 0.6


def test_invalid_settings(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="needs --adapter"):
        run_evaluate(cfg(tiny_model_dir, tmp_path, method="tokenskip"))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        run_evaluate(cfg(tiny_model_dir, tmp_path, method="prompt", ratios=[1.5]))


def test_generate_stage(tmp_path, tiny_model_dir):
    m = run_generate(GenerationConfig(model=tiny_model_dir, benchmark="gsm8k", data=str(need_data(GSM8K_TEST)), limit=2,
                                      max_new_tokens=5, out=str(tmp_path)))
    assert m["n"] == 2 and (tmp_path / "predictions.jsonl").exists()
    metrics = read_json(tmp_path / "metrics.json")
    assert metrics["accuracy"] == 0.0
    # dtype auto, resolved for this machine and recorded with its reason (rules: test_hardware)
    from tokenskip.engines.hardware import auto_dtype

    assert (metrics["dtype"], metrics["dtype_requested"], metrics["dtype_reason"]) == (
        auto_dtype("cpu").dtype, "auto", auto_dtype("cpu").reason)
    m32 = run_generate(GenerationConfig(model=tiny_model_dir, benchmark="gsm8k", data=str(need_data(GSM8K_TEST)),
                                        limit=2, max_new_tokens=5, out=str(tmp_path / "fp32"), dtype="float32"))
    assert (m32["dtype"], m32["dtype_reason"]) == ("float32", "explicit setting")


def test_a_new_method_is_one_class(tmp_path, tiny_model_dir):
    # what the README's "adding an evaluation method" says: a Method subclass, registered; nothing else changes
    from tokenskip.methods import _REGISTRY, Method, register
    from tokenskip.task.prompts import build_prompt

    @register
    class Direct(Method):
        name, label, rank = "direct", "Direct answer", 45
        grid = (0.9, 0.5)

        def prompt(self, tokenizer, problem, ratio, cfg):
            return build_prompt(tokenizer, problem.question, None, cfg.system_prompt,
                                instruction=f"Answer within \\boxed{{}} using {ratio:.0%} of your words.")

    try:
        ms = run_evaluate(cfg(tiny_model_dir, tmp_path, method="direct", limit=1, max_new_tokens=3))
        assert [(m["method"], m["ratio"], m["method_label"], m["method_rank"]) for m in ms] == [
            ("direct", 0.9, "Direct answer", 45), ("direct", 0.5, "Direct answer", 45)]
        (row,) = read_jsonl(run_dir(tmp_path, "gsm8k", "direct", 0.5) / "predictions.jsonl")
        assert "using 50% of your words" in row["prompt"] and row["schema"] == "prediction"
    finally:
        _REGISTRY.pop("direct")


def test_generate_and_evaluate_decide_rows_by_one_rule(tmp_path):
    # one rule (rollout.row_settings) for both stages: --grader entered evaluate's fingerprint but not generate's
    from tokenskip.methods import get_method
    from tokenskip.stages.evaluate import _settings
    from tokenskip.stages.generate import GenerateConfig, _row_settings

    common = dict(model="m", benchmark="gsm8k", data="data/gsm8k/test.jsonl", grader="numeric", stop=["\n\nQ:"])
    g = _row_settings(GenerateConfig(**common))
    e = _settings(EvaluateConfig(**common, out=str(tmp_path)), get_method("original"), None, {})
    assert g["grader"] == e["grader"] == "numeric" and g["stop"] == e["stop"] == ["\n\nQ:"]
    assert (g["stage"], e["stage"]) == ("generate", "evaluate")
    assert {k: v for k, v in g.items() if k != "stage"} == {k: e[k] for k in g if k != "stage"}
    assert set(e) - set(g) == {"method", "ratio", "adapter"}
    assert "grader" not in _row_settings(GenerateConfig(model="m", benchmark="gsm8k"))  # default: fingerprint kept
