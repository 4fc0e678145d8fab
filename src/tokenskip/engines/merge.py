"""Fold a LoRA adapter into its base model and save a full model folder (the merge core).

The merge is peft's ``merge_and_unload`` (W ← W + (α/r)·B·A for every adapted linear layer), done in the
``save_dtype`` asked for (float32 by default). The folder is written under a temporary name and renamed at
the end, so its ``config.json`` exists only once the merge is complete. Used by the lab's *merge* stage
(:mod:`tokenskip.lab.merge`) and by the vLLM engine, which serves adapters merged on the CPU platform.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from tokenskip.contract.io import temp_dir_beside, write_json_atomic
from tokenskip.contract.layout import MERGE_CONFIG, TOKENIZER_CONFIG, find_adapter

logger = logging.getLogger(__name__)

#: dtypes a merged model can be saved in (``auto`` is not one: a saved folder has one fixed dtype)
SAVE_DTYPES = ("float32", "bfloat16", "float16")


def trained_chat_template(adapter_dir: Path) -> str | None:
    """The chat template of the tokenizer saved with an adapter (``tokenskip train`` saves the one it trained with),
    or ``None`` when the folder holds no tokenizer. The merged model keeps it: a template changed for training
    (the think lab's, whose generation prompt opens a ``<think>`` block) travels with the target."""
    from transformers import AutoTokenizer

    if not (Path(adapter_dir) / TOKENIZER_CONFIG).is_file():
        return None
    template = AutoTokenizer.from_pretrained(str(adapter_dir)).chat_template
    return template if isinstance(template, str) else None


def merge_adapter(model: str, adapter: str | Path, out: str | Path, save_dtype: str = "float32",
                  record: dict | None = None) -> Path:
    """Merge ``adapter`` into ``model`` and save the full model folder (weights, config, tokenizer) at ``out``.

    The saved tokenizer is the base model's with the chat template the adapter was trained with
    (:func:`trained_chat_template`), when the adapter folder holds a tokenizer.

    Args:
        model: base model (alias, .gguf, folder or Hub id).
        adapter: peft adapter folder, or a training folder holding one.
        out: output folder (replaced if it exists).
        save_dtype: dtype of the merge and of the saved weights, one of :data:`SAVE_DTYPES`.
        record: settings written to ``out/merge_config.json`` (plus the adapter folder used).
    Returns:
        ``out`` as a path.
    Raises:
        ValueError: ``save_dtype`` is not one of :data:`SAVE_DTYPES`.
        FileNotFoundError: missing adapter or base model.
    """
    from tokenskip.engines.models import load_model

    if save_dtype not in SAVE_DTYPES:
        raise ValueError(f"merge: save dtype must be one of {', '.join(SAVE_DTYPES)}, got {save_dtype!r}")
    folder = find_adapter(adapter)
    net, tok = load_model(model, dtype=save_dtype, adapter=str(folder), merge_adapter=True)
    trained = trained_chat_template(folder)
    if trained is not None:
        tok.chat_template = trained
    out = Path(out)
    tmp = temp_dir_beside(out)
    try:
        net.save_pretrained(tmp)             # weights, config.json, generation_config.json
        tok.padding_side = "left"
        tok.save_pretrained(tmp)             # tokenizer + chat template
        write_json_atomic(tmp / MERGE_CONFIG, dict(record or {}) | {"adapter_dir": str(folder)})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("merged %s into %s -> %s", folder, model, out)
    return out


