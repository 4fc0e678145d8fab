"""tokenskip warmup: SFT rows from the lab's worked solutions (no γ marker), then LoRA training."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("reasoning_gym")

from tokenskip.contract.io import read_jsonl  # noqa: E402
from tokenskip.lab.data import LabDataConfig, run_lab_data  # noqa: E402
from tokenskip.lab.warmup import WarmupConfig, run_warmup, sft_rows, train_config  # noqa: E402
from tokenskip.task.data import Problem, load_problems  # noqa: E402
from tokenskip.task.prompts import DEFAULT_MARKER_DELIMITER, answer_line, build_prompt  # noqa: E402


def test_sft_rows_are_gold_solutions_with_the_answer_line(smol_tokenizer):
    p = Problem("lab/train/0", "How many legs do 2 crabs and 3 ducks have?", "26",
                "A crab has 10 legs, so 2 crabs have 2 x 10 = 20 legs.\n3 ducks: 3 x 2 = 6 legs.\n20 + 6 = 26.")
    (row,) = sft_rows(smol_tokenizer, [p])
    assert row["ratio"] == 1.0 and row["id"] == "lab/train/0"
    assert row["prompt"] == build_prompt(smol_tokenizer, p.question)
    assert DEFAULT_MARKER_DELIMITER not in row["prompt"]
    assert row["completion"] == p.solution + "\n\nThe final answer is: $\\boxed{26}$"
    assert row["completion"].endswith(answer_line("26"))
    with pytest.raises(ValueError, match="lab/train/1"):
        sft_rows(smol_tokenizer, [Problem("lab/train/1", "q", "1", "  ")])


def test_train_config_reads_and_writes_subfolders():
    t = train_config(WarmupConfig(data="lab", out="W", lr=2e-3, limit=5, max_steps=3))
    assert (t.data, t.out, t.lr, t.max_steps) == ("W/sft", "W/adapter", 2e-3, 3)
    assert WarmupConfig(data="d", out="o").lr == 1e-3 and WarmupConfig(data="d", out="o").epochs == 1.0


def test_warmup_trains_an_adapter_on_the_lab_split(tmp_path, tiny_model_dir):
    lab = tmp_path / "lab"
    run_lab_data(LabDataConfig(out=str(lab), train=6, validation=2, test=2, seed=5))
    m = run_warmup(WarmupConfig(model=tiny_model_dir, data=str(lab), out=str(tmp_path / "w"), limit=4,
                                validation_limit=2, max_steps=2, batch_size=2, per_device_batch_size=2,
                                max_length=256, warmup_ratio=0.0, logging_steps=1, save_steps=10))
    rows = read_jsonl(tmp_path / "w" / "sft" / "train.jsonl")
    gold = load_problems("gsm8k", str(lab / "train.jsonl"), limit=4)
    assert [r["id"] for r in rows] == [p.id for p in gold]
    assert all(r["completion"] == p.solution + answer_line(p.answer) for r, p in zip(rows, gold))
    assert len(read_jsonl(tmp_path / "w" / "sft" / "validation.jsonl")) == 2
    assert m["global_step"] == 2 and math.isfinite(m["eval_loss"])
    assert (tmp_path / "w" / "adapter" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "w" / "sft" / "stats.json").read_text())["n"] == {"train": 4, "validation": 2}


def test_missing_lab_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="lab-data"):
        run_warmup(WarmupConfig(data=str(tmp_path / "nowhere"), out=str(tmp_path / "w")))
