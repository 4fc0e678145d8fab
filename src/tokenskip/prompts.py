"""Model inputs, always built through the tokenizer's own chat template.

User turn = instruction + newline + question (+ the compression-ratio marker when γ < 1), as in the
paper's reference code (``docs/method.md`` step 1 and 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

#: The paper's user instruction (reference code, step 1 of docs/method.md).
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

#: Delimiter around γ in the ratio marker; the paper uses the same literal for every model family.
DEFAULT_MARKER_DELIMITER = "<|eot_id|>"

#: Answer line appended to every SFT target (paper step 4).
ANSWER_TEMPLATE = "\n\nThe final answer is: $\\boxed{{{answer}}}$"

#: Prompt-based reduction baseline: the instruction asks to cut the reasoning's words by (1-γ).
PROMPT_REDUCTION_TEMPLATE = (
    "Please reason step by step, but reduce the number of words in your reasoning by {percent}% "
    "compared to usual, and put your final answer within \\boxed{{}}."
)


def validate_ratio(ratio: float) -> float:
    """Return ``ratio`` as float if it is a valid compression ratio γ ∈ (0, 1]; else raise ``ValueError``."""
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"compression ratio γ must be a number in (0, 1], got {ratio!r}") from None
    if not math.isfinite(r) or not 0.0 < r <= 1.0:
        raise ValueError(f"compression ratio γ must be in (0, 1], got {ratio!r}")
    return r


def format_ratio(ratio: float) -> str:
    """γ as it appears in the marker and in folder names: ``0.5``, ``0.75``, ``1.0``."""
    r = validate_ratio(ratio)
    s = f"{round(r, 4):g}"
    return s if "." in s else s + ".0"


def ratio_marker(ratio: float, delimiter: str = DEFAULT_MARKER_DELIMITER) -> str:
    """The γ marker appended to the user turn, e.g. ``<|eot_id|>0.5<|eot_id|>``; ``""`` for γ = 1."""
    r = validate_ratio(ratio)
    return "" if r == 1.0 else f"{delimiter}{format_ratio(r)}{delimiter}"


def build_messages(question: str, ratio: float | None = None, system_prompt: str | None = None,
                   instruction: str = INSTRUCTION,
                   marker_delimiter: str = DEFAULT_MARKER_DELIMITER) -> list[dict]:
    """Chat messages for one question.

    Args:
        question: the problem text.
        ratio: requested compression ratio γ ∈ (0, 1]; ``None`` or 1.0 adds no marker.
        system_prompt: optional system turn (the paper uses "You are a helpful assistant." for Qwen).
        instruction: the line before the question.
        marker_delimiter: delimiter of the γ marker.

    Raises:
        ValueError: ``ratio`` outside (0, 1].
    """
    user = f"{instruction}\n{question}"
    if ratio is not None:
        user += ratio_marker(ratio, marker_delimiter)
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": user}]


def prompt_reduction_instruction(ratio: float) -> str:
    """Instruction of the prompt-based baseline: cut reasoning words by (1 − γ), in percent."""
    r = validate_ratio(ratio)
    return PROMPT_REDUCTION_TEMPLATE.format(percent=round(100 * (1 - r)))


def build_prompt(tokenizer, question: str, ratio: float | None = None, system_prompt: str | None = None,
                 instruction: str = INSTRUCTION, marker_delimiter: str = DEFAULT_MARKER_DELIMITER) -> str:
    """The full prompt string (chat template applied, generation prompt added) for one question.

    Raises:
        ValueError: ``ratio`` outside (0, 1], or the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template")
    msgs = build_messages(question, ratio, system_prompt, instruction, marker_delimiter)
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def answer_line(answer: str) -> str:
    """The answer line that ends every SFT target: ``\\n\\nThe final answer is: $\\boxed{A}$``."""
    return ANSWER_TEMPLATE.format(answer=answer)


# ------------------------------------------------------------------ end of turn: one rule for training and decoding


def end_of_turn(tokenizer) -> str:
    """The text the chat template puts after an assistant message (``<|im_end|>``, ``<|eot_id|>``...).

    Training appends it to every SFT completion, and decoding stops at it (:func:`stop_rule`): one
    rule for both, so a model is never trained to end on a token decoding does not stop at (Qwen2.5
    base/Math ship EOS ``<|endoftext|>`` while their template ends turns with ``<|im_end|>``).

    Found by rendering a one-turn conversation with a sentinel answer; trailing whitespace is dropped
    (decoding stops at the token itself). Falls back to ``tokenizer.eos_token`` when the template adds
    nothing.

    Raises:
        ValueError: the tokenizer has neither an end-of-turn text nor an EOS token.
    """
    sentinel = "TOKENSKIP_SENTINEL_ANSWER"
    eot = ""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": "q"},
                                              {"role": "assistant", "content": sentinel}], tokenize=False)
        eot = text[text.rindex(sentinel) + len(sentinel):].rstrip()
    eot = eot or (tokenizer.eos_token or "")
    if not eot:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r}: no end-of-turn or EOS token")
    return eot


@dataclass(frozen=True)
class StopRule:
    """Where greedy decoding stops.

    Attributes:
        token_ids: stop token ids (the stop token itself is not part of the output).
        strings: stop strings (the output is cut before the first one; the cut text is not kept).
    """

    token_ids: tuple[int, ...]
    strings: tuple[str, ...] = field(default=())


def stop_rule(tokenizer, eos_token_id: int | Sequence[int] | None = None, extra: Iterable[str] = ()) -> StopRule:
    """The stop rule of every backend: the model's generation-config EOS id(s) (an int, a list or
    ``None``), the tokenizer's EOS, and the chat template's end of turn (:func:`end_of_turn`, the
    text training appends), plus ``extra`` stop strings (``--stop``).

    The end of turn is a stop id when it is one token, else a stop string (a template that ends turns
    with plain text, e.g. ``"\n### End"``). A tokenizer without either gives only the EOS ids.

    Returns:
        :class:`StopRule` with ids in that order, without duplicates.
    """
    ids: list[int] = []
    for i in ([] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else eos_token_id):
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    strings: list[str] = []
    try:
        eot = end_of_turn(tokenizer)
    except ValueError:
        eot = ""
    if eot:
        eot_ids = tokenizer(eot, add_special_tokens=False)["input_ids"]
        if len(eot_ids) == 1:
            if eot_ids[0] not in ids:
                ids.append(eot_ids[0])
        else:
            strings.append(eot)
    for x in extra:
        if not isinstance(x, str) or not x:
            raise ValueError(f"stop strings must be non-empty strings, got {x!r}")
        if x not in strings:
            strings.append(x)
    return StopRule(tuple(ids), tuple(strings))
