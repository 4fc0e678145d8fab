"""tokenskip gamma-check: teacher-forced losses of compressed vs full CoTs under the γ and plain prompts."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tokenskip.contract.io import write_jsonl_atomic
from tokenskip.finetune.sft_rows import tokenize_example
from tokenskip.lab.gamma_check import (
    GammaCheckConfig,
    completion_nll,
    divergence_rank,
    position_profile,
    run_gamma_check,
    summarize_pairs,
)
from tokenskip.task.prompts import build_prompt, end_of_turn


def test_summary_of_hand_made_pairs():
    rows = [{"gamma_prompt": {"compressed": 0.3, "full": 0.1}, "plain_prompt": {"compressed": 0.4, "full": 0.1}},
            {"gamma_prompt": {"compressed": 0.2, "full": 0.5}, "plain_prompt": {"compressed": 0.9, "full": 0.2}}]
    s = summarize_pairs(rows)
    assert s["n"] == 2 and s["compressed_preferred"] == 0.5
    assert s["gamma_prompt"] == pytest.approx({"compressed": 0.25, "full": 0.3})
    # (0.1 - 0.3) - (0.1 - 0.4) = 0.1 ; (0.5 - 0.2) - (0.2 - 0.9) = 1.0
    assert s["marker_shift"] == pytest.approx(0.55)


def test_position_profile_bins_the_marker_effect_by_relative_position():
    with_marker = [0.5] * 10
    without = [2.5, 2.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1.5]   # the marker acts on the first fifth
    assert position_profile(with_marker, without) == pytest.approx([2.0, 0.0, 0.0, 0.0, 0.5])
    assert position_profile([1.0, 1.0], [2.0, 4.0], bins=4) == pytest.approx([1.0, float("nan"), 3.0, float("nan")],
                                                                            nan_ok=True)


def test_divergence_rank_at_the_first_differing_token():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0],     # position 0: both sequences take token 3
                           [5.0, 1.0, 4.0, 0.0],     # position 1: compressed takes 2 (rank 2), full takes 0 (rank 1)
                           [0.0, 0.0, 0.0, 9.0]])
    d = divergence_rank([3, 2, 3], [3, 0, 1], logits)
    assert d == {"position": 1, "rank": 2, "full_preferred": True}
    assert divergence_rank([3, 0], [3, 2], logits[[0, 0]]) == {"position": 1, "rank": 4, "full_preferred": True}
    assert divergence_rank([1, 2], [1, 2, 3], logits) is None     # a prefix: no divergence


def test_completion_nll_is_the_completion_only_loss(smol_tokenizer, tiny_model):
    prompt = build_prompt(smol_tokenizer, "How many legs do 2 ducks have?", 0.5)
    completion = "2 x 2 = 4\n\nThe final answer is: $\\boxed{4}$"
    eot = end_of_turn(smol_tokenizer)
    ex = tokenize_example(smol_tokenizer, prompt, completion, eot)
    labels = [t if m else -100 for t, m in zip(ex["input_ids"], ex["completion_mask"])]
    with torch.no_grad():
        want = tiny_model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([labels])).loss
    assert completion_nll(tiny_model, smol_tokenizer, prompt, completion, eot) == pytest.approx(float(want), rel=1e-5)


def test_run_on_a_compress_folder(tmp_path, tiny_model_dir):
    d = tmp_path / "compress"
    src = [{"id": f"q{i}", "question": f"How many legs do {i} dogs have?", "answer": str(4 * i),
            "cot": f"A dog has 4 legs, so {i} dogs have {i} x 4 = {4 * i} legs."} for i in range(1, 5)]
    write_jsonl_atomic(d / "source.jsonl", src)
    write_jsonl_atomic(d / "ratio-0.5.jsonl", [{"id": r["id"], "cot": f"{r['id'][1]} x 4 = {r['answer']}"}
                                               for r in src[:3]])
    res = run_gamma_check(GammaCheckConfig(model=tiny_model_dir, compressed=str(d), limit=2,
                                           out=str(tmp_path / "g.json")))
    assert set(res) == {"settings", "0.5"}
    m = res["0.5"]
    assert m["n"] == 2 and 0.0 <= m["compressed_preferred"] <= 1.0
    values = [m["gamma_prompt"]["compressed"], m["gamma_prompt"]["full"], m["plain_prompt"]["full"]]
    assert all(math.isfinite(v) and v > 0 for v in values)
    assert m["gamma_prompt"]["full"] != m["plain_prompt"]["full"]     # the marker is in the prompt
    # the diagnostics: the compressed targets are shorter than the full CoTs, the ranks are ranks
    assert 0.2 < m["target_ratio"]["mean"] < 0.9 and m["target_ratio"]["sd"] >= 0.0
    assert len(m["position_shift"]) == 5 and all(math.isfinite(x) for x in m["position_shift"])
    fd = m["first_divergence"]
    assert fd["n"] == 2 and fd["mean_rank"] >= 1.0 and 0.0 <= fd["compressed_top1"] <= 1.0
    assert json.loads((tmp_path / "g.json").read_text())["0.5"]["n"] == 2
    with pytest.raises(ValueError, match="below 1.0"):
        GammaCheckConfig(compressed=str(d), ratios=[1.0]).validate()
    with pytest.raises(FileNotFoundError, match="ratio-0.7"):
        run_gamma_check(GammaCheckConfig(model=tiny_model_dir, compressed=str(d), ratios=[0.7]))


def test_cli_prints_one_line_per_ratio(tmp_path, tiny_model_dir, capsys):
    from tokenskip.cli import main

    d = tmp_path / "compress"
    write_jsonl_atomic(d / "source.jsonl", [{"id": "a", "question": "1 + 2 + 3?", "answer": "6",
                                             "cot": "1 + 2 = 3, then 3 + 3 = 6."}])
    write_jsonl_atomic(d / "ratio-0.6.jsonl", [{"id": "a", "cot": "1 + 2 = 3, 3 + 3 = 6"}])
    write_jsonl_atomic(d / "ratio-0.5.jsonl", [{"id": "a", "cot": "3, 6"}])
    assert main(["gamma-check", "--model", tiny_model_dir, "--compressed", str(d)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    table, diagnostics = lines[1:3], lines[3:]
    assert [ln.split()[0] for ln in table] == ["0.6", "0.5"] and all(ln.split()[1] == "1" for ln in table)
    assert [ln.split(":")[0] for ln in diagnostics] == ["γ 0.6", "γ 0.5"]
    assert all("marker shift by fifth" in ln and "target ratio" in ln for ln in diagnostics)
