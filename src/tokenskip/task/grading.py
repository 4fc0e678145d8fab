"""Grading: pull the final answer out of a CoT and decide whether it matches the gold answer.

* Extraction (both benchmarks): the last ``\\boxed{…}`` (nested braces handled; boxes written one
  after the other, ``$\\boxed{2}$ and $\\boxed{3}$``, give ``2, 3``), else the text after the last
  "The final answer is" / "the answer is" / "Final answer:" (one line; ``$…$`` with escaped ``\\$``
  inside, markdown ``**bold**`` and the closing period removed), else — GSM8K only — the last number.
  A think-model output (``<think>…</think>`` answer) is graded on the text after ``</think>`` only; one
  that never closes its block is wrong (:func:`split_output`, :mod:`tokenskip.task.think`).
* GSM8K: exact numeric equality after removing ``$``, thousands commas, ``%``, units and LaTeX
  wrappers (``18`` = ``18.0`` = ``$18`` = ``18 dollars`` = ``1,800``/``1800``; ``3/4`` = ``0.75``).
  From an answer statement the value is its first number, so units and explanations after it do not
  count (``18 (9 x 2)`` → 18), unless the statement opens with a computation, which gives its result
  (``20 - 2 = 18`` → 18). Unlike the reference code (which grades GSM8K with its MATH grader), a
  prediction equal to gold/100 or gold×100 is *not* accepted: ``0.18`` ≠ ``18``.
* MATH / MATH-500: symbolic equivalence with ``math-verify`` (fractions, intervals, tuples, ``x=3``
  vs ``3``, ``\\text{}`` units, degrees); a choice label before a value (``\\textbf{(B) }7``) may match
  either. math-verify compares numbers at float precision (it says ``\\frac{1}{2^{98}}`` =
  ``\\frac{1}{2^{99}}``), so when both answers are plain numbers its "equal" is checked again: exact
  equality for rationals, 50-digit evaluation for other exact numbers, and a decimal the model wrote
  must equal the exact value rounded to the decimals written.

* AIME (``integer``): extraction as GSM8K; the answer must be an integer from 0 to 999 (``033`` = 33,
  ``33.0`` = 33; ``33.5``, ``1000`` or ``-3`` are wrong) equal to the gold integer.
* GPQA (``choice``): the letter A–D of the last ``\\boxed{…}`` (``B``, ``(B)``, ``\\text{B}``, ``B) text``),
  else of the last "answer is (B)" / "Answer: B" statement; compared with the gold letter.

Every math-verify comparison runs in a child process under a hard wall-clock limit
(:mod:`tokenskip.task.verifier`): on timeout the answer counts as incorrect and a warning is logged.
Answers equal after light normalization (:func:`tokenskip.task.normalize.light_latex`), or both plain
decimals, are decided in process without a child.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from tokenskip.task.benchmarks import grader_kind, last_boxed
from tokenskip.task.normalize import PLAIN_DECIMAL, light_latex
from tokenskip.task.verifier import DEFAULT_TIMEOUT_S, default_pool

#: Relative tolerance for GSM8K numeric equality, so 1/3 = 0.333333 (rounding only; 0.18 ≠ 18).
GSM8K_REL_TOL = 1e-6

_FINAL_PHRASE = re.compile(r"final\s+answer\s*:|(?:the\s+)?(?:final\s+)?answer\s+is\b\s*:?", re.IGNORECASE)


@dataclass
class Grade:
    """Result of grading one model output.

    Attributes:
        answer: extracted final answer (``None`` when nothing could be extracted).
        correct: whether ``answer`` matches the gold answer.
        cot: the CoT part of the output (see :func:`split_cot`); CoT tokens are counted on this.
        think_closed: think format only: whether the output closed its think block (``None``: plain output).
    """

    answer: str | None
    correct: bool
    cot: str
    think_closed: bool | None = None


# ----------------------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class CotSplit:
    """A model output split into its CoT and the part graded.

    Attributes:
        cot: the CoT (CoT tokens and ActRatio count it; compress prunes it).
        answer: the text answers are extracted from: the whole output in the plain format (the lenient
            phrase search needs no split), the text after ``</think>`` in the think format.
        think_closed: think format only: whether the block was closed (``None`` for a plain output).
    """

    cot: str
    answer: str
    think_closed: bool | None = None


def split_output(text: str, cot_format: str = "auto") -> CotSplit:
    """Split a model output in the CoT format ``cot_format`` (:data:`tokenskip.task.think.COT_FORMATS`).

    ``plain``: the CoT is the text before the first literal :data:`~tokenskip.task.prompts.COT_SPLIT`
    (``"\\n\\nThe final answer is:"``), or the whole text, unstripped — the reference's split
    (``output.split("\\n\\nThe final answer is:")[0]``), so CoT token counts, ActRatio and SFT targets match
    the paper's; a sentence such as "so the final answer is 18." stays in the CoT.
    ``think``: the CoT is the think block's content and the graded part what follows ``</think>``
    (:func:`tokenskip.task.think.split_think`). ``auto``: ``think`` when the output holds a block, else ``plain``.

    Raises:
        ValueError: an unknown ``cot_format``.
    """
    from tokenskip.task.prompts import COT_SPLIT
    from tokenskip.task.think import has_block, split_think, validate_cot_format

    validate_cot_format(cot_format)
    if cot_format == "think" or (cot_format == "auto" and has_block(text)):
        parts = split_think(text)
        return CotSplit(parts.cot, parts.answer, parts.closed)
    # an output that opens with the answer line (nocot) has no CoT at all
    return CotSplit(("\n\n" + text).split(COT_SPLIT, 1)[0][2:], text)


def split_cot(text: str, cot_format: str = "auto") -> str:
    """The CoT part of a model output (see :func:`split_output`): the text before "The final answer is:" of a
    plain output, the think block's content of a think output."""
    return split_output(text, cot_format).cot


