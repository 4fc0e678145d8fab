"""train on N processes (issue 25): ``accelerate launch --config_file examples/accelerate/cpu_ddp.yaml`` (2
processes, DDP over gloo on the CPU) keeps the effective batch by halving the gradient accumulation, so its loss
curve is the one-process curve with twice the accumulation steps (3 decimals, tiny model, fixed seed); and the
DeepSpeed ZeRO configs of the GPU recipes pass a dry run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from test_train import sft_rows
from tokenskip.contract.io import read_jsonl, write_jsonl_atomic


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(launcher: list[str], sft: Path, out: Path, model: str) -> list[dict]:
    args = launcher + ["-m", "tokenskip.cli", "train", "--model", model, "--data", str(sft), "--out", str(out),
                       "--batch-size", "4", "--per-device-batch-size", "1", "--max-steps", "3", "--lr", "3e-4",
                       "--lora-dropout", "0", "--warmup-ratio", "0", "--logging-steps", "1", "--save-steps", "100",
                       "--no-eval", "--dtype", "float32", "--device", "cpu", "--threads", "1", "--seed", "7"]
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return read_jsonl(out / "loss_log.jsonl")


def test_two_processes_give_the_one_process_loss_curve_with_twice_the_accumulation(tmp_path, smol_tokenizer,
                                                                                     tiny_model_dir):
    pytest.importorskip("accelerate")
    sft = tmp_path / "sft"
    # 4 rows = one optimizer step of batch 4: every step sees the whole set, in whatever order each process
    # draws it, so the curves can only differ through the accumulation and the averaging across processes
    write_jsonl_atomic(sft / "train.jsonl", sft_rows(smol_tokenizer, 4))
    one = _train([sys.executable], sft, tmp_path / "one", tiny_model_dir)   # accumulation 4 (batch 4 / 1 × 1)
    # the documented CPU DDP config: accelerate's torchrun launcher, 2 processes, gloo (accumulation 2)
    two = _train([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(REPO / "examples" / "accelerate" / "cpu_ddp.yaml"), "--main_process_port", str(_free_port())],
                 sft, tmp_path / "two", tiny_model_dir)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    # to 3 decimals (the bar): both start from the LoRA init that --seed draws, and the all-reduce only sums
    # the micro-batch gradients in another order than one process does (measured: ~1e-6 apart)
    assert all(abs(a["loss"] - b["loss"]) < 1e-3 for a, b in zip(one, two)), (one, two)
    assert one[-1]["loss"] < one[0]["loss"] - 0.01   # the curve moves: training on 4 rows lowers their loss
    import json

    cfg_one = json.loads((tmp_path / "one" / "train_config.json").read_text())
    cfg_two = json.loads((tmp_path / "two" / "train_config.json").read_text())
    assert (cfg_one["processes"], cfg_one["grad_accum"]) == (1, 4)
    assert (cfg_two["processes"], cfg_two["grad_accum"]) == (2, 2)


def test_deepspeed_zero_configs_pass_a_dry_run():
    """The ZeRO config of the GPU recipes (examples/accelerate/deepspeed_zero2.yaml, zero3) is read by accelerate's own
    config class, and the DeepSpeed plugin it describes is built (without DeepSpeed: its config only)."""
    from tokenskip.finetune.distributed import check_accelerate_config

    for path in sorted((REPO / "examples" / "accelerate").glob("*.yaml")):
        report = check_accelerate_config(path)
        assert report["num_processes"] >= 1 and report["distributed_type"] in ("DEEPSPEED", "FSDP", "MULTI_GPU")
        if report["distributed_type"] == "DEEPSPEED":
            ds = report["deepspeed"]
            assert ds["zero_optimization"]["stage"] in (2, 3)
            assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_accumulation_steps"] == "auto"
