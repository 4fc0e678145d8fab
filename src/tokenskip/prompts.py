"""Model inputs, always built through the tokenizer's own chat template.

User turn = instruction + newline + question (+ the compression-ratio marker when γ < 1), as in the
paper's reference code (``docs/method.md`` step 1 and 4).
"""

from __future__ import annotations

import math

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