def _find_unescaped(s: str, token: str, start: int) -> int:
    """Index of the first ``token`` in ``s`` from ``start`` not escaped by a backslash (``\\$`` is a dollar
    sign, not a math delimiter); -1 when there is none."""
    i = s.find(token, start)
    while i > 0 and s[i - 1] == "\\":
        i = s.find(token, i + 1)
    return i


def _answer_after_phrase(rest: str) -> str | None:
    """The answer written right after a "final answer is" phrase: one line, markdown bold, math
    delimiters and the closing period removed (``$\\frac{1}{2}$.`` → ``\\frac{1}{2}``, ``$18`` → ``18``,
    ``$\\$18.90$`` → ``\\$18.90``, ``**1/2**.`` → ``1/2``)."""
    s = rest.strip().split("\n", 1)[0].replace("**", "").strip()
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(open_):
            end = _find_unescaped(s, close, len(open_))
            # no closing delimiter: a currency sign ("the answer is $18.")
            s = s[len(open_): end] if end >= 0 else s[len(open_):]
            break
    else:
        m = re.search(r"\.(?:\s|$)", s)  # end of the sentence; "3.5" has no space after its dot
        if m:
            s = s[: m.start()]
    s = s.strip().rstrip(".,;:").strip()
    return s or None


def _gsm8k_numbers(text: str) -> list[str]:
    """Every number in ``text`` after GSM8K clean-up, as strings like ``-3``, ``1800``, ``0.75``, ``3/4``."""
    s = text.replace("\u2212", "-").replace("\u2013", "-")
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}", r" \1 ", s)
    s = re.sub(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*([\d.,]+)\s*\}", r"\1/\2", s)
    s = re.sub(r"\\[dt]?frac(\d)(\d)", r"\1/\2", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", " ", s)
    s = re.sub(r"(?<=[A-Za-z}])\s*\^\s*\{?\d+\}?|[²³]", " ", s)  # unit exponents: "18 m^2" is 18, not 2
    s = re.sub(r"\\[,;:! ]|\\\$|\\%|[$%~]", "", s)  # thin spaces glue digits ("1\,800"), so drop them
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators
    # a minus sign right after a word or ")" is subtraction, not a sign: "5-3" -> 5, 3
    return re.findall(r"(?<![\w).])-?(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+(?:\.\d+)?)?", s)


def _to_fraction(num: str) -> Fraction | None:
    try:
        if "/" in num:
            a, b = num.split("/", 1)
            return Fraction(a) / Fraction(b)
        return Fraction(num)
    except (ValueError, ZeroDivisionError):
        return None


_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
#: What may stand between boxes that together state one answer: spaces, ``$``, commas, "and", ``\\quad``.
_BOX_GAP = re.compile(r"(?:\s|\$|,|;|&|\band\b|\\q?quad\b|\\text\s*\{\s*(?:and|,)?\s*\})*")


def final_boxes(text: str) -> list[str]:
    """Contents of the boxes that state the final answer: the last ``\\boxed{…}``/``\\fbox{…}`` plus the
    boxes right before it separated only by spaces, ``$``, commas or "and" (``$\\boxed{2}$ and
    $\\boxed{3}$`` → ``["2", "3"]``; ``first \\boxed{5}, then \\boxed{7}`` → ``["7"]``: a later box
    revises an earlier one). Empty boxes are skipped; ``[]`` when there is none."""
    spans = []  # (start of "\\boxed", end after "}", content)
    for m in _BOX_START.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0 and text[m.end():i - 1].strip():
            spans.append((m.start(), i, text[m.end():i - 1].strip()))
    spans = [sp for k, sp in enumerate(spans) if not (k and sp[0] < spans[k - 1][1])]  # nested boxes: outer only
    if not spans:
        return []
    group = [spans[-1]]
    for sp in reversed(spans[:-1]):
        if not _BOX_GAP.fullmatch(text[sp[1]:group[0][0]]):
            break
        group.insert(0, sp)
    return [c for _, _, c in group]


def extract_answer(text: str, benchmark: str) -> str | None:
    """The final answer in a model output.

    Order: content of the last ``\\boxed{…}`` (several adjacent boxes joined by ``", "``, see
    :func:`final_boxes`); else the text after the last "The final answer is" / "the answer is" /
    "Final answer:" (one line; ``$…$``, ``**bold**`` and the closing period removed); else, for GSM8K
    only, the last number in the text.

    Args:
        text: full model output (CoT + answer).
        benchmark: a grader kind (``numeric``, ``symbolic``, ``integer``, ``choice``) or a benchmark name
            (``gsm8k``, ``math``, ``aime2024``, ``gpqa-diamond``...;
            see :mod:`tokenskip.task.benchmarks`).
    Returns:
        The answer string, or ``None`` when nothing is found.
    Raises:
        ValueError: unknown benchmark or grader kind.
    """
    kind = grader_kind(benchmark)
    if kind == "choice":
        return extract_choice(text)
    boxes = final_boxes(text)
    if boxes:
        return ", ".join(boxes)
    boxed = last_boxed(text)  # the brace-less "\\boxed 5" form
    if boxed:
        return boxed
    phrases = list(_FINAL_PHRASE.finditer(text))
    if phrases:
        ans = _answer_after_phrase(text[phrases[-1].end():])
        if ans:
            return ans
    if kind in ("numeric", "integer"):
        nums = _gsm8k_numbers(text)
        return nums[-1] if nums else None
    return None


#: A choice letter standing alone, maybe wrapped: ``B``, ``(B)``, ``\text{B}``, ``\textbf{(B)}``, ``B)``, ``B.``.
_LETTER = re.compile(r"^\s*(?:\\text(?:bf|rm)?\s*\{\s*)?\(?\s*(?P<l>[A-Da-d])\s*\)?\s*\}?(?:[).:]|\s|$)")
#: "the answer is (B)", "Answer: B", "final answer: **C**" (the last one counts).
_LETTER_STATEMENT = re.compile(r"(?i:answer\s*(?:is|:))\s*[*$\s]*(?:\\boxed\{)?(?:\\text(?:bf)?\{)?\(?"
                               r"(?P<l>[A-D])(?![A-Za-z])\)?")  # the letter in capitals: "the answer is a" is no choice


def extract_choice(text: str) -> str | None:
    """The choice letter (``A``…``D``, upper case) a model output ends with: the last ``\\boxed{…}`` whose
    content starts with a letter standing alone, else the last "answer is (X)" / "Answer: X" statement;
    ``None`` when neither is found."""
    box = last_boxed(text)
    if box is not None:
        m = _LETTER.match(box)
        if m:
            return m.group("l").upper()
    found = list(_LETTER_STATEMENT.finditer(text))
    return found[-1].group("l").upper() if found else None


def _integer_match(pred: str, gold: str) -> bool:
    """AIME: ``pred``'s value (:func:`_gsm8k_value`) is an integer from 0 to 999 equal to ``gold``'s."""
    p, g = _gsm8k_value(pred), _gsm8k_value(gold)
    return p is not None and g is not None and p.denominator == 1 and 0 <= p <= 999 and p == g


# ----------------------------------------------------------------------------------------- comparison


#: The leading arithmetic of an answer statement: numbers, operators, "=", currency and LaTeX operators.
_LEADING_MATH = re.compile(r"(?:[\s$\d.,+\-\u2212\u2013*/\u00d7\u00f7\u00b7=\u2248():%^{}]|(?<![A-Za-z])x(?![A-Za-z])"
                           r"|\\(?:times|cdot|div|[dt]?frac|left|right|approx|\$|%|[,;:! ]))*")
_EQUALS = re.compile(r"=|\u2248|\\approx")


def _gsm8k_value(answer: str) -> Fraction | None:
    """The value an answer statement gives: the result of a leading computation (``20 - 2 = 18 apples``
    → 18), else its first number, so units and explanations after it do not count (``18 (9 x 2)`` →
    18, ``18 dollars per day, from 9 eggs at $2 each`` → 18). A statement that does not open with a
    number (``x = 18``, ``\\text{18 cookies}``) is read whole by the same rule."""
    head = _LEADING_MATH.match(answer).group(0)
    if not re.search(r"\d", head):
        head = answer
    parts = _EQUALS.split(head)
    for part in reversed(parts):  # the result: the last side of the equation that holds a number
        nums = _gsm8k_numbers(part)
        if nums:
            return _to_fraction(nums[0])
    return None


def _gsm8k_match(pred: str, gold: str) -> bool:
    g = _gsm8k_value(gold)
    if g is None:  # non-numeric gold (a custom JSONL): plain text equality
        return light_latex(pred) == light_latex(gold)
    p = _gsm8k_value(pred)
    if p is None:
        return False
    return p == g or abs(p - g) <= Fraction(GSM8K_REL_TOL) * max(1, abs(g))


def _math_fast(pred: str, gold: str) -> bool | None:
    """Decide without math-verify when that is safe; ``None`` = needs math-verify."""
    p, g = light_latex(pred), light_latex(gold)
    if p == g and p:
        return True
    if PLAIN_DECIMAL.fullmatch(p) and PLAIN_DECIMAL.fullmatch(g):
        return Fraction(p) == Fraction(g)
    return None


def answers_match(pred: str, gold: str, benchmark: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether an already-extracted answer ``pred`` equals ``gold``.

    Args:
        pred: extracted answer (see :func:`extract_answer`).
        gold: gold answer string (GSM8K: a number; MATH: LaTeX without ``$``).
        benchmark: a grader kind (``numeric``, ``symbolic``, ``integer``, ``choice``) or a benchmark name.
        timeout_s: MATH only: wall-clock limit for the math-verify comparison, seconds. On timeout the
            answer counts as incorrect and a warning is logged.
    Raises:
        ValueError: unknown benchmark or grader kind.
        GradingError: the math-verify child process cannot start (e.g. math-verify not installed).
    """
    kind = grader_kind(benchmark)
    if not pred or not pred.strip():
        return False
    if kind == "numeric":
        return _gsm8k_match(pred, gold)
    if kind == "integer":
        return _integer_match(pred, gold)
    if kind == "choice":
        m = _LETTER.match(pred)
        return m is not None and m.group("l").upper() == gold.strip().upper()
    choice = _CHOICE.fullmatch(pred.strip())
    if choice and choice.group("value").strip():  # "\\textbf{(B) }7": the label or the value may be the gold
        label = next(g for g in choice.group("a", "b", "c") if g)
        return any(_math_match(c, gold, timeout_s) for c in (choice.group("value").strip(), f"({label})"))
    return _math_match(pred, gold, timeout_s)


#: A multiple-choice label before a value: ``\\textbf{(B) }7``, ``\\text{(B)} 7``, ``(B) 7``.
_CHOICE = re.compile(r"\s*(?:\\text(?:bf|rm)?\s*\{\s*\((?P<a>[A-E])\)\s*\}|\((?P<b>[A-E])\)|(?P<c>[A-E])\))"
                     r"\s*(?P<value>.*)",
                     re.DOTALL)


def _math_match(pred: str, gold: str, timeout_s: float) -> bool:
    fast = _math_fast(pred, gold)
    if fast is not None:
        return fast
    return bool(default_pool().compare(gold, pred, timeout_s))


def grade(prediction_text: str, gold: str, benchmark: str, timeout_s: float = DEFAULT_TIMEOUT_S,
          cot_format: str = "auto") -> Grade:
    """Extract the answer from a model output and compare it to ``gold`` (see :func:`answers_match`).

    Only the graded part of the output is read (:func:`split_output`): in the think format the text after
    ``</think>``, so a number in the reasoning is never taken for the answer, and an output whose block is
    never closed has no answer (``answer`` ``None``, incorrect, ``think_closed`` ``False``).
    """
    parts = split_output(prediction_text, cot_format)
    answer = extract_answer(parts.answer, benchmark) if parts.think_closed is not False else None
    correct = answer is not None and answers_match(answer, gold, benchmark, timeout_s=timeout_s)
    return Grade(answer=answer, correct=correct, cot=parts.cot, think_closed=parts.think_closed)


def is_correct(prediction_text: str, gold: str, benchmark: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether the full model output ``prediction_text`` ends in the gold answer.

    Extraction as in :func:`extract_answer`, comparison as in :func:`answers_match`; no answer found
    counts as incorrect.
    """
    return grade(prediction_text, gold, benchmark, timeout_s=timeout_s).correct
