"""Think blocks: the CoT format of reasoning models (DeepSeek-R1 distills, Qwen3 in thinking mode).

Such a model writes its CoT inside ``<think>…</think>`` and its answer after ``</think>``. Three CoT
formats (:data:`COT_FORMATS`):

* ``plain`` — the paper's format: the CoT is the text before "The final answer is:" (reference split);
* ``think`` — the CoT is the think block's content, the answer what follows ``</think>``; an output
  whose block is never closed has no answer (graded wrong, flagged ``think_closed: false``);
* ``auto`` (default) — ``think`` for an output that holds a block (it opens with ``<think>`` or has a
  ``</think>``), ``plain`` otherwise; a chat template whose generation prompt opens the block itself
  (R1-Distill style) resolves ``auto`` to ``think`` (:func:`resolve_cot_format`), so an output that
  never closes the block it was handed is still recognised; so does a template that knows think blocks
  and leaves the opening to the model (Qwen3 thinking), but not one whose generation prompt closes an empty
  block (Qwen3 with ``enable_thinking`` false: the output is an answer only).

A Qwen3-style template takes the Jinja variable ``enable_thinking``; :func:`pin_enable_thinking` fixes it
for every render of one tokenizer (prompts, SFT rows, end-of-turn probe, served requests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
COT_FORMATS = ("auto", "plain", "think")
#: help text of every stage's ``enable_thinking`` setting
ENABLE_THINKING_HELP = "the chat template's enable_thinking (Qwen3 style); default: the template's own"
#: What budget forcing writes after a CoT cut inside an open block, before the answer line is opened.
THINK_FORCE_CLOSE = "\n" + THINK_CLOSE
_BLOCK = re.compile(re.escape(THINK_OPEN) + r".*?" + re.escape(THINK_CLOSE) + r"\s*", re.DOTALL)


@dataclass(frozen=True)
class ThinkSplit:
    """A think-format output split in two.

    Attributes:
        cot: the block's content, outer whitespace stripped (what compress prunes and CoT tokens count).
        answer: the text after ``</think>``, leading whitespace stripped (``""`` when the block is open).
        closed: whether ``</think>`` was written.
    """

    cot: str
    answer: str
    closed: bool


def validate_cot_format(value: str, name: str = "cot_format") -> str:
    """``value`` when it is one of :data:`COT_FORMATS`; raises ``ValueError`` naming ``name`` otherwise."""
    if value not in COT_FORMATS:
        raise ValueError(f"{name} must be one of {list(COT_FORMATS)}, got {value!r}")
    return value


def has_block(text: str) -> bool:
    """Whether an output holds a think block: it opens with ``<think>`` or has a ``</think>``."""
    return text.lstrip().startswith(THINK_OPEN) or THINK_CLOSE in text


def split_think(text: str) -> ThinkSplit:
    """Split an output of a think model at its first ``</think>``.

    A leading ``<think>`` (written by the model, Qwen3 style) is dropped; without one the prompt opened the
    block (R1-Distill style). No ``</think>``: the whole text is the (unfinished) CoT and the answer is empty.
    """
    body = text.lstrip()
    body = body[len(THINK_OPEN):] if body.startswith(THINK_OPEN) else text
    cot, sep, answer = body.partition(THINK_CLOSE)
    return ThinkSplit(cot.strip(), answer.strip() if sep else "", bool(sep))


def block_state(prompt: str, text: str) -> str | None:
    """The think block at the end of ``prompt + text``: ``"open"``, ``"closed"`` or ``None`` (no block).

    Only the generated ``text`` and the prompt's generation prompt (its end) count, so a user turn that quotes
    ``<think>`` does not open a block.
    """
    opened = prompt.rstrip().endswith(THINK_OPEN) or text.lstrip().startswith(THINK_OPEN)
    if THINK_CLOSE in text:
        return "open" if text.rfind(THINK_OPEN) > text.rfind(THINK_CLOSE) else "closed"
    return "open" if opened else None


def empty_block(prompt: str) -> str:
    """What follows ``prompt`` so that a think model's turn holds an empty, closed block (a turn without thinking,
    as Qwen3's template writes it when ``enable_thinking`` is false: ``<think>\\n\\n</think>\\n\\n``).

    Returns ``""`` when the prompt already ends with a closed block, ``"\\n</think>\\n\\n"`` (one ``\\n`` more when
    the prompt does not end with one) when its generation prompt opened the block (R1-Distill style), and the whole
    empty block otherwise (the model opens its block itself: Qwen3 thinking, or a plain template with the think
    format).
    """
    tail = prompt.rstrip()
    if tail.endswith(THINK_CLOSE):
        return ""
    if tail.endswith(THINK_OPEN):
        return ("" if prompt.endswith("\n") else "\n") + "\n" + THINK_CLOSE + "\n\n"
    return f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"


def unanswered(prompt: str, text: str) -> bool:
    """Whether ``prompt + text`` ends a think turn without an answer: its block is still open, or it was closed with
    nothing but whitespace after the last ``</think>`` (a model that closes its block and stops at once). ``False``
    for a turn without a block."""
    state = block_state(prompt, text)
    return state == "open" or state == "closed" and not text.rpartition(THINK_CLOSE)[2].strip()


def drop_thinking(content: str) -> str:
    """An assistant turn of the history without its think blocks (reasoning templates show prior turns' answers
    only; a client that sends the whole output back must not feed old reasoning in as context)."""
    out = _BLOCK.sub("", content)
    head, sep, tail = out.partition(THINK_CLOSE)   # an R1-style turn: the opener was in the prompt, not the content
    return tail.lstrip() if sep else out


def think_completion(cot: str, answer: str, prompt: str) -> str:
    """The SFT target of a think CoT: ``<think>\\n`` + CoT + ``\\n</think>\\n\\n`` + answer, less the opener when
    the prompt already ends with it (an R1-Distill generation prompt), so prompt + completion hold one block.

    Args:
        cot: the (pruned) block content; answer: the text after the block (stripped here).
        prompt: the chat-templated prompt the completion follows.
    """
    body = f"{cot.strip()}\n{THINK_CLOSE}\n\n{answer.strip()}"
    return body if prompt.rstrip().endswith(THINK_OPEN) else f"{THINK_OPEN}\n{body}"


#: Prefixed to a chat template by :func:`think_chat_template`: prior assistant turns keep only what follows their last
#: ``</think>`` (as the reasoning templates render history).
_HISTORY_WITHOUT_THINKING = (
    "{%- set ns = namespace(turns=[]) -%}{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' and m['content'] is string and '</think>' in m['content'] -%}"
    "{%- set ns.turns = ns.turns + [{'role': m['role'], 'content': m['content'].split('</think>')[-1] | trim}] -%}"
    "{%- else -%}{%- set ns.turns = ns.turns + [m] -%}{%- endif -%}{%- endfor -%}{%- set messages = ns.turns -%}")
#: Appended by :func:`think_chat_template`: the generation prompt opens the think block.
_OPEN_BLOCK = "{% if add_generation_prompt %}{{ '" + THINK_OPEN + "\\n' }}{% endif %}"


def think_chat_template(template: str) -> str:
    """A plain chat template made a reasoning one, R1-Distill style: its generation prompt ends with ``<think>\\n``
    (the model starts inside its block, so every turn is a think turn and ``auto`` resolves to ``think``:
    :func:`template_think_mode` ``"open"``), and prior assistant turns lose their thinking. The tags stay plain text
    to the tokenizer. Idempotent. Used by the think lab (``tokenskip warmup`` with ``cot_format: think``), whose
    target, SmolLM2, has a plain ChatML template.

    Raises:
        ValueError: ``template`` is empty, or is a reasoning template already (it mentions ``</think>``).
    """
    if template.startswith(_HISTORY_WITHOUT_THINKING) and template.endswith(_OPEN_BLOCK):
        return template
    if not template or THINK_CLOSE in template:
        raise ValueError("think_chat_template needs a plain chat template (one that does not handle think blocks "
                         "itself)")
    return _HISTORY_WITHOUT_THINKING + template + _OPEN_BLOCK


def template_think_mode(tokenizer) -> str | None:
    """How the tokenizer's chat template treats think blocks: ``"open"`` (its generation prompt ends with
    ``<think>``, R1-Distill style), ``"closed"`` (it ends with an empty closed block: Qwen3 with thinking off),
    ``"model"`` (the template knows ``</think>`` and the model opens the block itself: Qwen3 thinking), or
    ``None`` (a plain template, or none)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or THINK_CLOSE not in template and THINK_OPEN not in template:
        return None
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False,
                                           add_generation_prompt=True).rstrip()
    if prompt.endswith(THINK_OPEN):
        return "open"
    return "closed" if prompt.endswith(THINK_CLOSE) else "model"


