"""Stage *warmup*: fine-tune the base model on the lab's worked solutions, so it can solve the lab task.

TokenSkip needs a target model that solves its task and writes its own CoTs; the packaged 135M
model solves none of the lab's questions zero-shot (0/20 in the lab probe, docs/lab.md). This stage
is ordinary supervised fine-tuning on the gold solutions written by ``tokenskip lab-data``: no γ
marker, every row at γ = 1.0, the completion ending in the project's answer line — the same rows
``tokenskip build-sft`` writes, so :func:`tokenskip.stages.train.train` runs unchanged. ``tokenskip merge``
then turns the adapter into the full target model.

Input (``--data DIR``): the folder of ``tokenskip lab-data`` (``train.jsonl``, ``validation.jsonl``).
Output (``--out OUT``)::

    sft/{train,validation}.jsonl, sft/stats.json   the SFT rows {id, ratio, prompt, completion}
    adapter/                                      everything ``tokenskip train`` writes (LoRA adapter, logs)

Example::

    tokenskip warmup --model smollm2-135m-instruct --data data/lab --out W/warmup --lr 1e-3 --epochs 1
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tokenskip.contract.config import to_dict
from tokenskip.contract.io import SCHEMA_VERSION, write_json_atomic, write_jsonl_atomic
from tokenskip.contract.layout import LAB_TRAIN, LAB_VALIDATION, SFT_STATS, SFT_TRAIN, SFT_VALIDATION
from tokenskip.finetune.sft import Trajectory, make_record
from tokenskip.finetune.train_config import TrainConfig
from tokenskip.task.data import load_problems
from tokenskip.task.prompts import DEFAULT_MARKER_DELIMITER

logger = logging.getLogger(__name__)


@dataclass
class WarmupConfig(TrainConfig):
    """Settings of ``tokenskip warmup``: every :class:`~tokenskip.stages.train.TrainConfig` field, plus the row limits.

    ``data`` is the lab-data folder here (not a build-sft folder). Defaults differing from the parent:
    lr 1e-3 and 1 epoch (the lab probe's warm-up, which took the 135M model from 0 % to 44 %).
    """

    data: str = field(default="", metadata={"help": "folder written by 'tokenskip lab-data' (train.jsonl, "
                                                    "validation.jsonl)"})
    out: str = field(default="", metadata={"help": "output folder (sft/ rows, adapter/ as 'tokenskip train')"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (lab probe: 1e-3)"})
    epochs: float = field(default=1.0, metadata={"help": "training epochs (lab probe: 1)"})
    limit: int | None = field(default=None, metadata={"help": "use at most this many train questions"})
    validation_limit: int | None = field(default=None, metadata={"help": "use at most this many validation "
                                                                         "questions (eval loss)"})
    system_prompt: str | None = field(default=None, metadata={"help": "optional system turn (keep it equal to "
                                                                        "the later stages')"})


def sft_rows(tokenizer, problems, system_prompt: str | None = None) -> list[dict]:
    """One SFT row ``{id, ratio: 1.0, prompt, completion}`` per problem: its worked solution + answer line.

    Raises:
        ValueError: a problem without a solution (names its id).
    """
    rows = []
    for p in problems:
        if not p.solution.strip():
            raise ValueError(f"warmup: problem {p.id!r} has no worked solution")
        traj = Trajectory(p.id, p.id, p.question, p.answer, {1.0: p.solution})
        rows.append(make_record(tokenizer, traj, 1.0, system_prompt, DEFAULT_MARKER_DELIMITER))
    return rows


def train_config(cfg: WarmupConfig) -> TrainConfig:
    """The :class:`TrainConfig` of the LoRA run: ``cfg``'s training fields, reading ``OUT/sft``, writing
    ``OUT/adapter``."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    base = {k: v for k, v in to_dict(cfg).items() if k in names}
    return TrainConfig(**(base | {"data": str(Path(cfg.out) / "sft"), "out": str(Path(cfg.out) / "adapter")}))


def run_warmup(cfg: WarmupConfig, tokenizer=None) -> dict:
    """Write the SFT rows, then train the LoRA adapter; returns ``train_metrics.json``'s content.

    Raises:
        FileNotFoundError: ``cfg.data`` lacks ``train.jsonl``/``validation.jsonl``.
        DataError: a malformed lab row.
    """
    cfg.validate()
    data = Path(cfg.data)
    for split in ("train", "validation"):
        if not (data / f"{split}.jsonl").is_file():
            raise FileNotFoundError(f"warmup: {data / f'{split}.jsonl'} not found: --data must be a folder "
                                    "written by 'tokenskip lab-data'")
    if tokenizer is None:
        from tokenskip.engines.models import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
    train_rows = sft_rows(tokenizer, load_problems("gsm8k", str(data / LAB_TRAIN), limit=cfg.limit),
                          cfg.system_prompt)
    val_rows = sft_rows(tokenizer, load_problems("gsm8k", str(data / LAB_VALIDATION), limit=cfg.validation_limit),
                        cfg.system_prompt)
    sft = Path(cfg.out) / "sft"
    write_jsonl_atomic(sft / SFT_TRAIN, train_rows)
    write_jsonl_atomic(sft / SFT_VALIDATION, val_rows)
    write_json_atomic(sft / SFT_STATS, {"schema_version": SCHEMA_VERSION,
                                           "n": {"train": len(train_rows), "validation": len(val_rows)},
                                           "config": to_dict(cfg)})
    from tokenskip.finetune.lora import train

    return train(train_config(cfg))
