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


# ------------------------------------------------------------------------------------------- the think lab

def _think_problem() -> Problem:
    return Problem("lab/train/0", "How many legs do 2 crabs and 3 ducks have?", "26",
                   "A crab has 10 legs, so 2 crabs have 2 x 10 = 20 legs.\n3 ducks: 3 x 2 = 6 legs.\n20 + 6 = 26.")


def test_think_rows_wrap_the_solution_in_the_block_the_prompt_opened(smol_tokenizer):
    import copy

    from tokenskip.finetune.sft_rows import tokenize_example
    from tokenskip.task.prompts import end_of_turn
    from tokenskip.task.think import think_chat_template

    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = think_chat_template(tok.chat_template)
    p = _think_problem()
    (row,) = sft_rows(tok, [p], think=True)
    assert row["prompt"] == build_prompt(smol_tokenizer, p.question) + "<think>\n"
    assert row["completion"] == p.solution + "\n</think>\n\nThe final answer is: $\\boxed{26}$"
    ex = tokenize_example(tok, row["prompt"], row["completion"], end_of_turn(tok))
    n_prompt = len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
    assert ex["completion_mask"] == [0] * n_prompt + [1] * (len(ex["input_ids"]) - n_prompt)
    learned = tok.decode([i for i, m in zip(ex["input_ids"], ex["completion_mask"]) if m])
    assert learned == row["completion"] + end_of_turn(tok) and "<think>" not in learned


def test_think_warmup_and_merge_carry_the_template(tmp_path, tiny_model_dir):
    """cot_format think: the rows hold the tags, the adapter's tokenizer holds the think template and the merged
    target's tokenizer too, so later stages (auto or think) prompt with an open block."""
    from tokenskip.engines.models import load_tokenizer
    from tokenskip.lab.merge import MergeConfig, run_merge
    from tokenskip.task.think import resolve_cot_format, template_think_mode

    lab = tmp_path / "lab"
    run_lab_data(LabDataConfig(out=str(lab), train=4, validation=2, test=2, seed=5))
    run_warmup(WarmupConfig(model=tiny_model_dir, data=str(lab), out=str(tmp_path / "w"), limit=2,
                            validation_limit=1, max_steps=1, batch_size=2, per_device_batch_size=2, max_length=256,
                            warmup_ratio=0.0, logging_steps=1, save_steps=10, cot_format="think"))
    rows = read_jsonl(tmp_path / "w" / "sft" / "train.jsonl")
    gold = load_problems("gsm8k", str(lab / "train.jsonl"), limit=2)
    assert [r["completion"] for r in rows] == [f"{p.solution}\n</think>\n\n{answer_line(p.answer).strip()}"
                                               for p in gold]
    assert all(r["prompt"].endswith("<|im_start|>assistant\n<think>\n") for r in rows)
    assert template_think_mode(load_tokenizer(tiny_model_dir)) is None   # the base model's template is untouched
    assert template_think_mode(load_tokenizer(str(tmp_path / "w" / "adapter"))) == "open"
    run_merge(MergeConfig(model=tiny_model_dir, adapter=str(tmp_path / "w" / "adapter"), out=str(tmp_path / "m")))
    merged = load_tokenizer(str(tmp_path / "m"))
    assert template_think_mode(merged) == "open" and resolve_cot_format("auto", merged) == "think"
    assert merged.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False,
                                      add_generation_prompt=True).endswith("q<|im_end|>\n<|im_start|>assistant\n<think>\n")
    with pytest.raises(ValueError, match="cot-format"):
        WarmupConfig(data="d", out="o", cot_format="thinking").validate()


def test_cot_format_enters_the_fingerprint_only_when_set():
    """auto (the default) leaves a recipe's warmup fingerprint as it was before the setting existed, so lab runs
    made then stay done; think re-plans the warm-up and everything after it."""
    from tokenskip.pipeline.recipe import settings_of

    assert "cot_format" not in settings_of(WarmupConfig(data="d", out="o"))
    assert settings_of(WarmupConfig(data="d", out="o", cot_format="think"))["cot_format"] == "think"
