"""tokenskip merge: the merged folder gives the adapter's logits, loads by path, and fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tokenskip.contract.layout import find_adapter
from tokenskip.lab.merge import MergeConfig, run_merge


@pytest.fixture()
def adapter_dir(tmp_path, tiny_model_dir):
    """A LoRA adapter on the tiny model with non-zero B (peft's default init would make it a no-op)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(1)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 init_lora_weights=False))
    out = tmp_path / "train" / "adapter"
    peft_model.save_pretrained(out)
    return out


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_logits_equal_adapter_logits(tmp_path, tiny_model_dir, adapter_dir, smol_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tokenskip.engines.models import load_model

    out = run_merge(MergeConfig(model=tiny_model_dir, adapter=str(adapter_dir.parent), out=str(tmp_path / "merged")))
    assert out == tmp_path / "merged"
    assert (out / "config.json").exists() and (out / "generation_config.json").exists()
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "merge_config.json").read_text())["adapter_dir"] == str(adapter_dir)
    ids = torch.tensor([smol_tokenizer("Three dogs have 3 x 4 = 12 legs.")["input_ids"]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir).eval()
    merged, tok = load_model(str(out), dtype="float32")   # by path, as every stage loads a model (auto would
    # pick bfloat16 on an AMX CPU; the merge itself is float32, its default)
    want = logits(with_adapter, ids)
    assert torch.allclose(logits(merged, ids), want, atol=1e-4)
    assert (logits(base, ids) - want).abs().max() > 1e-2     # the adapter does change the model
    assert tok.chat_template == smol_tokenizer.chat_template
    assert tok.padding_side == "left"


def test_merge_replaces_an_existing_folder(tmp_path, tiny_model_dir, adapter_dir):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    run_merge(MergeConfig(model=tiny_model_dir, adapter=str(adapter_dir), out=str(out)))
    assert not (out / "stale.txt").exists() and (out / "config.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged.")]   # no temp folder left


def test_missing_adapter_is_one_line_error(tmp_path, tiny_model_dir, capsys):
    from tokenskip.cli import main

    (tmp_path / "train" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "train" / "checkpoint-2" / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        find_adapter(tmp_path / "train")      # checkpoints are not the finished adapter
    rc = main(["merge", "--model", tiny_model_dir, "--adapter", str(tmp_path / "train"),
               "--out", str(tmp_path / "m")])
    assert rc == 2 and "no adapter_config.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--adapter"):
        MergeConfig(out="x").validate()
    assert not Path(tmp_path / "m").exists()
