"""Several LoRA adapters on one peft model, picked per prompt: peft's mixed adapter batches.

A calibrated TokenSkip adapter reaches each γ with a LoRA scale of its own: a copy of the adapter folder whose
``lora_alpha`` is scaled (:func:`tokenskip.finetune.calibration.scaled_adapter`). ``tokenskip serve`` decodes requests
at different γ in one padded batch: :class:`PeftAdapters` loads each such folder once as a named adapter of the
model (``PeftModel.load_adapter``), and names each row for the ``adapter_names`` argument of peft's ``generate``,
which applies every row's own adapter in the same forward pass (peft docs, "Inference with different LoRA adapters
in the same batch"). The model's own adapter keeps its name; ``None`` (no adapter) is peft's ``"__base__"``.

At most ``max_loaded`` folders stay loaded besides the model's own: the least recently used one that the current
batch does not need is deleted (``delete_adapter``) when another is loaded. A batch that needs more loads them all
first (the bound is exceeded for that batch only).
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

#: peft's name, in ``adapter_names``, of a row decoded by the base model alone
BASE_ROW = "__base__"


def _key(folder: str) -> str:
    return str(Path(folder).resolve())


class PeftAdapters:
    """The adapters of one ``peft.PeftModel`` by folder, loaded lazily (see the module docstring).

    Args:
        model: the peft model (its own adapter loaded, not merged).
        own: the folder of the model's own adapter (``None``: unknown; then every folder is loaded).
        max_loaded: folders kept loaded besides the model's own (least recently used evicted first).
    """

    def __init__(self, model, own: str | None, max_loaded: int = 4):
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be >= 1, got {max_loaded}")
        self.model, self.max_loaded = model, max_loaded
        self.own = _key(own) if own else None
        self.own_name = model.active_adapter
        self.loaded: OrderedDict[str, str] = OrderedDict()   # folder -> adapter name, least recently used first
        self._ids = itertools.count(1)

    def names(self, adapters: Sequence[str | None]) -> list[str]:
        """The peft adapter name of each prompt's folder (``adapters[i]``; ``None``: the base model), loading the
        folders not loaded yet and evicting the least recently used ones beyond ``max_loaded``.

        Raises:
            ValueError: a folder peft cannot load as a LoRA adapter (its message names the folder).
        """
        keys = [None if a is None else _key(a) for a in adapters]
        wanted = [k for k in dict.fromkeys(keys) if k is not None and k != self.own]
        for k in wanted:
            if k not in self.loaded:
                self._load(k)
            self.loaded.move_to_end(k)
        excess = len(self.loaded) - self.max_loaded
        for k in [k for k in self.loaded if k not in wanted][:max(0, excess)]:
            self.model.delete_adapter(self.loaded.pop(k))
        return [BASE_ROW if k is None else self.own_name if k == self.own else self.loaded[k] for k in keys]

    def _load(self, folder: str) -> None:
        name = f"lora{next(self._ids)}"
        try:
            self.model.load_adapter(folder, adapter_name=name)
        except Exception as e:  # noqa: BLE001 - peft raises several kinds; one clear error names the folder
            raise ValueError(f"cannot load LoRA adapter folder {folder!r}: {type(e).__name__}: {e}") from e
        self.model.eval()
        self.loaded[folder] = name
        logger.info("loaded LoRA adapter %s as %r (%d loaded)", folder, name, len(self.loaded))
