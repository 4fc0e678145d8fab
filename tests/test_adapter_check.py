"""An adapter trained on another base is refused before loading, with one line naming both models
(issue 10); ``--force-adapter`` loads a same-shape one anyway."""

from __future__ import annotations

import json
import logging
import re

import pytest

from conftest import make_tiny_llama
from tokenskip.cli import main
from tokenskip.engines.models import cache_dir, check_adapter, load_model, model_names


def save_model(path, tokenizer, **kw):
    make_tiny_llama(tokenizer, **kw).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture()
def folders(tmp_path, smol_tokenizer):
    """Base A (hidden 32), B (hidden 64) and C (hidden 32, other weights), plus a LoRA adapter trained on A."""
    from peft import LoraConfig, get_peft_model

    a = save_model(tmp_path / "A", smol_tokenizer)
    b = save_model(tmp_path / "B", smol_tokenizer, hidden=64)
    c = save_model(tmp_path / "C", smol_tokenizer, seed=1)
    base, _ = load_model(a)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    peft.save_pretrained(tmp_path / "adapter")
    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == a
    return a, b, c, str(tmp_path / "adapter")


def test_right_base_loads(folders):
    a, _, _, adapter = folders
    check_adapter(adapter, a)
    model, _ = load_model(a, adapter=adapter)
    assert model.peft_config["default"].r == 4


def test_other_hidden_size_is_one_line_not_a_size_mismatch_traceback(folders):
    a, b, _, adapter = folders
    with pytest.raises(ValueError) as e:
        load_model(b, adapter=adapter)
    msg = str(e.value)
    assert "\n" not in msg and a in msg and b in msg
    # hidden 64 vs 32 (intermediate 128 vs 64): the first misfit found is named with both sizes
    assert re.search(r"model\.layers\.\d+\.[\w.]+ has (64|128) (inputs|outputs), the adapter's lora_[AB] has (32|64);",
                     msg)
    with pytest.raises(ValueError, match="the adapter's lora_"):  # shapes that do not fit cannot be forced
        check_adapter(adapter, b, force=True)


def test_same_shape_other_base_needs_force(folders, caplog):
    _, _, c, adapter = folders
    with pytest.raises(ValueError, match=r"trained on '.*A', not on --model '.*C' .*--force-adapter"):
        load_model(c, adapter=adapter)
    with caplog.at_level(logging.WARNING, logger="tokenskip.engines.models"):
        model, _ = load_model(c, adapter=adapter, force_adapter=True)
    assert model.peft_config["default"].r == 4
    assert any("--force-adapter" in r.getMessage() for r in caplog.records)


def test_evaluate_cli_refuses_other_base(folders, tmp_path, capsys):
    _, b, c, adapter = folders
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    for model in (b, c):
        rc = main(["evaluate", "--model", model, "--method", "tokenskip", "--adapter", adapter, "--ratios", "0.5",
                   "--data", str(data), "--max-new-tokens", "4", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and f"not on --model {model!r}" in err[0], err


def test_alias_and_its_cache_folder_are_one_model():
    names = model_names("smollm2-135m-instruct")
    assert str((cache_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1").resolve()) in names
    assert not names & model_names("Qwen/Qwen2.5-7B-Instruct")


def test_a_model_converted_during_the_check_is_not_built_on_the_meta_device(folders, monkeypatch):
    """The shape check builds a weightless copy on the meta device; converting the model (a GGUF alias
    with an empty cache loads real weights) must happen outside that context (it used to fail there)."""
    import torch

    import tokenskip.engines.models as models

    a, _, _, adapter = folders
    devices = []

    def converting(name):   # what materialize does on a cache miss: load real weights
        from transformers import AutoModelForCausalLM

        devices.append(torch.empty(1).device.type)
        AutoModelForCausalLM.from_pretrained(a)
        return a

    monkeypatch.setattr(models, "materialize", converting)
    check_adapter(adapter, a)
    assert devices == ["cpu"]
