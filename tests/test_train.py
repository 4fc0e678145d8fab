"""LoRA SFT: only adapter weights change, completion-only labels, resume continues the step count."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import LLAMA3_TEMPLATE, make_tiny_llama
from tokenskip.contract.io import read_jsonl, write_jsonl_atomic
from tokenskip.finetune.lora import build_trainer, train
from tokenskip.finetune.sft_rows import tokenize_example
from tokenskip.finetune.train_config import TrainConfig, resolve_grad_accum, train_precision, use_padding_free
from tokenskip.task.prompt_format import PromptFormat, load_prompt_format
from tokenskip.task.prompts import answer_line, build_prompt, end_of_turn


def sft_rows(tokenizer, n=8):
    rows = []
    for i in range(n):
        ratio = (1.0, 0.5)[i % 2]
        rows.append({"id": f"q{i}", "ratio": ratio,
                     "prompt": build_prompt(tokenizer, f"What is {i} + {i}?", ratio=ratio),
                     "completion": f"{i} plus {i} is {2 * i}." + answer_line(str(2 * i))})
    return rows


def small_cfg(tmp_path, **kw):
    base = dict(data=str(tmp_path / "sft"), out=str(tmp_path / "out"), batch_size=2, per_device_batch_size=1,
                warmup_ratio=0.0, logging_steps=1, save_steps=1, max_length=256, eval=False)
    base.update(kw)
    return TrainConfig(**base)


def test_end_of_turn_follows_the_chat_template(smol_tokenizer):
    assert end_of_turn(smol_tokenizer) == "<|im_end|>"
    assert smol_tokenizer.convert_tokens_to_ids("<|im_end|>") == smol_tokenizer.eos_token_id
    llama = copy.deepcopy(smol_tokenizer)
    llama.chat_template = LLAMA3_TEMPLATE
    assert end_of_turn(llama) == "<|eot_id|>"


def test_labels_mask_the_prompt(tmp_path, smol_tokenizer):
    rows = sft_rows(smol_tokenizer, 2)
    trainer = build_trainer(make_tiny_llama(smol_tokenizer), smol_tokenizer, rows, small_cfg(tmp_path),
                            str(tmp_path / "out"))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for b, row in enumerate(rows):
        p_ids = smol_tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        c_ids = smol_tokenizer(row["completion"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        n = len(p_ids) + len(c_ids)
        ids, labels = batch["input_ids"][b].tolist(), batch["labels"][b].tolist()
        assert ids[:n] == p_ids + c_ids  # no second chat template, no extra BOS/EOS
        assert labels[:len(p_ids)] == [-100] * len(p_ids)
        assert labels[len(p_ids):n] == c_ids
        assert all(x == -100 for x in labels[n:])  # padding
        assert smol_tokenizer.decode(ids[:n]) == row["prompt"] + row["completion"] + "<|im_end|>"
    assert tokenize_example(smol_tokenizer, "a", "b", "<|im_end|>")["completion_mask"][0] == 0


def test_padding_free_batch_gives_the_padded_loss_and_gradients(tmp_path, smol_tokenizer):
    """One row per sequence with restarting position ids = the padded batch, without the padding."""
    rows = sft_rows(smol_tokenizer, 4)
    rows[0]["completion"] = "a much longer completion with many more words in it " * 3 + rows[0]["completion"]
    results = {}
    for padding_free in (False, True):
        cfg = small_cfg(tmp_path, per_device_batch_size=4, batch_size=4, lora_dropout=0.0,
                        padding_free=padding_free)
        trainer = build_trainer(make_tiny_llama(smol_tokenizer), smol_tokenizer, rows, cfg, str(tmp_path / "out"))
        assert trainer.padding_free is padding_free
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        lengths = [len(trainer.train_dataset[i]["input_ids"]) for i in range(4)]
        if padding_free:
            assert tuple(batch["input_ids"].shape) == (1, sum(lengths)) and "attention_mask" not in batch
            starts = [0] + [sum(lengths[:k]) for k in range(1, 4)]
            assert [batch["position_ids"][0, s].item() for s in starts] == [0, 0, 0, 0]
        else:
            assert tuple(batch["input_ids"].shape) == (4, max(lengths))
        torch.manual_seed(0)
        for n, p in trainer.model.named_parameters():  # lora_B starts at 0: make the adapter matter
            if "lora_B" in n:
                p.data.normal_(0, 0.5)
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results[padding_free] = (loss.item(), grads)
    (loss_pad, g_pad), (loss_free, g_free) = results[False], results[True]
    assert loss_pad > 1.0 and loss_free == pytest.approx(loss_pad, rel=1e-5)
    assert g_pad.keys() == g_free.keys() and len(g_pad) > 0
    for n in g_pad:
        assert torch.allclose(g_pad[n], g_free[n], rtol=1e-4, atol=1e-6), n


def test_padding_free_only_where_it_is_exact(smol_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    llama = make_tiny_llama(smol_tokenizer)
    assert use_padding_free(TrainConfig(data="d", out="o", per_device_batch_size=8), llama)
    assert not use_padding_free(TrainConfig(data="d", out="o", per_device_batch_size=8, padding_free=False), llama)
    assert not use_padding_free(TrainConfig(data="d", out="o", per_device_batch_size=1), llama)  # nothing to remove
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=64))  # learned absolute positions
    assert not use_padding_free(TrainConfig(data="d", out="o", per_device_batch_size=8), gpt2)


def test_train_precision_rules():
    from tokenskip.engines.hardware import cpu_flags

    amx, avx2 = cpu_flags("flags : avx2 avx512_bf16 amx_bf16"), cpu_flags("flags : avx2")
    auto = TrainConfig(data="d", out="o")
    assert train_precision(auto, "cpu", avx2) | {"dtype_reason": ""} == {
        "dtype": "float32", "dtype_requested": "auto", "dtype_reason": "", "weights_dtype": "float32",
        "mixed_precision": None}
    p = train_precision(auto, "cpu", amx)  # autocast with float32 master weights
    assert (p["dtype"], p["weights_dtype"], p["mixed_precision"]) == ("bfloat16", "float32", "bf16")
    assert "amx_bf16" in p["dtype_reason"]
    p = train_precision(auto, "cuda", cuda_bf16=True)  # the paper's bf16 setting
    assert (p["dtype"], p["weights_dtype"], p["mixed_precision"]) == ("bfloat16", "bfloat16", "bf16")
    p = train_precision(auto, "cuda", cuda_bf16=False)
    assert (p["dtype"], p["weights_dtype"], p["mixed_precision"]) == ("float16", "float32", "fp16")
    # an explicit dtype wins over the machine; --bf16 forces autocast
    p = train_precision(TrainConfig(data="d", out="o", dtype="float32"), "cpu", amx)
    assert (p["dtype"], p["weights_dtype"], p["mixed_precision"], p["dtype_reason"]) == (
        "float32", "float32", None, "explicit setting")
    p = train_precision(TrainConfig(data="d", out="o", dtype="float32", bf16=True), "cpu", avx2)
    assert (p["dtype"], p["weights_dtype"], p["mixed_precision"]) == ("bfloat16", "float32", "bf16")
    p = train_precision(TrainConfig(data="d", out="o", dtype="bfloat16"), "cuda", cuda_bf16=True)
    assert (p["weights_dtype"], p["mixed_precision"]) == ("bfloat16", "bf16")
    with pytest.raises(ValueError, match="--dtype"):
        TrainConfig(data="d", out="o", dtype="half").validate()


def test_step_changes_only_lora_weights(tmp_path, smol_tokenizer):
    model = make_tiny_llama(smol_tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # two steps: on the first, lora_A gets no gradient (lora_B starts at zero)
    cfg = small_cfg(tmp_path, max_steps=2, lr=1e-2, save_steps=100)
    trainer = build_trainer(model, smol_tokenizer, sft_rows(smol_tokenizer, 4), cfg, str(tmp_path / "out"))
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert lora_before and all(p.requires_grad == ("lora_" in n) for n, p in trainer.model.named_parameters())
    result = trainer.train()
    assert math.isfinite(result.training_loss) and result.training_loss > 0
    after = {n: p.detach() for n, p in trainer.model.named_parameters()}
    changed = [n for n in lora_before if not torch.equal(lora_before[n], after[n])]
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)
    base = trainer.model.get_base_model().state_dict()
    for k, v in before.items():
        key = k if k in base else k.replace(".weight", ".base_layer.weight")
        assert torch.equal(base[key], v), k
    # all linear layers of the blocks got an adapter (lm_head excluded by peft's all-linear)
    assert not any("lm_head" in n for n in lora_before)
    assert {n.split(".")[-4] for n in lora_before} >= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"}


def test_the_seed_decides_the_lora_init(tmp_path, smol_tokenizer):
    """--seed draws the LoRA A matrices, whatever the process drew before (a DDP run's rank 0 draws the one
    process's init, tests/test_train_ddp.py)."""
    calls: list[int] = []

    def lora_init(seed: int) -> dict:
        model = make_tiny_llama(smol_tokenizer)
        torch.manual_seed(seed * 1000 + len(calls))   # another RNG state left by whatever ran before each call
        calls.append(seed)
        trainer = build_trainer(model, smol_tokenizer, sft_rows(smol_tokenizer, 2), small_cfg(tmp_path, seed=seed),
                                str(tmp_path / "out"))
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_A" in n}

    first, again, other = lora_init(7), lora_init(7), lora_init(8)
    assert first and all(torch.equal(first[n], again[n]) for n in first)
    assert not any(torch.equal(first[n], other[n]) for n in first)


def test_resume_continues_step_count(tmp_path, smol_tokenizer, tiny_model_dir, capsys):
    write_jsonl_atomic(tmp_path / "sft" / "train.jsonl", sft_rows(smol_tokenizer, 12))
    write_jsonl_atomic(tmp_path / "sft" / "validation.jsonl", sft_rows(smol_tokenizer, 2))
    PromptFormat(system_prompt="Be brief.", marker_delimiter="[[G]]", ratios=(1.0, 0.5)).save(tmp_path / "sft")
    out = tmp_path / "out"
    m1 = train(small_cfg(tmp_path, model=tiny_model_dir, max_steps=2, eval=True))
    # the console: one compact line per logging step and the eval loss, no raw trainer dicts, no bars
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("step ")]
    assert [ln.split(" · ")[0] for ln in lines] == ["step 1/2 (50%)", "step 2/2 (100%)"]
    assert all(" · loss " in ln and " · lr " in ln for ln in lines)
    assert "eval loss " in err and "{'loss'" not in err and "'train_runtime'" not in err and "%|" not in err
    assert m1["global_step"] == 2 and m1["resumed_from"] is None and math.isfinite(m1["eval_loss"])
    assert load_prompt_format(out) == PromptFormat(system_prompt="Be brief.", marker_delimiter="[[G]]",
                                                   ratios=(1.0, 0.5))  # copied next to the adapter
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model_dir
    assert [r["step"] for r in read_jsonl(out / "loss_log.jsonl")] == [1, 2]
    m2 = train(small_cfg(tmp_path, model=tiny_model_dir, max_steps=4))
    assert m2["global_step"] == 4 and Path(m2["resumed_from"]).name == "checkpoint-2"
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    log = read_jsonl(out / "loss_log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in log)
    assert m2["tokens_seen"] > m1["tokens_seen"] and m2["tokens_seen_this_session"] < m2["tokens_seen"]
    assert json.loads((out / "train_config.json").read_text())["max_steps"] == 4
    from tokenskip.engines.hardware import auto_dtype  # the precision chosen for this CPU (rules: test_hardware)

    assert m2["dtype"] == auto_dtype("cpu").dtype and m2["weights_dtype"] == "float32" and m2["dtype_reason"]
    assert m2["peak_rss_mb"] > 50
    # a different LoRA rank must not silently reuse these checkpoints
    with pytest.raises(ValueError, match="lora_r"):
        train(small_cfg(tmp_path, model=tiny_model_dir, max_steps=6, lora_r=4))


def test_grad_accum_follows_the_world_size(caplog):
    """Issue 13, item 2: the recipe's effective batch (8) holds on 1, 2, 4 and 8 GPUs."""
    cfg = TrainConfig(data="d", out="o", batch_size=8, per_device_batch_size=1)
    assert [resolve_grad_accum(cfg, n) for n in (1, 2, 4, 8)] == [8, 4, 2, 1]
    cfg2 = TrainConfig(data="d", out="o", batch_size=8, per_device_batch_size=2)
    assert [resolve_grad_accum(cfg2, n) for n in (1, 2, 4)] == [4, 2, 1]
    assert caplog.text == ""
    # not reachable exactly: nearest accumulation, with a warning naming the effective batch
    assert resolve_grad_accum(TrainConfig(data="d", out="o", per_device_batch_size=3)) == 3
    assert "= 9, not --batch-size 8" in caplog.text
    caplog.clear()
    assert resolve_grad_accum(cfg2, 16) == 1
    assert "= 32, not --batch-size 8" in caplog.text
    caplog.clear()
    # a pinned accumulation is kept, but a batch that grows with the GPUs is reported
    pinned = TrainConfig(data="d", out="o", batch_size=8, per_device_batch_size=2, grad_accum=4)
    assert resolve_grad_accum(pinned, 1) == 4 and caplog.text == ""
    assert resolve_grad_accum(pinned, 2) == 4
    assert "2 per device × 4 accumulation × 2 process(es) = 16, not --batch-size 8 (--grad-accum pinned)" in caplog.text


def test_config_checks():
    assert resolve_grad_accum(TrainConfig(data="d", out="o")) == 8
    assert resolve_grad_accum(TrainConfig(data="d", out="o", per_device_batch_size=2), processes=2) == 2
    with pytest.raises(ValueError, match="--data"):
        TrainConfig(out="o").validate()
    # validate() checks values only; a checkpoint folder that does not exist is found when training starts
    TrainConfig(data="d", out="o", resume="nowhere").validate()
    with pytest.raises(FileNotFoundError, match="--resume must be 'auto', 'never' or a checkpoint folder"):
        train(TrainConfig(data="d", out="o", resume="nowhere"))
