"""The settings of ``tokenskip train`` (:class:`TrainConfig`) and what they become for peft and trl: the
precision, padding-free batches, gradient accumulation, the ``LoraConfig`` and the ``SFTConfig``.

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

Padding-free batches (``--padding-free``, default on, see :func:`use_padding_free`): a batch's sequences
are concatenated into one row with ``position_ids`` restarting at 0 per sequence instead of being padded;
attention stays per sequence (transformers builds a block-diagonal mask from the position ids), so for the
decoder families in :data:`PADDING_FREE_MODEL_TYPES` the loss is the padded batch's, without the compute
spent on padding.

The trainer that uses them is :mod:`tokenskip.finetune.lora`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

from tokenskip.contract.config import ModelSettings, parse_threads
from tokenskip.engines.hardware import resolve_dtype

logger = logging.getLogger(__name__)

#: Decoder families whose attention honours packed ``position_ids`` (block-diagonal mask, RoPE positions
#: per sequence), so padding-free batches give the padded batch's loss. Others fall back to padding.
PADDING_FREE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma", "gemma2",
                            "phi3", "olmo2", "granite")


@dataclass
class TrainConfig(ModelSettings):
    """Settings of ``tokenskip train``. Defaults: the paper's (docs/method.md step 5) except where noted."""

    data: str = field(default="", metadata={"help": "folder written by 'tokenskip build-sft' (train.jsonl, "
                                                    "validation.jsonl)"})
    out: str = field(default="", metadata={"help": "output folder (LoRA adapter, tokenizer, logs, checkpoints)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (paper: 8)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (paper: 16)"})
    lora_dropout: float = field(default=0.0, metadata={
        "help": "LoRA dropout (not stated in the paper; 0.0 = LLaMA-Factory's default, what the reference "
                "trained with)"})
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
    resume: str = field(default="auto", metadata={"help": "'auto' = continue from the last checkpoint in --out "
                                                          "if any, 'never' = start over, or a checkpoint folder"})
    eval: bool = field(default=True, metadata={"help": "compute the validation loss at the end"})
    eval_max_samples: int | None = field(default=256, metadata={"help": "validation rows used for the eval loss"})

    device: str = field(default="auto", metadata={
        "help": "training device: auto = accelerate's choice (the GPUs when there are, else the CPU); cpu "
                "forces the CPU"})

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
    as :func:`~tokenskip.finetune.sft_rows.tokenize_rows` does). ``precision``: :func:`train_precision`
    (computed when ``None``).
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
        use_cpu=cfg.device == "cpu" or not torch.cuda.is_available(),
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
