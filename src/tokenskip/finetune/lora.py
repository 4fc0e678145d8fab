"""LoRA fine-tuning of the target model on the γ-mixed SFT data (paper step 5), with peft + trl's SFTTrainer.

Settings, their defaults (the paper's, docs/method.md step 5), the precision and padding-free batches:
:mod:`tokenskip.finetune.train_config`. Memory and speed: the loss is computed by trl's fused LM head,
which projects only the positions that have a label (the completion tokens), in tiles, so the
(batch × length × vocabulary) logits are never built.

Inputs (``--data``): the folder of ``tokenskip build-sft`` (``train.jsonl``, ``validation.jsonl`` with rows
``{id, ratio, prompt, completion}``), read and tokenized by :mod:`tokenskip.finetune.sft_rows`.

Outputs (``--out``):

* ``adapter_config.json`` + ``adapter_model.safetensors`` (peft LoRA adapter) and the tokenizer — moved
  into place at the very end, ``adapter_config.json`` last, so its presence means training finished;
* ``prompt_format.json`` — copied from ``--data`` (instruction, system prompt, marker delimiter, γ set),
  read by ``tokenskip evaluate`` and ``tokenskip serve``;
* ``train_config.json`` — the resolved :class:`~tokenskip.finetune.train_config.TrainConfig` (written at the
  start);
* ``loss_log.jsonl`` — one row per logging step ``{step, loss, lr, epoch, grad_norm, tokens_seen}``;
* ``train_metrics.json`` — ``train_runtime_s``, ``train_loss``, ``global_step``, ``tokens_seen``
  (non-padding input tokens), ``tokens_per_s``, ``dtype`` / ``dtype_reason`` / ``weights_dtype`` /
  ``mixed_precision`` (what :func:`~tokenskip.finetune.train_config.train_precision` chose and why),
  ``padding_free``, ``peak_rss_mb`` (peak resident memory of the process, MiB), ``eval_loss`` (on at most
  ``--eval-max-samples`` validation rows) and trainable-parameter counts;
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

import logging
import os
import shutil
import time
from pathlib import Path

from tokenskip.contract.config import to_dict
from tokenskip.contract.io import file_hash, finite_or_none, read_json, write_json_atomic, write_jsonl_atomic
from tokenskip.contract.layout import (
    ADAPTER_CONFIG,
    LOSS_LOG,
    PROMPT_FORMAT,
    SFT_TRAIN,
    SFT_VALIDATION,
    TRAIN_CONFIG,
    TRAIN_METRICS,
)
from tokenskip.finetune.sft_rows import read_sft_rows, tokenize_rows
from tokenskip.finetune.train_config import (
    TrainConfig,
    lora_config,
    resolve_grad_accum,
    sft_args,
    train_precision,
    use_padding_free,
    world_size,
)

logger = logging.getLogger(__name__)


#: Settings that may change when resuming from a checkpoint (they do not change what the saved steps did).
RESUMABLE_CHANGES = ("max_steps", "epochs", "save_steps", "save_total_limit", "logging_steps", "threads", "resume",
                     "eval", "eval_max_samples", "out")


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
        from transformers import set_seed

        # the LoRA A matrices are drawn here, before the Trainer seeds anything: unseeded, the same --seed gave
        # another adapter (and loss curve) on each run, and a DDP run (rank 0's draw) another than one process
        set_seed(cfg.seed)
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
    old = out / TRAIN_CONFIG
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
    path that means nothing on another machine. Evaluation checks this name
    (:func:`tokenskip.engines.models.check_adapter`)."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if path.is_file():
        conf = read_json(path)
        conf["base_model_name_or_path"] = model
        write_json_atomic(path, conf)


def _publish_adapter(tmp: Path, out: Path) -> None:
    """Move the saved adapter files from ``tmp`` into ``out``, ``adapter_config.json`` last."""
    names = sorted(p.name for p in tmp.iterdir())
    for name in [n for n in names if n != ADAPTER_CONFIG] + [ADAPTER_CONFIG]:
        if (tmp / name).is_dir():
            shutil.rmtree(out / name, ignore_errors=True)
        os.replace(tmp / name, out / name)
    shutil.rmtree(tmp, ignore_errors=True)


def _warn_emulated_bf16(precision: dict) -> None:
    """Warn when ``precision`` (:func:`~tokenskip.finetune.train_config.train_precision`) computes in
    bfloat16 on a CPU without AVX512-BF16/AMX, where bf16 is emulated (~20× slower than float32)."""
    import torch

    from tokenskip.engines.hardware import auto_dtype

    if precision["dtype"] == "bfloat16" and not torch.cuda.is_available() \
            and auto_dtype("cpu").dtype != "bfloat16":
        logger.warning("bfloat16 training on a CPU without AVX512-BF16/AMX: bf16 is emulated and was ~20x slower "
                       "than float32 in our measurement; use --dtype auto (float32 here) without --bf16")


def _resolved_settings(cfg: TrainConfig, train_path: Path) -> dict:
    """What ``train_config.json`` records: ``cfg`` plus the gradient accumulation and process count in use
    and the hash of ``train_path`` (a resumed or skipped run must match it, see :data:`RESUMABLE_CHANGES`)."""
    return {**to_dict(cfg), "grad_accum": resolve_grad_accum(cfg, world_size()), "processes": world_size(),
            "train_data_hash": file_hash(train_path)}


def _finished_metrics(out: Path, resolved: dict) -> dict | None:
    """The ``train_metrics.json`` of ``out`` when it holds the finished adapter of a run with exactly the
    ``resolved`` settings (:func:`_resolved_settings`), else ``None``."""
    cfg_path = out / TRAIN_CONFIG
    if (out / ADAPTER_CONFIG).exists() and cfg_path.exists() and read_json(cfg_path) == resolved \
            and (out / TRAIN_METRICS).exists():
        return read_json(out / TRAIN_METRICS)
    return None


def _prepare_out(cfg: TrainConfig, out: Path, resolved: dict) -> None:
    """Get ``out`` ready for a new or resumed run (main process only): no finished adapter marker until the
    end, old checkpoints and loss log removed under ``--resume never``, ``train_config.json`` written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / ADAPTER_CONFIG).unlink(missing_ok=True)  # the folder holds no finished adapter until the end
    if cfg.resume == "never":
        for ck in out.glob("checkpoint-*"):
            logger.warning("--resume never: removing old %s", ck)
            shutil.rmtree(ck)
        (out / LOSS_LOG).unlink(missing_ok=True)
    write_json_atomic(out / TRAIN_CONFIG, resolved)


