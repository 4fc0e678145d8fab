"""Model inputs, always built through the tokenizer's own chat template.

User turn = instruction + newline + question (+ the compression-ratio marker when γ < 1), as in the
paper's reference code (``../shared/REFERENCE.md`` step 1 and 4).
"""

from __future__ import annotations

import math

#: The paper's user instruction (reference code, step 1 of REFERENCE.md).
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

#: Delimiter around γ in the ratio marker; the paper uses the same literal for every model family.
DEFAULT_MARKER_DELIMITER = "<|eot_id|>"

#: Answer line appended to every SFT target (paper step 4).
ANSWER_TEMPLATE = "\n\nThe final answer is: $\\boxed{{{answer}}}$"

#: Where the CoT ends for counting its tokens: the reference splits every output on this literal
#: (first occurrence; ``evaluation.py``), so "... so the final answer is 18." stays in the CoT.
COT_SPLIT = "\n\nThe final answer is:"

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


# -- prompt styles ---------------------------------------------------------------------------------
#: ``chat-template``: the tokenizer's own chat template (this project's default, any model family).
#: ``reference``: the TokenSkip reference's hand-written strings for Qwen (ChatML) and Llama-3.1, byte
#: for byte (REFERENCE.md "Reference-code details"); the paper recipes use it.
PROMPT_STYLES = ("chat-template", "reference")

#: The reference's Qwen system turn (also what its LLaMA-Factory ``qwen`` template adds by default).
REFERENCE_SYSTEM = "You are a helpful assistant."


def reference_prompt_family(model: str) -> str:
    """``llama`` when the model name (Hub id or folder) mentions Llama, else ``qwen`` (the reference's two)."""
    return "llama" if "llama" in str(model).lower() else "qwen"


def reference_prompt(question: str, ratio: float | None = None, family: str = "qwen",
                     instruction: str = INSTRUCTION, system_prompt: str | None = None, training: bool = False,
                     marker_delimiter: str = DEFAULT_MARKER_DELIMITER) -> str:
    """The reference's prompt string for one question (no chat template involved).

    Qwen: ChatML with the system turn ``system_prompt`` (default "You are a helpful assistant."), user
    turn = instruction + newline + question + marker. Llama-3.1: no system block (its chat template
    would add "Cutting Knowledge Date …"), user turn = instruction + newline + question, then at
    inference a newline before the marker (``evaluation.py``), none in training data (its
    LLaMA-Factory input). The marker is empty for γ = 1 or ``None``.

    Raises:
        ValueError: ``ratio`` outside (0, 1], or an unknown family.
    """
    marker = "" if ratio is None else ratio_marker(ratio, marker_delimiter)
    if family == "qwen":
        system = REFERENCE_SYSTEM if system_prompt is None else system_prompt
        return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{instruction}\n{question}{marker}"
                f"<|im_end|>\n<|im_start|>assistant\n")
    if family == "llama":
        if system_prompt:
            raise ValueError("the reference's Llama-3.1 prompt has no system turn; drop --system-prompt or "
                             "use --prompt-style chat-template")
        sep = "" if training else "\n"
        return (f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{instruction}\n{question}{sep}{marker}"
                f"<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    raise ValueError(f"unknown reference prompt family {family!r}; expected qwen or llama")


def styled_prompt(tokenizer, question: str, ratio: float | None = None, system_prompt: str | None = None,
                  instruction: str = INSTRUCTION, marker_delimiter: str = DEFAULT_MARKER_DELIMITER,
                  style: str = "chat-template", model: str = "", training: bool = False) -> str:
    """:func:`build_prompt` (style ``chat-template``) or :func:`reference_prompt` (style ``reference``,
    family from ``model`` or else the tokenizer's name).

    Raises:
        ValueError: an unknown style, and everything :func:`build_prompt` / :func:`reference_prompt` raise.
    """
    if style == "chat-template":
        return build_prompt(tokenizer, question, ratio, system_prompt, instruction, marker_delimiter)
    if style == "reference":
        family = reference_prompt_family(model or getattr(tokenizer, "name_or_path", ""))
        return reference_prompt(question, ratio, family, instruction, system_prompt, training, marker_delimiter)
    raise ValueError(f"unknown prompt style {style!r}; expected one of {list(PROMPT_STYLES)}")


def warn_default_system(tokenizer, style: str, system_prompt: str | None, logger=None) -> str | None:
    """A warning when no system turn is given but the chat template inserts a default one.

    Qwen2.5's template silently adds "You are Qwen, created by Alibaba Cloud. You are a helpful
    assistant." (the paper used "You are a helpful assistant."). Returns the message (also logged),
    or ``None`` when nothing is inserted or a system turn / the reference style was chosen.
    """
    if style != "chat-template" or system_prompt or not getattr(tokenizer, "chat_template", None):
        return None
    probe = "\x00Q\x00"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": probe}], tokenize=False,
                                             add_generation_prompt=False)
    head = rendered.split(probe, 1)[0]
    if "<|im_start|>system" not in head and "system<|end_header_id|>" not in head:
        return None
    msg = (f"no --system-prompt: the chat template of {getattr(tokenizer, 'name_or_path', '?')} inserts its own "
           f"default system turn; the paper used {REFERENCE_SYSTEM!r} (pass --system-prompt, or --prompt-style reference)")
    if logger is not None:
        logger.warning(msg)
    return msg
