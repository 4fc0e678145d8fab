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

import argparse
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tokenskip.config import add_dataclass_args, dataclass_from_args, to_dict
from tokenskip.io import write_json_atomic
from tokenskip.layout import find_adapter  # noqa: F401  (also imported from here by users and tests)
from tokenskip.models import DTYPES

logger = logging.getLogger(__name__)


@dataclass
class MergeConfig:
    """Settings of ``tokenskip merge``."""

    model: str = field(default="smollm2-135m-instruct",
                       metadata={"help": "base model the adapter was trained on (alias, .gguf, folder or Hub id)"})
    adapter: str = field(default="", metadata={"help": "peft LoRA adapter folder (written by 'tokenskip train'); "
                                                       "a training folder holding the adapter also works"})
    out: str = field(default="", metadata={"help": "output folder of the merged model (replaced if it exists)"})
    dtype: str = field(default="float32", metadata={"help": "dtype of the merge and of the saved weights",
                                                    "choices": [d for d in DTYPES if d != "auto"]})

    def validate(self) -> None:
        if not self.adapter:
            raise ValueError("merge: --adapter is required")
        if not self.out:
            raise ValueError("merge: --out is required")
        if self.dtype not in DTYPES or self.dtype == "auto":
            raise ValueError(f"merge: --dtype must be float32, bfloat16 or float16, got {self.dtype!r}")


def run_merge(cfg: MergeConfig) -> Path:
    """Merge ``cfg.adapter`` into ``cfg.model`` and save the full model folder at ``cfg.out``.

    Returns:
        The output folder.
    Raises:
        FileNotFoundError: missing adapter or base model.
    """
    cfg.validate()
    from tokenskip.models import load_model

    adapter = find_adapter(cfg.adapter)
    model, tok = load_model(cfg.model, dtype=cfg.dtype, adapter=str(adapter), merge_adapter=True)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp)           # weights, config.json, generation_config.json
        tok.padding_side = "left"
        tok.save_pretrained(tmp)             # tokenizer + chat template
        write_json_atomic(tmp / "merge_config.json", to_dict(cfg) | {"adapter_dir": str(adapter)})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("merged %s into %s -> %s", adapter, cfg.model, out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, MergeConfig)


def run_cli(args: argparse.Namespace) -> int:
    out = run_merge(dataclass_from_args(MergeConfig, args))
    print(f"merged model: {out}")
    return 0
