"""The prompt format an adapter was trained with, stored next to it as ``prompt_format.json``.

A TokenSkip adapter only answers a γ-marked prompt correctly when the prompt is built exactly as in its
SFT data: the same instruction line, system turn and marker delimiter (paper step 4, docs/method.md).
``tokenskip build-sft`` writes this file into its output folder, ``tokenskip train`` copies it next to the
adapter, and ``tokenskip evaluate`` / ``tokenskip serve`` read it from the adapter folder; their flags
(``--system-prompt``, ``--marker-delimiter``) still override it.

File (JSON, one object)::

    {"instruction": "...", "system_prompt": null, "marker_delimiter": "<|eot_id|>",
     "ratios": [1.0, 0.9, ...], "cot_format": "auto", "enable_thinking": null, "schema_version": 1}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from tokenskip.contract.io import DataError, read_json, write_json_atomic
from tokenskip.contract.layout import PROMPT_FORMAT
from tokenskip.task.prompts import DEFAULT_MARKER_DELIMITER, INSTRUCTION, build_messages, validate_ratio
from tokenskip.task.think import COT_FORMATS, pin_enable_thinking, resolve_cot_format

#: γ range assumed for an adapter without a stored format: the paper's grid (docs/method.md step 3).
DEFAULT_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


@dataclass(frozen=True)
class PromptFormat:
    """How γ-conditioned prompts are built.

    Attributes:
        instruction: line before the question in the user turn (paper's reference instruction).
        system_prompt: optional system turn (``None`` = none).
        marker_delimiter: delimiter around γ in the user-turn marker (``<|eot_id|>`` in the paper).
        ratios: the γ the adapter was trained on (largest first); budget mode clips γ to their range.
        cot_format: where the CoT is (``auto``, ``plain``, ``think``: :mod:`tokenskip.task.think`); a think
            format lets a budget (``max_cot_tokens``) run without a length model (γ 1, the block closed at N).
        enable_thinking: the chat template's ``enable_thinking`` the SFT prompts were rendered with (``None``:
            the template's default).
    """

    instruction: str = INSTRUCTION
    system_prompt: str | None = None
    marker_delimiter: str = DEFAULT_MARKER_DELIMITER
    ratios: tuple[float, ...] = field(default=DEFAULT_RATIOS)
    cot_format: str = "auto"
    enable_thinking: bool | None = None

    @property
    def min_ratio(self) -> float:
        return min(self.ratios)

    def messages(self, question: str, ratio: float | None = None) -> list[dict]:
        """Chat messages for one question (see :func:`tokenskip.task.prompts.build_messages`)."""
        return build_messages(question, ratio, self.system_prompt, self.instruction, self.marker_delimiter)

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/prompt_format.json`` atomically; returns its path."""
        path = Path(folder) / PROMPT_FORMAT
        write_json_atomic(path, {**dataclasses.asdict(self), "ratios": list(self.ratios), "schema_version": 1})
        return path

    def for_tokenizer(self, tokenizer) -> "PromptFormat":
        """This format made concrete for ``tokenizer``: ``enable_thinking`` pinned in its chat template (it changes
        the tokenizer) and ``cot_format`` ``auto`` resolved from the template
        (:func:`tokenskip.task.think.resolve_cot_format`). Raises ``ValueError`` as those do."""
        pin_enable_thinking(tokenizer, self.enable_thinking)
        return dataclasses.replace(self, cot_format=resolve_cot_format(self.cot_format, tokenizer))

    def with_overrides(self, **overrides) -> "PromptFormat":
        """A copy with the non-``None`` overrides applied (flags given on the command line)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def load_prompt_format(folder: str | Path | None) -> PromptFormat | None:
    """The format stored in ``folder/prompt_format.json``; ``None`` when the folder or file is absent.

    Raises:
        DataError: the file exists but a field is missing, unknown or of the wrong type.
    """
    if not folder:
        return None
    path = Path(folder) / PROMPT_FORMAT
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(path, None, None, "expected a JSON object")
    data = {k: v for k, v in data.items() if k != "schema_version"}
    names = {f.name for f in dataclasses.fields(PromptFormat)}
    for k in data:
        if k not in names:
            raise DataError(path, None, k, f"unknown field (valid: {sorted(names)})")
    for k in ("instruction", "marker_delimiter"):
        if k in data and not isinstance(data[k], str):
            raise DataError(path, None, k, f"expected a string, got {data[k]!r}")
    if "cot_format" in data and data["cot_format"] not in COT_FORMATS:
        raise DataError(path, None, "cot_format", f"expected one of {list(COT_FORMATS)}, got {data['cot_format']!r}")
    if data.get("enable_thinking") is not None and not isinstance(data["enable_thinking"], bool):
        raise DataError(path, None, "enable_thinking", f"expected true, false or null, got {data['enable_thinking']!r}")
    if data.get("system_prompt") is not None and not isinstance(data["system_prompt"], str):
        raise DataError(path, None, "system_prompt", f"expected a string or null, got {data['system_prompt']!r}")
    if "ratios" in data:
        try:
            data["ratios"] = tuple(sorted({validate_ratio(r) for r in data["ratios"]}, reverse=True))
        except (TypeError, ValueError) as e:
            raise DataError(path, None, "ratios", str(e)) from None
        if not data["ratios"]:
            raise DataError(path, None, "ratios", "empty list")
    return PromptFormat(**data)


def resolve_prompt_format(adapter: str | Path | None, system_prompt: str | None = None,
                          marker_delimiter: str | None = None) -> PromptFormat:
    """The adapter folder's stored format (or the defaults), overridden by the flags that were given."""
    base = load_prompt_format(adapter) or PromptFormat()
    return base.with_overrides(system_prompt=system_prompt, marker_delimiter=marker_delimiter)
