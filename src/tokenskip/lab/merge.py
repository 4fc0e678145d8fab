"""Stage *merge*: fold a LoRA adapter into its base model and save a full model folder.

The folder (weights as safetensors, config, generation config, tokenizer with its chat template)
loads by path everywhere a model name is accepted (``--model DIR``), with no peft at inference. The
CPU lab uses it to turn its warm-up adapter into the target LLM of the TokenSkip pipeline; it also
serves users who deploy a TokenSkip adapter without LoRA support in their serving engine.

The merge is peft's ``merge_and_unload`` (W ← W + (α/r)·B·A for every adapted linear layer), done in
float32 by default. The folder is written to a temporary name and renamed at the end, so its
``config.json`` exists only once the merge is complete.

Example::

    tokenskip merge --model smollm2-135m-instruct --adapter runs/X/train --out models/smollm2-tokenskip
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenskip.contract.config import to_dict
from tokenskip.engines.merge import SAVE_DTYPES, merge_adapter


@dataclass
class MergeConfig:
    """Settings of ``tokenskip merge``."""

    model: str = field(default="smollm2-135m-instruct",
                       metadata={"help": "base model the adapter was trained on (alias, .gguf, folder or Hub id)"})
    adapter: str = field(default="", metadata={"help": "peft LoRA adapter folder (written by 'tokenskip train'); "
                                                       "a training folder holding the adapter also works"})
    out: str = field(default="", metadata={"help": "output folder of the merged model (replaced if it exists)"})
    save_dtype: str = field(default="float32", metadata={
        "help": "dtype of the merge and of the saved weights (a saved folder has one dtype: no 'auto'; "
                "a recipe's top-level dtype does not reach it)", "choices": list(SAVE_DTYPES)})

    def validate(self) -> None:
        if not self.adapter:
            raise ValueError("merge: --adapter is required")
        if not self.out:
            raise ValueError("merge: --out is required")
        if self.save_dtype not in SAVE_DTYPES:
            raise ValueError(f"merge: --save-dtype must be one of {', '.join(SAVE_DTYPES)}, got {self.save_dtype!r}")


def run_merge(cfg: MergeConfig) -> Path:
    """Merge ``cfg.adapter`` into ``cfg.model`` and save the full model folder at ``cfg.out``.

    Returns:
        The output folder.
    Raises:
        FileNotFoundError: missing adapter or base model.
    """
    cfg.validate()
    out = merge_adapter(cfg.model, cfg.adapter, cfg.out, save_dtype=cfg.save_dtype, record=to_dict(cfg))
    return out


def show(cfg: MergeConfig, summary) -> None:
    """What ``tokenskip merge`` prints."""
    print(f"merged model: {summary}")
