"""The rows ``tokenskip train`` learns from: reading ``tokenskip build-sft``'s files and tokenizing them.

A row is ``{id, ratio, prompt, completion}`` (:class:`~tokenskip.contract.records.SFTExample`). The prompt
is already chat-templated text, so it is tokenized as is (no special tokens added, no second chat
template) and the completion gets the chat template's end-of-turn token (``<|im_end|>`` for ChatML,
``<|eot_id|>`` for Llama 3), the token that stops decoding. trl then builds the labels from the completion
mask (prompt tokens -> -100).
"""

from __future__ import annotations

from pathlib import Path

from tokenskip.contract.io import DataError, iter_jsonl
from tokenskip.contract.records import SFTExample
from tokenskip.task.prompts import end_of_turn


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
