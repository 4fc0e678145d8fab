"""Stage *train*: LoRA fine-tuning of the target model on the SFT data (paper step 5).

The trainer lives in :mod:`tokenskip.finetune.lora`, its config and defaults in
:mod:`tokenskip.finetune.train_config`; this module is the command
and the pipeline runner.

Example::

    tokenskip train --model smollm2-135m-instruct --data W/sft --out W/adapter
"""

from __future__ import annotations

from tokenskip.finetune.lora import train
from tokenskip.finetune.train_config import TrainConfig


def summary_line(metrics: dict) -> str:
    """``trained 25 steps in 7m30s: loss 1.3812, eval loss 1.2950, 92 tokens/s, 4.9M of 139M parameters (0.35%)``."""
    from tokenskip.contract.console import duration

    parts = [f"loss {metrics['train_loss']:.4f}" if metrics.get("train_loss") is not None else None,
             f"eval loss {metrics['eval_loss']:.4f}" if metrics.get("eval_loss") is not None else None,
             f"{metrics['tokens_per_s']:.0f} tokens/s" if metrics.get("tokens_per_s") else None]
    if metrics.get("trainable_params") and metrics.get("total_params"):
        parts.append(f"{metrics['trainable_params'] / 1e6:.1f}M of {metrics['total_params'] / 1e6:.0f}M parameters "
                     f"({100 * metrics['trainable_share']:.2f}%)")
    took = f" in {duration(metrics['train_runtime_s'])}" if metrics.get("train_runtime_s") is not None else ""
    return f"trained {metrics.get('global_step')} steps{took}: " + ", ".join(p for p in parts if p)


def summary_lines(metrics: dict) -> list[str]:
    """The stage's summary for the pipeline (see :func:`summary_line`)."""
    return [summary_line(metrics)]


def show(cfg: TrainConfig, metrics: dict) -> None:
    """What ``tokenskip train`` prints: the summary line and the adapter folder."""
    from tokenskip.contract.console import say

    say(summary_line(metrics))
    say(f"adapter: {cfg.out}")


def run_train(cfg: TrainConfig) -> dict:
    """The stage runner: :func:`tokenskip.finetune.lora.train` on ``cfg`` (returns its metrics)."""
    return train(cfg)