def resolve_cot_format(setting: str, tokenizer=None) -> str:
    """The CoT format a run grades with: ``setting``, except ``auto`` becomes ``think`` when the tokenizer's
    template makes think outputs (:func:`template_think_mode` ``open`` or ``model``).

    Raises:
        ValueError: ``setting`` is not one of :data:`COT_FORMATS`.
    """
    validate_cot_format(setting)
    if setting == "auto" and tokenizer is not None and template_think_mode(tokenizer) in ("open", "model"):
        return "think"
    return setting


def pin_enable_thinking(tokenizer, enable: bool | None):
    """Fix the template variable ``enable_thinking`` (Qwen3 style) to ``enable`` for every render of
    ``tokenizer``, by prefixing its chat template with a Jinja ``set``; ``None`` leaves the template as it is
    (the template's own default). Returns the tokenizer.

    Raises:
        ValueError: ``enable`` is given but the template does not read ``enable_thinking``.
    """
    template = getattr(tokenizer, "chat_template", None)
    if enable is None or not isinstance(template, str):
        return tokenizer
    if "enable_thinking" not in template:
        raise ValueError(f"enable_thinking is set but the chat template of "
                         f"{getattr(tokenizer, 'name_or_path', '?')!r} does not read it")
    pin = "{%- set enable_thinking = " + ("true" if enable else "false") + " -%}"
    tokenizer.chat_template = pin + template.split("-%}", 1)[1] if template.startswith("{%- set enable_thinking") \
        else pin + template
    return tokenizer
