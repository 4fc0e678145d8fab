"""Stage *warmup*: fine-tune the base model on the lab's worked solutions, so it can solve the lab task.

TokenSkip needs a target model that solves its task and writes its own CoTs; the packaged 135M
model solves none of the lab's questions zero-shot (0/20 in the lab probe, docs/lab.md). This stage
is ordinary supervised fine-tuning on the gold solutions written by ``tokenskip lab-data``: no γ
marker, every row at γ = 1.0, the completion ending in the project's answer line — the same rows
``tokenskip build-sft`` writes, so :func:`tokenskip.stages.train.train` runs unchanged. ``tokenskip merge``
then turns the adapter into the full target model.

With ``cot_format: think`` (the think lab, ``recipes/lab-smollm2-legs-think.yaml``) each target is a think turn:
the generation prompt opens the block (the tokenizer's chat template made a reasoning one:
:func:`tokenskip.task.think.think_chat_template`) and the completion is the solution, ``\n</think>\n\n`` and the
answer line. The tags stay plain text to the tokenizer (``<think>`` is three SmolLM2 pieces): LoRA trains no
embedding rows, so a new token's embedding would stay untrained, and the decoded text keeps the tags. The
tokenizer trained with is saved with the adapter, and ``tokenskip merge`` copies its chat template into the merged
target, so every later stage renders think prompts.

Input (``--data DIR``): the folder of ``tokenskip lab-data`` (``train.jsonl``, ``validation.jsonl``).
Output (``--out OUT``)::

    sft/{train,validation}.jsonl, sft/stats.json   the SFT rows {id, ratio, prompt, completion}
    adapter/                                      everything ``tokenskip train`` writes (LoRA adapter, logs)

Example::

    tokenskip warmup --model smollm2-135m-instruct --data data/lab --out W/warmup --lr 1e-3 --epochs 1
"""

from __future__ import annotations

import copy
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
from tokenskip.task.think import resolve_cot_format, template_think_mode, think_chat_template, validate_cot_format

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
    cot_format: str = field(default="auto", metadata={
        "help": "think = solutions inside <think>…</think> (the chat template's generation prompt opens the block); "
                "plain = solution + answer line (the paper); auto = think when the model's template makes think "
                "outputs", "choices": ["auto", "plain", "think"]})

    def validate(self) -> None:
        super().validate()
        validate_cot_format(self.cot_format, "warmup: --cot-format")

    def unused_settings(self) -> tuple[str, ...]:
        """Left out of a recipe's fingerprint: ``cot_format`` at its default ``auto``, so lab runs made before the
        setting existed stay done (a plain template, SmolLM2's, resolves ``auto`` to the rows they were made with)."""
        return ("cot_format",) if self.cot_format == "auto" else ()


def sft_rows(tokenizer, problems, system_prompt: str | None = None, think: bool = False) -> list[dict]:
    """One SFT row ``{id, ratio: 1.0, prompt, completion}`` per problem: its worked solution + answer line, or with
    ``think`` the solution inside the think block and the answer line after it
    (:func:`tokenskip.task.think.think_completion`: no ``<think>`` in the completion when the prompt opened it).

    Raises:
        ValueError: a problem without a solution (names its id).
    """
    rows = []
    for p in problems:
        if not p.solution.strip():
            raise ValueError(f"warmup: problem {p.id!r} has no worked solution")
        traj = Trajectory(p.id, p.id, p.question, p.answer, {1.0: p.solution}, think_answer="" if think else None)
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
    think = resolve_cot_format(cfg.cot_format, tokenizer) == "think"
    if think and template_think_mode(tokenizer) is None:   # a plain template: its generation prompt opens the block
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.chat_template = think_chat_template(tokenizer.chat_template or "")
    train_rows = sft_rows(tokenizer, load_problems("gsm8k", str(data / LAB_TRAIN), limit=cfg.limit),
                          cfg.system_prompt, think)
    val_rows = sft_rows(tokenizer, load_problems("gsm8k", str(data / LAB_VALIDATION), limit=cfg.validation_limit),
                        cfg.system_prompt, think)
    sft = Path(cfg.out) / "sft"
    write_jsonl_atomic(sft / SFT_TRAIN, train_rows)
    write_jsonl_atomic(sft / SFT_VALIDATION, val_rows)
    write_json_atomic(sft / SFT_STATS, {"schema_version": SCHEMA_VERSION,
                                           "n": {"train": len(train_rows), "validation": len(val_rows)},
                                           "config": to_dict(cfg)})
    from tokenskip.finetune.lora import load_for_training, train

    tc = train_config(cfg)
    if not think:
        return train(tc)
    model, train_tok = load_for_training(tc)   # trained (and saved with the adapter) with the think template
    train_tok.chat_template = tokenizer.chat_template
    return train(tc, model, train_tok)