def _parameter_counts(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``model`` (taken before training: sharding changes them)."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


def _run_metrics(trainer, result, runtime: float, cfg: TrainConfig, precision: dict, resumed_from: str | None,
                 params: tuple[int, int], n_rows: int) -> dict:
    """The ``train_metrics.json`` of a ``trainer.train()`` call that returned ``result`` after ``runtime``
    seconds (keys: module docstring; tokens per second count only this session's tokens after a resume)."""
    import torch

    state = trainer.state
    prior_tokens = getattr(trainer, "_initial_num_input_tokens_seen", 0) or 0
    session_tokens = state.num_input_tokens_seen - prior_tokens
    n_train, n_all = params
    return {
        "global_step": state.global_step,
        "epoch": state.epoch,
        "train_loss": finite_or_none(result.training_loss),
        "train_runtime_s": round(runtime, 3),
        "tokens_seen": state.num_input_tokens_seen,
        "tokens_seen_this_session": session_tokens,
        "tokens_per_s": round(session_tokens / runtime, 2) if runtime > 0 else None,
        "resumed_from": resumed_from,
        "trainable_params": n_train,
        "total_params": n_all,
        "trainable_share": n_train / n_all,
        "train_rows": n_rows,
        "bf16": cfg.bf16,
        **precision,
        "padding_free": bool(getattr(trainer, "padding_free", False)),
        "device": str(trainer.args.device),
        "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
    }


def _save_outputs(trainer, cfg: TrainConfig, out: Path, metrics: dict, main_process: bool) -> None:
    """Save the adapter into ``out/.adapter.tmp`` (collective under DeepSpeed/FSDP), then on the main process
    add the prompt format, write the loss log and metrics, record the base model's name and move the
    adapter into ``out``, ``adapter_config.json`` last."""
    tmp = out / ".adapter.tmp"
    if main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # collective under DeepSpeed/FSDP; writes on the main process only
    trainer.accelerator.wait_for_everyone()
    if main_process:
        data = Path(cfg.data)
        if (data / PROMPT_FORMAT).is_file():  # how the prompts were built travels with the adapter
            shutil.copyfile(data / PROMPT_FORMAT, tmp / PROMPT_FORMAT)
        write_jsonl_atomic(out / LOSS_LOG, loss_rows(trainer.state.log_history))
        write_json_atomic(out / TRAIN_METRICS, metrics)
        if cfg.model:
            record_base_name(tmp, cfg.model)
        _publish_adapter(tmp, out)


def train(cfg: TrainConfig, model=None, tokenizer=None) -> dict:
    """Run LoRA SFT per ``cfg`` and write the outputs listed in the module docstring. Returns the metrics.

    ``model``/``tokenizer`` may be passed in (tests); otherwise :func:`load_for_training` loads them.

    Raises:
        FileNotFoundError: ``cfg.data`` has no ``train.jsonl``.
        ValueError: bad settings, or ``--out`` holds checkpoints of a run with other settings.
    """
    from tokenskip.engines.models import configure_threads

    cfg.validate()
    if cfg.resume not in ("auto", "never") and not Path(cfg.resume).is_dir():
        raise FileNotFoundError(f"train: --resume must be 'auto', 'never' or a checkpoint folder, got {cfg.resume!r}")
    configure_threads(cfg.threads)
    precision = train_precision(cfg)
    _warn_emulated_bf16(precision)
    data, out = Path(cfg.data), Path(cfg.out)
    train_path = data / SFT_TRAIN
    if not train_path.is_file():
        raise FileNotFoundError(f"{train_path} not found: --data must be a folder written by 'tokenskip build-sft'")
    resolved = _resolved_settings(cfg, train_path)
    main_process = int(os.environ.get("RANK", "0") or 0) == 0
    done = _finished_metrics(out, resolved)
    if done is not None:
        logger.info("%s already holds the adapter of this exact run; nothing to do", out)
        return done
    resume_from = _checkpoint_to_resume(cfg, out, resolved)
    if main_process:
        _prepare_out(cfg, out, resolved)

    if model is None or tokenizer is None:
        model, tokenizer = load_for_training(cfg)
    train_rows = read_sft_rows(train_path)
    val_path = data / SFT_VALIDATION
    eval_rows = read_sft_rows(val_path, cfg.eval_max_samples) if cfg.eval and val_path.is_file() else []
    trainer = build_trainer(model, tokenizer, train_rows, cfg, str(out), eval_rows or None,
                            callbacks=[_loss_log_callback(out / LOSS_LOG)])
    params = _parameter_counts(trainer.model)
    if resume_from:
        logger.info("resuming from %s", resume_from)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    metrics = _run_metrics(trainer, result, time.perf_counter() - t0, cfg, precision, resume_from, params,
                           len(train_rows))
    if eval_rows:
        ev = trainer.evaluate()
        metrics["eval_loss"] = finite_or_none(ev.get("eval_loss"))
        metrics["eval_rows"] = len(eval_rows)
    _save_outputs(trainer, cfg, out, metrics, main_process)
    if main_process:
        logger.info("adapter written to %s (step %d, %.1f tokens/s, loss %.4f)", out, trainer.state.global_step,
                    metrics["tokens_per_s"] or 0.0, result.training_loss)
    return metrics
