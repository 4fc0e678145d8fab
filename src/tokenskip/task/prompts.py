"""Model inputs, always built through the tokenizer's own chat template.

User turn = instruction + newline + question (+ the compression-ratio marker when γ < 1), as in the
paper's reference code (``docs/method.md`` step 1 and 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from tokenskip.contract.ratios import format_ratio, validate_ratio

#: The paper's user instruction (reference code, step 1 of docs/method.md).
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

#: Delimiter around γ in the ratio marker; the paper uses the same literal for every model family.
DEFAULT_MARKER_DELIMITER = "<|eot_id|>"

#: The phrase that ends a CoT and opens the answer (paper step 4; grading splits the CoT at it).
ANSWER_PHRASE = "The final answer is"
#: Answer line appended to every SFT target (paper step 4).
ANSWER_TEMPLATE = "\n\n" + ANSWER_PHRASE + ": $\\boxed{{{answer}}}$"
#: The answer line opened, appended to a truncated CoT to force an answer (truncation baseline).
FORCE_ANSWER = "\n\n" + ANSWER_PHRASE + ": $\\boxed{"

#: Where the CoT ends for counting its tokens: the reference splits every output on this literal
#: (first occurrence; ``evaluation.py``), so "... so the final answer is 18." stays in the CoT.
COT_SPLIT = "\n\nThe final answer is:"

#: Prompt-based reduction baseline: the instruction asks to cut the reasoning's words by (1-γ).
PROMPT_REDUCTION_TEMPLATE = (
    "Please reason step by step, but reduce the number of words in your reasoning by {percent}% "
    "compared to usual, and put your final answer within \\boxed{{}}."
)


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


# -- prompt styles ---------------------------------------------------------------------------------
#: ``chat-template``: the tokenizer's own chat template (this project's default, any model family).
#: ``reference``: the TokenSkip reference's hand-written strings for Qwen (ChatML) and Llama-3.1, byte
#: for byte (the reference code; docs/method.md); the paper recipes use it.
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
           f"default system turn; the paper used {REFERENCE_SYSTEM!r} (pass --system-prompt, or --prompt-style "
           "reference)")
    if logger is not None:
        logger.warning(msg)
    return msg
