"""LoRA fine-tuning of the target model on the γ-mixed SFT data (paper step 5), with peft + trl's SFTTrainer.

Defaults are the paper's (docs/method.md step 5): LoRA rank 8, alpha 16 on all linear layers, lr 5e-5,
3 epochs, cosine schedule, warmup 10 %, effective batch 8, cutoff 2048 tokens, loss on the response
(completion) only. LoRA dropout 0.0 (the paper does not state it; LLaMA-Factory's default, which the
reference trained with).

Precision (``--dtype``, default ``auto``, see :func:`train_precision`): on a CUDA GPU with bfloat16,
bfloat16 weights + bf16 mixed precision (the paper's setting); on a GPU without it, float32 weights +
fp16 mixed precision; on a CPU with AMX/AVX512-BF16, float32 weights + bf16 autocast (~1.8× float32
there); on other CPUs (AVX2-only) plain float32 — bf16 is emulated there and ~20× slower. An explicit
``--dtype`` sets the weights (and, for bfloat16/float16 on a GPU, the matching mixed precision);
``--bf16`` forces bf16 autocast.

Memory and speed: the loss is computed by trl's fused LM head, which projects only the positions
that have a label (the completion tokens), in tiles, so the (batch × length × vocabulary) logits are
never built. ``--padding-free`` (default on) concatenates a batch's sequences into one row with
``position_ids`` restarting at 0 per sequence instead of padding them: attention stays per sequence
(transformers builds a block-diagonal mask from the position ids), so for the decoder families in
:data:`PADDING_FREE_MODEL_TYPES` the loss is the padded batch's, without the compute spent on padding.

Inputs (``--data``): the folder of ``tokenskip build-sft`` (``train.jsonl``, ``validation.jsonl`` with rows
``{id, ratio, prompt, completion}``). The prompt is already chat-templated text, so it is tokenized here
as is (no special tokens added, no second chat template) and the completion gets the chat template's
end-of-turn token (``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3), the token that stops decoding.
trl then builds the labels from the completion mask (prompt tokens -> -100).

Outputs (``--out``):

* ``adapter_config.json`` + ``adapter_model.safetensors`` (peft LoRA adapter) and the tokenizer — moved
  into place at the very end, ``adapter_config.json`` last, so its presence means training finished;
* ``prompt_format.json`` — copied from ``--data`` (instruction, system prompt, marker delimiter, γ set),
  read by ``tokenskip evaluate`` and ``tokenskip serve``;
* ``train_config.json`` — the resolved :class:`TrainConfig` (written at the start);
* ``loss_log.jsonl`` — one row per logging step ``{step, loss, lr, epoch, grad_norm, tokens_seen}``;
* ``train_metrics.json`` — ``train_runtime_s``, ``train_loss``, ``global_step``, ``tokens_seen``
  (non-padding input tokens), ``tokens_per_s``, ``dtype`` / ``dtype_reason`` / ``weights_dtype`` /
  ``mixed_precision`` (what :func:`train_precision` chose and why), ``padding_free``,
  ``peak_rss_mb`` (peak resident memory of the process, MiB), ``eval_loss`` (on at most ``--eval-max-samples``
  validation rows) and trainable-parameter counts;
* ``checkpoint-<step>/`` — Trainer checkpoints (``--save-steps``); after a kill, rerunning the same
  command resumes from the last one (``--resume auto``).

Single process::

    tokenskip train --model smollm2-135m-instruct --data W/sft --out W/adapter

Several GPUs (data parallel; the effective batch stays ``--batch-size`` = per-device × accumulation ×
processes, accumulation derived unless ``--grad-accum`` is given)::

    accelerate launch --num_processes 4 -m tokenskip.cli train --model Qwen/Qwen2.5-7B-Instruct \\
        --data W/sft --out W/adapter --per-device-batch-size 2
    accelerate launch --config_file examples/accelerate/deepspeed_zero2.yaml -m tokenskip.cli train ...
    accelerate launch --config_file examples/accelerate/fsdp.yaml -m tokenskip.cli train ...
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tokenskip.contract.config import add_dataclass_args, dataclass_from_args, to_dict
from tokenskip.engines.hardware import parse_threads, resolve_dtype
from tokenskip.contract.io import (DataError, file_hash, finite_or_none, iter_jsonl, read_json, write_json_atomic,
                          write_jsonl_atomic)
from tokenskip.task.prompts import end_of_turn
from tokenskip.task.prompt_format import FILENAME as PROMPT_FORMAT

logger = logging.getLogger(__name__)

ADAPTER_MARKER = "adapter_config.json"

#: Settings that may change when resuming from a checkpoint (they do not change what the saved steps did).
RESUMABLE_CHANGES = ("max_steps", "epochs", "save_steps", "save_total_limit", "logging_steps", "threads", "resume",
                     "eval", "eval_max_samples", "out")

#: Decoder families whose attention honours packed ``position_ids`` (block-diagonal mask, RoPE positions
#: per sequence), so padding-free batches give the padded batch's loss. Others fall back to padding.
PADDING_FREE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma", "gemma2",
                            "phi3", "olmo2", "granite")


@dataclass
class TrainConfig:
    """Settings of ``tokenskip train``. Defaults: the paper's (docs/method.md step 5) except where noted."""

    model: str = field(default="smollm2-135m-instruct",
                       metadata={"help": "base model: alias, .gguf, local folder or Hub id"})
    data: str = field(default="", metadata={"help": "folder written by 'tokenskip build-sft' (train.jsonl, "
                                                    "validation.jsonl)"})
    out: str = field(default="", metadata={"help": "output folder (LoRA adapter, tokenizer, logs, checkpoints)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (paper: 8)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (paper: 16)"})
    lora_dropout: float = field(default=0.0, metadata={
        "help": "LoRA dropout (not stated in the paper; 0.0 = LLaMA-Factory's default, what the reference trained with)"})
    target_modules: str = field(default="all-linear",
                                metadata={"help": "peft target modules: 'all-linear' (paper) or a comma list "
                                                  "like q_proj,v_proj"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate (paper: 5e-5)"})
    epochs: float = field(default=3.0, metadata={"help": "training epochs (paper: 3)"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many optimizer steps "
                                                                   "(overrides --epochs)"})
    batch_size: int = field(default=8, metadata={"help": "effective batch = per-device batch × grad accumulation "
                                                         "× processes (paper: 8)"})
    per_device_batch_size: int = field(default=1, metadata={"help": "sequences per device per forward pass"})
    grad_accum: int | None = field(default=None, metadata={
        "help": "gradient accumulation steps; default: --batch-size / (per-device batch × processes)"})
    scheduler: str = field(default="cosine", metadata={"help": "learning-rate schedule (paper: cosine)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of the steps spent in linear warmup "
                                                               "(paper: 0.1)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_length: int = field(default=2048, metadata={"help": "cutoff in tokens (prompt + completion; paper: 2048)"})
    dtype: str = field(default="auto", metadata={
        "help": "precision: auto = bf16 mixed precision on AMX/AVX512-BF16 CPUs and bf16 GPUs (bfloat16 weights "
                "on GPU), fp16 mixed precision on other GPUs, float32 otherwise; or the base weights' dtype",
        "choices": ["auto", "float32", "bfloat16", "float16"]})
    bf16: bool = field(default=False, metadata={"help": "force bf16 mixed precision (paper: on). On CPU = autocast: "
                                                        "faster only with AMX/AVX512-BF16, much slower on AVX2-only"})
    padding_free: bool = field(default=True, metadata={
        "help": "concatenate each batch's sequences with restarting position ids instead of padding (same loss, "
                "no compute on padding; for the model types in PADDING_FREE_MODEL_TYPES, others pad)"})
    group_by_length: bool = field(default=False, metadata={"help": "batch sequences of similar length together "
                                                       "(less padding, faster on CPU; changes the data order)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations to save memory"})
    save_steps: int = field(default=100, metadata={"help": "save a resumable checkpoint every N optimizer steps"})
    save_total_limit: int = field(default=2, metadata={"help": "keep at most N checkpoints"})
    logging_steps: int = field(default=10, metadata={"help": "log the loss every N optimizer steps"})
    seed: int = field(default=42, metadata={"help": "seed of LoRA init, data order and dropout"})
    threads: int | str | None = field(default=None, metadata={
        "help": "torch CPU threads: N or auto (the CPUs this process may use); default $TOKENSKIP_THREADS, "
                "else torch's choice"})
    resume: str = field(default="auto", metadata={"help": "'auto' = continue from the last checkpoint in --out "
                                                          "if any, 'never' = start over, or a checkpoint folder"})
    eval: bool = field(default=True, metadata={"help": "compute the validation loss at the end"})
    eval_max_samples: int | None = field(default=256, metadata={"help": "validation rows used for the eval loss"})

    def __post_init__(self) -> None:
        self.threads = parse_threads(self.threads)  # "2" from a command line -> 2, once (validate() changes nothing)

    def validate(self) -> None:
        if not self.data:
            raise ValueError("train: --data (the folder written by 'tokenskip build-sft') is required")
        if not self.out:
            raise ValueError("train: --out is required")
        for name in ("lora_r", "lora_alpha", "batch_size", "per_device_batch_size", "max_length", "save_steps",
                     "logging_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"train: --{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.grad_accum is not None and self.grad_accum < 1:
            raise ValueError(f"train: --grad-accum must be >= 1, got {self.grad_accum}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train: --max-steps must be >= 1, got {self.max_steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"train: --lr must be > 0, got {self.lr}")
        if self.epochs <= 0:
            raise ValueError(f"train: --epochs must be > 0, got {self.epochs}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"train: --warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"train: --lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.resume:
            raise ValueError("train: --resume must be 'auto', 'never' or a checkpoint folder")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"train: --dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        parse_threads(self.threads)  # checked only: __post_init__ already read it


# ---------------------------------------------------------------- pure core

def tokenize_example(tokenizer, prompt: str, completion: str, eot: str, max_length: int | None = None) -> dict:
    """Token ids of one SFT row, with the completion mask.

    The prompt (already chat-templated) and the completion (+ ``eot``) are tokenized separately without
    adding special tokens — exactly what the model sees at inference (prompt ids, then generated ids).
    ``max_length`` keeps the first ``max_length`` tokens (the cutoff; trl's own truncation does the same).

    Returns:
        ``{"input_ids": [int] * (P + C), "completion_mask": [0] * P + [1] * C}`` (cut to ``max_length``).
    """
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion + eot, add_special_tokens=False)["input_ids"]
    ids, mask = p + c, [0] * len(p) + [1] * len(c)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return {"input_ids": ids, "completion_mask": mask}


def read_sft_rows(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows ``{id, ratio, prompt, completion}`` (:class:`~tokenskip.contract.records.SFTExample`) of a build-sft file;
    ``DataError`` names a bad line/field."""
    from tokenskip.contract.records import SFTExample

    rows = []
    for lineno, row in iter_jsonl(path):
        rec = SFTExample.from_json(row, path, lineno)
        for key in ("prompt", "completion"):
            if not getattr(rec, key):
                raise DataError(path, lineno, key, "expected a non-empty string")
        rows.append(rec.to_json())
        if limit is not None and len(rows) >= limit:
            break
    return rows


def tokenize_rows(tokenizer, rows: list[dict], max_length: int | None = None):
    """A ``datasets.Dataset`` with ``input_ids`` and ``completion_mask`` (see :func:`tokenize_example`)."""
    from datasets import Dataset

    eot = end_of_turn(tokenizer)
    return Dataset.from_list([tokenize_example(tokenizer, r["prompt"], r["completion"], eot, max_length)
                              for r in rows])


def train_precision(cfg: TrainConfig, device: str | None = None, flags: set[str] | None = None,
                    cuda_bf16: bool | None = None) -> dict:
    """What ``cfg.dtype`` / ``cfg.bf16`` mean on ``device`` (default: ``cuda`` when available, else ``cpu``).

    Returns:
        ``{"dtype", "dtype_reason", "weights_dtype", "mixed_precision"}`` with ``dtype`` the compute dtype
        (float32/bfloat16/float16), ``weights_dtype`` the base weights' dtype and ``mixed_precision``
        ``"bf16"``, ``"fp16"`` or ``None`` (the Trainer's ``bf16``/``fp16`` flags). Rules: module docstring.
    """
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    choice = resolve_dtype(cfg.dtype, device, flags, cuda_bf16)
    gpu = device.startswith("cuda")
    if cfg.dtype == "auto":
        mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(choice.dtype)
        # CPU autocast and fp16 loss scaling keep float32 master weights; a bf16 GPU holds bfloat16 weights
        weights = "bfloat16" if gpu and choice.dtype == "bfloat16" else "float32"
    else:
        weights = choice.dtype
        mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(choice.dtype) if gpu else None
    if cfg.bf16:
        mixed = "bf16"
    compute = {"bf16": "bfloat16", "fp16": "float16"}.get(mixed, weights)
    reason = choice.reason + (" (--bf16 forces bf16 autocast)" if cfg.bf16 and choice.dtype != "bfloat16" else "")
    return {"dtype": compute, "dtype_requested": cfg.dtype, "dtype_reason": reason, "weights_dtype": weights,
            "mixed_precision": mixed}


def use_padding_free(cfg: TrainConfig, model) -> bool:
    """Whether ``cfg.padding_free`` applies to ``model``: its ``model_type`` is in :data:`PADDING_FREE_MODEL_TYPES`
    and a forward pass holds more than one sequence (with one there is no padding to remove)."""
    if not cfg.padding_free or cfg.per_device_batch_size < 2:
        return False
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in PADDING_FREE_MODEL_TYPES:
        logger.info("padding-free batches are not known to be exact for model type %r: padding instead", model_type)
        return False
    return True


def world_size() -> int:
    """Number of training processes (``WORLD_SIZE`` set by ``accelerate launch``/torchrun; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def resolve_grad_accum(cfg: TrainConfig, processes: int = 1) -> int:
    """Gradient accumulation giving the effective batch ``cfg.batch_size`` on ``processes`` processes.

    Default: ``batch_size / (per-device batch × processes)``, so a recipe's batch (paper: 8) stays the
    same under ``accelerate launch`` on N GPUs. When that is not a whole number, or ``--grad-accum``
    is pinned, the effective batch per-device × accumulation × processes may differ from
    ``batch_size``: a warning names both (the nearest whole accumulation, at least 1, is used).
    """
    per_step = cfg.per_device_batch_size * processes
    accum = cfg.grad_accum if cfg.grad_accum is not None else max(1, round(cfg.batch_size / per_step))
    if accum * per_step != cfg.batch_size:
        logger.warning("train: effective batch = %d per device × %d accumulation × %d process(es) = %d, "
                       "not --batch-size %d%s", cfg.per_device_batch_size, accum, processes, accum * per_step,
                       cfg.batch_size, " (--grad-accum pinned)" if cfg.grad_accum is not None else "")
    return accum


def lora_config(cfg: TrainConfig):
    """The peft ``LoraConfig`` of ``cfg`` (causal LM; all linear layers except the output head by default)."""
    from peft import LoraConfig

    targets = cfg.target_modules if cfg.target_modules == "all-linear" else [
        t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


def sft_args(cfg: TrainConfig, output_dir: str, processes: int = 1, padding_free: bool = False,
             precision: dict | None = None):
    """trl ``SFTConfig`` for ``cfg`` (trl's own defaults bf16=True, gradient checkpointing=True are overridden).

    ``padding_free``: see :func:`use_padding_free` (inputs must then be cut to ``max_length`` beforehand,
    as :func:`tokenize_rows` does). ``precision``: :func:`train_precision` (computed when ``None``).
    """
    import torch
    from trl import SFTConfig

    precision = precision or train_precision(cfg)

    return SFTConfig(
        output_dir=output_dir,
        per_device_train_batch_size=cfg.per_device_batch_size,
        per_device_eval_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=resolve_grad_accum(cfg, processes),
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a share of the total steps
        weight_decay=cfg.weight_decay,
        bf16=precision["mixed_precision"] == "bf16",
        fp16=precision["mixed_precision"] == "fp16",
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=cfg.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        max_length=None if padding_free else cfg.max_length,  # padding-free: rows are cut when tokenized
        completion_only_loss=True,
        packing=False,
        padding_free=padding_free,
        pad_to_multiple_of=None,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="no",
        seed=cfg.seed,
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient each step
        disable_tqdm=True,
    )


def build_trainer(model, tokenizer, train_rows: list[dict], cfg: TrainConfig, output_dir: str,
                  eval_rows: list[dict] | None = None, callbacks=None):
    """A trl ``SFTTrainer`` training a fresh LoRA adapter on ``model`` (an in-memory ``PreTrainedModel``).

    ``train_rows``/``eval_rows`` are build-sft rows (``prompt``, ``completion``). Only the LoRA weights
    are trainable; the loss covers the completion tokens (prompt labels are -100).
    """
    from peft import get_peft_model
    from trl import SFTTrainer

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    padding_free = use_padding_free(cfg, model)
    if getattr(model, "peft_config", None) is None:
        model = get_peft_model(model, lora_config(cfg))
    from transformers.trainer_callback import PrinterCallback

    from tokenskip.contract.console import trainer_callback

    args = sft_args(cfg, output_dir, world_size(), padding_free=padding_free)
    train_ds = tokenize_rows(tokenizer, train_rows, cfg.max_length)
    eval_ds = tokenize_rows(tokenizer, eval_rows, cfg.max_length) if eval_rows else None
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # trl's label/truncation passes take well under a second: no bars
    try:
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tokenizer, callbacks=[*(callbacks or []), trainer_callback()])
    finally:
        if bars:
            datasets.enable_progress_bars()
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; trainer_callback prints one line per log
    return trainer


def load_for_training(cfg: TrainConfig):
    """``(model, tokenizer)`` of ``cfg.model`` for training (weights in :func:`train_precision`'s
    ``weights_dtype``, not yet LoRA-wrapped)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tokenskip.engines.models import load_tokenizer, load_weights, materialize

    tok = load_tokenizer(cfg.model, padding_side="right")
    weights = getattr(torch, train_precision(cfg)["weights_dtype"])
    model = load_weights(AutoModelForCausalLM, materialize(cfg.model), dtype=weights)
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
    return model, tok


# ---------------------------------------------------------------- runner

def _loss_log_callback(path: Path):
    from transformers import TrainerCallback

    class LossLog(TrainerCallback):
        """Rewrites loss_log.jsonl from the trainer's log history (restored from the checkpoint on resume,
        so a resumed run has each step once)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                write_jsonl_atomic(path, loss_rows(state.log_history))

    return LossLog()


def loss_rows(log_history: list[dict]) -> list[dict]:
    """Training-loss rows ``{step, loss, lr, epoch, grad_norm, tokens_seen}`` from a Trainer log history."""
    rows = {}
    for h in log_history:
        if "loss" in h and "step" in h:
            # a diverged step logs loss/grad_norm NaN or inf: written as null (JSON has no NaN)
            rows[h["step"]] = {"step": h["step"], "loss": finite_or_none(h["loss"]), "lr": h.get("learning_rate"),
                               "epoch": h.get("epoch"), "grad_norm": finite_or_none(h.get("grad_norm")),
                               "tokens_seen": h.get("num_input_tokens_seen")}
    return [rows[s] for s in sorted(rows)]


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far in MiB (``ru_maxrss``), ``None`` where unsupported."""
    try:
        import resource
        import sys
    except ImportError:  # pragma: no cover - Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _identity(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in RESUMABLE_CHANGES}


def _checkpoint_to_resume(cfg: TrainConfig, out: Path, resolved: dict) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if cfg.resume == "never":
        return None
    if cfg.resume != "auto":
        return cfg.resume
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last is None:
        return None
    old = out / "train_config.json"
    if old.exists():
        prev = read_json(old)
        diff = sorted(k for k in set(_identity(prev)) | set(_identity(resolved))
                      if prev.get(k) != resolved.get(k))
        if diff:
            raise ValueError(f"train: {out} holds checkpoints of a run with different settings ({', '.join(diff)}); "
                             "use another --out, --resume never to start over, or the old settings")
    return last


def record_base_name(adapter_dir: Path, model: str) -> None:
    """Store the base model as the user named it (``smollm2-135m-instruct``, a Hub id) in the adapter's
    ``adapter_config.json``: peft writes the folder it loaded from, for a GGUF alias an absolute cache
    path that means nothing on another machine. Evaluation checks this name (:func:`tokenskip.engines.models.check_adapter`)."""
    path = Path(adapter_dir) / ADAPTER_MARKER
    if path.is_file():
        conf = read_json(path)
        conf["base_model_name_or_path"] = model
        write_json_atomic(path, conf)


def _publish_adapter(tmp: Path, out: Path) -> None:
    """Move the saved adapter files from ``tmp`` into ``out``, ``adapter_config.json`` last."""
    names = sorted(p.name for p in tmp.iterdir())
    for name in [n for n in names if n != ADAPTER_MARKER] + [ADAPTER_MARKER]:
        if (tmp / name).is_dir():
            shutil.rmtree(out / name, ignore_errors=True)
        os.replace(tmp / name, out / name)
    shutil.rmtree(tmp, ignore_errors=True)


def train(cfg: TrainConfig, model=None, tokenizer=None) -> dict:
    """Run LoRA SFT per ``cfg`` and write the outputs listed in the module docstring. Returns the metrics.

    ``model``/``tokenizer`` may be passed in (tests); otherwise :func:`load_for_training` loads them.

    Raises:
        FileNotFoundError: ``cfg.data`` has no ``train.jsonl``.
        ValueError: bad settings, or ``--out`` holds checkpoints of a run with other settings.
    """
    import torch

    from tokenskip.engines.hardware import auto_dtype
    from tokenskip.engines.models import configure_threads

    cfg.validate()
    if cfg.resume not in ("auto", "never") and not Path(cfg.resume).is_dir():
        raise FileNotFoundError(f"train: --resume must be 'auto', 'never' or a checkpoint folder, got {cfg.resume!r}")
    configure_threads(cfg.threads)
    precision = train_precision(cfg)
    if precision["dtype"] == "bfloat16" and not torch.cuda.is_available() \
            and auto_dtype("cpu").dtype != "bfloat16":
        logger.warning("bfloat16 training on a CPU without AVX512-BF16/AMX: bf16 is emulated and was ~20x slower "
                       "than float32 in our measurement; use --dtype auto (float32 here) without --bf16")
    data, out = Path(cfg.data), Path(cfg.out)
    train_path = data / "train.jsonl"
    if not train_path.is_file():
        raise FileNotFoundError(f"{train_path} not found: --data must be a folder written by 'tokenskip build-sft'")
    resolved = {**to_dict(cfg), "grad_accum": resolve_grad_accum(cfg, world_size()), "processes": world_size(),
                "train_data_hash": file_hash(train_path)}
    main_process = int(os.environ.get("RANK", "0") or 0) == 0
    cfg_path = out / "train_config.json"
    if (out / ADAPTER_MARKER).exists() and cfg_path.exists() and read_json(cfg_path) == resolved \
            and (out / "train_metrics.json").exists():
        logger.info("%s already holds the adapter of this exact run; nothing to do", out)
        return read_json(out / "train_metrics.json")
    resume_from = _checkpoint_to_resume(cfg, out, resolved)
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / ADAPTER_MARKER).unlink(missing_ok=True)  # the folder holds no finished adapter until the end
        if cfg.resume == "never":
            for ck in out.glob("checkpoint-*"):
                logger.warning("--resume never: removing old %s", ck)
                shutil.rmtree(ck)
            (out / "loss_log.jsonl").unlink(missing_ok=True)
        write_json_atomic(cfg_path, resolved)

    if model is None or tokenizer is None:
        model, tokenizer = load_for_training(cfg)
    train_rows = read_sft_rows(train_path)
    val_path = data / "validation.jsonl"
    eval_rows = read_sft_rows(val_path, cfg.eval_max_samples) if cfg.eval and val_path.is_file() else []
    trainer = build_trainer(model, tokenizer, train_rows, cfg, str(out), eval_rows or None,
                            callbacks=[_loss_log_callback(out / "loss_log.jsonl")])
    n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in trainer.model.parameters())
    if resume_from:
        logger.info("resuming from %s", resume_from)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    runtime = time.perf_counter() - t0
    state = trainer.state
    prior_tokens = getattr(trainer, "_initial_num_input_tokens_seen", 0) or 0
    session_tokens = state.num_input_tokens_seen - prior_tokens
    metrics = {
        "global_step": state.global_step,
        "epoch": state.epoch,
        "train_loss": finite_or_none(result.training_loss),
        "train_runtime_s": round(runtime, 3),
        "tokens_seen": state.num_input_tokens_seen,
        "tokens_seen_this_session": session_tokens,
        "tokens_per_s": round(session_tokens / runtime, 2) if runtime > 0 else None,
        "resumed_from": resume_from,
        "trainable_params": n_train,
        "total_params": n_all,
        "trainable_share": n_train / n_all,
        "train_rows": len(train_rows),
        "bf16": cfg.bf16,
        **precision,
        "padding_free": bool(getattr(trainer, "padding_free", False)),
        "device": str(trainer.args.device),
        "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
    }
    if eval_rows:
        ev = trainer.evaluate()
        metrics["eval_loss"] = finite_or_none(ev.get("eval_loss"))
        metrics["eval_rows"] = len(eval_rows)
    tmp = out / ".adapter.tmp"
    if main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # collective under DeepSpeed/FSDP; writes on the main process only
    trainer.accelerator.wait_for_everyone()
    if main_process:
        if (data / PROMPT_FORMAT).is_file():  # how the prompts were built travels with the adapter
            shutil.copyfile(data / PROMPT_FORMAT, tmp / PROMPT_FORMAT)
        write_jsonl_atomic(out / "loss_log.jsonl", loss_rows(state.log_history))
        write_json_atomic(out / "train_metrics.json", metrics)
        if cfg.model:
            record_base_name(tmp, cfg.model)
        _publish_adapter(tmp, out)
        logger.info("adapter written to %s (step %d, %.1f tokens/s, loss %.4f)", out, state.global_step,
                    metrics["tokens_per_s"] or 0.0, result.training_loss)
    return metrics
