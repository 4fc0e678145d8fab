"""Pruning a scored CoT to a compression ratio γ, measured in the target model's tokens.

γ = kept tokens ÷ original tokens, both counted with the *target* model's tokenizer over the whole
CoT (the reference counted GPT-3.5 tokens per 512-token chunk, so its ratio drifted; docs/method.md,
"Where this project differs"). Words are kept in their original order, highest importance first, and
the number of kept words is chosen so that the token count of the actually rebuilt text is nearest the budget
γ × original tokens (tokenization is not additive, so every candidate is re-tokenized): a binary
search over the count, then a fix-up that may swap the last word taken for one of the next
:data:`SWAP_WINDOW` in score order when that lands nearer the budget.

Protected spans (numbers, operators and ``=``, the final ``\\boxed{…}``, LaTeX commands with their
arguments, the numbers of the final answer line) are always kept and count toward the budget; when
they alone exceed it the result keeps only them and says so (``overshoot``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from tokenskip.compress.scorers import WordScores
from tokenskip.task.prompts import validate_ratio

#: Kinds of protected spans. ``answer`` = the numbers of the final answer line, a subset of ``numbers`` that
#: still applies when ``numbers`` is switched off. ``terms`` = the first mention in the CoT of each content word
#: of the question (see :func:`term_spans`); it needs the question and is off unless asked for. ``equations`` =
#: whole arithmetic statements ``a x b = c`` (see :func:`equation_spans`), kept or dropped as one unit.
PROTECT_KINDS = ("numbers", "operators", "boxed", "latex", "answer", "terms", "equations")

#: Words never counted as terms of the question (function words and the words of instructions).
_STOP_WORDS = frozenset("""
a an and are as at be but by can do does each for from give given has have her his how if in into is it its
let many me much of on or our she so than that the their them then there these they this those to total was
we were what when where which while who will with you your now find count list task one two three four five
""".split())

#: How many next-best words the budget fix-up may take in place of the last word kept.
SWAP_WINDOW = 6

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# An operator not glued to letters: keeps "48+24", "= 72", "3 - 1", but not the hyphen of "well-known".
# "x" counts as a times sign only between numbers ("0.2 x 50").
_OPERATOR = re.compile(r"(?<![A-Za-z])[-+*/=×÷<>^≤≥≠−](?![A-Za-z])|(?<=\d )x(?= \d)")
_NUM = _NUMBER.pattern
_EQUATION = re.compile(rf"(?<![\w.]){_NUM}(?:\s*(?:[-+*/×÷−]|(?<=\d )x(?= \d))\s*{_NUM})*\s*=\s*{_NUM}(?![\w])")
_LATEX_CMD = re.compile(r"\\(?:[A-Za-z]+|[()\[\]{}])")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _group_end(text: str, i: int) -> int:
    """End of the balanced ``{…}`` / ``[…]`` group starting at ``text[i]`` (or ``i`` if unbalanced)."""
    close = {"{": "}", "[": "]"}[text[i]]
    depth = 0
    for j in range(i, len(text)):
        if text[j] == text[i]:
            depth += 1
        elif text[j] == close:
            depth -= 1
            if depth == 0:
                return j + 1
    return i


def latex_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of LaTeX commands with their ``{…}``/``[…]`` arguments (``\\frac{a}{b}`` whole)."""
    out = []
    for m in _LATEX_CMD.finditer(text):
        end = m.end()
        while end < len(text) and text[end] in "{[":
            nxt = _group_end(text, end)
            if nxt == end:
                break
            end = nxt
        out.append((m.start(), end))
    return out


def boxed_span(text: str) -> tuple[int, int] | None:
    """Span of the last ``\\boxed{…}`` (braces balanced), or ``None``."""
    starts = [m for m in _BOXED.finditer(text)]
    for m in reversed(starts):
        end = _group_end(text, m.end() - 1)
        if end > m.end() - 1:
            return m.start(), end
    return None


def answer_line_span(text: str) -> tuple[int, int] | None:
    """Span of the final answer line: the line holding the last ``\\boxed{}``, else the last non-empty line."""
    box = boxed_span(text)
    if box is not None:
        s = text.rfind("\n", 0, box[0]) + 1
        e = text.find("\n", box[0])
        return s, (len(text) if e < 0 else e)
    lines = [m.span() for m in re.finditer(r"[^\n]*\S[^\n]*", text)]
    return lines[-1] if lines else None


def answer_numbers(text: str) -> list[str]:
    """The numbers the final answer line uses (commas dropped), in order of appearance."""
    span = answer_line_span(text)
    if span is None:
        return []
    return [m.group().replace(",", "").rstrip(".") for m in _NUMBER.finditer(text, *span)]


def answer_numbers_kept(original: str, compressed: str) -> bool:
    """True when every number of ``original``'s final answer line still occurs as a number in ``compressed``."""
    have = {m.group().replace(",", "").rstrip(".") for m in _NUMBER.finditer(compressed)}
    return all(n in have for n in answer_numbers(original))


def equation_spans(text: str) -> list[tuple[int, int]]:
    """Spans of arithmetic statements ``a op b … = c`` in plain text (``4 x 6 = 24``, ``24 + 12 = 36``, ``8 = 8``).

    Used whole: a preferred or protected equation is one unit, so pruning never leaves half of one (``2 x 12``
    for ``2 x 6 = 12``), and under ``prefer_kinds`` equations rank above the other preferred kinds. LaTeX is
    not parsed here (the ``latex`` kind covers it).
    """
    return [m.span() for m in _EQUATION.finditer(text)]


def _stem(word: str) -> str:
    """A word's lower-case form without a plural ending (``crabs`` → ``crab``, ``boxes`` → ``box``)."""
    w = word.lower()
    if len(w) > 4 and w.endswith(("ses", "xes", "zes", "ches", "shes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def term_spans(text: str, question: str) -> list[tuple[int, int]]:
    """Spans of the first mention in ``text`` of each content word of ``question``.

    A content word has ≥ 3 letters and is not in a short stop list; words match case- and plural-insensitively
    (``Crabs`` in the question, ``crab`` in the CoT). Only the first mention counts: later repeats are what
    a compressed CoT can drop, while the first names the entity the next numbers belong to (in the CPU lab,
    the animal whose leg count the model must recall). Not in the paper: an option of this project.
    """
    wanted = {_stem(w) for w in re.findall(r"[A-Za-z]{3,}", question)} - _STOP_WORDS
    out, seen = [], set()
    for m in re.finditer(r"[A-Za-z]{3,}", text):
        stem = _stem(m.group())
        if stem in wanted and stem not in seen:
            seen.add(stem)
            out.append(m.span())
    return out


def protected_spans(text: str, kinds=PROTECT_KINDS, question: str | None = None) -> list[tuple[int, int]]:
    """Character spans that must survive pruning, for the given kinds (see :data:`PROTECT_KINDS`);
    ``terms`` gives spans only when ``question`` is given.

    Raises:
        ValueError: an unknown kind.
    """
    unknown = set(kinds) - set(PROTECT_KINDS)
    if unknown:
        raise ValueError(f"unknown protected kind(s) {sorted(unknown)}; expected some of {list(PROTECT_KINDS)}")
    out: list[tuple[int, int]] = []
    if "numbers" in kinds:
        out += [m.span() for m in _NUMBER.finditer(text)]
    if "operators" in kinds:
        out += [m.span() for m in _OPERATOR.finditer(text)]
    if "latex" in kinds:
        out += latex_spans(text)
    if "boxed" in kinds and (box := boxed_span(text)) is not None:
        out.append(box)
    if "answer" in kinds and (line := answer_line_span(text)) is not None:
        out += [m.span() for m in _NUMBER.finditer(text, *line)]
    if "terms" in kinds and question:
        out += term_spans(text, question)
    if "equations" in kinds:
        out += equation_spans(text)
    return out


@dataclass
class CompressionResult:
    """One CoT pruned to one ratio.

    Attributes:
        text: the compressed CoT (kept words in original order, whitespace rebuilt).
        original_tokens: tokens of the whole original CoT (target tokenizer, no special tokens).
        kept_tokens: tokens of ``text`` (same tokenizer).
        achieved_ratio: kept_tokens ÷ original_tokens (1.0 for an empty CoT).
        ratio: the requested γ.
        scorer: name of the importance scorer.
        overshoot: the protected spans alone exceeded the budget γ × original_tokens, so fewer
            tokens could not be reached; only protected words were kept.
        words_kept, words_total: whitespace-separated words kept / in the original.
    """

    text: str
    original_tokens: int
    kept_tokens: int
    achieved_ratio: float
    ratio: float
    scorer: str
    overshoot: bool
    words_kept: int
    words_total: int

    def to_dict(self) -> dict:
        return asdict(self)


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text`` under ``tokenizer``, without special tokens."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


def rebuild(text: str, spans: list[tuple[int, int]], keep: list[bool], keep_newlines: bool = True) -> str:
    """The text of the kept words, in order, with the original whitespace between them.

    Between two words that were adjacent in ``text`` the original whitespace is kept. Where words
    were dropped in between: with ``keep_newlines`` the largest line break of the dropped stretch
    survives (so lines and paragraphs stay lines), else the whitespace before the kept word. Without
    ``keep_newlines`` every gap that holds a line break becomes one space.
    """
    idx = [i for i, k in enumerate(keep) if k]
    if not idx:
        return ""
    parts = [text[:spans[0][0]]] if idx[0] == 0 else []
    prev = None
    for i in idx:
        if prev is not None:
            runs = [text[spans[t][1]:spans[t + 1][0]] for t in range(prev, i)]
            breaks = [r for r in runs if "\n" in r]
            if len(runs) == 1:
                gap = runs[0]
            elif keep_newlines and breaks:
                gap = max(breaks, key=lambda r: r.count("\n"))
            else:
                gap = runs[-1]
            if not keep_newlines and "\n" in gap:
                gap = " "
            parts.append(gap)
        parts.append(text[spans[i][0]:spans[i][1]])
        prev = i
    if idx[-1] == len(spans) - 1:
        parts.append(text[spans[-1][1]:])
    return "".join(parts)


def _units(text: str, spans: list[tuple[int, int]], whole: list[tuple[int, int]]) -> list[list[int]]:
    """Group word indices so a span of ``whole`` (a LaTeX command, an equation) spanning several words is kept
    or dropped whole.

    One sweep over words and the ``whole`` spans sorted by start: O(words + spans), so a trace of
    thousands of words with hundreds of commands groups in linear time.
    """
    whole = sorted(whole)
    units: list[list[int]] = []
    cur_end, m = -1, 0
    for w, (s, e) in enumerate(spans):
        if units and s < cur_end:
            units[-1].append(w)
        else:
            units.append([w])
        while m < len(whole) and whole[m][0] < e:  # spans starting before this word ends touch it or an earlier one
            if whole[m][1] > s:
                cur_end = max(cur_end, whole[m][1])
            m += 1
    return units


def _overlaps(spans: list[tuple[int, int]], marks: list[tuple[int, int]]) -> list[bool]:
    """For each word span (in text order), whether any mark overlaps it; one sweep, O(words + marks)."""
    marks = sorted(marks)
    out, m, reach = [], 0, -1  # reach: the furthest end of the marks starting before the current word ends
    for s, e in spans:
        while m < len(marks) and marks[m][0] < e:
            reach = max(reach, marks[m][1])
            m += 1
        out.append(reach > s)
    return out


def _rank_units(scored: WordScores, protect: bool, protect_kinds, prefer_kinds,
                question: str | None = None) -> tuple[list, list[bool], list[int]]:
    """The keep-or-drop units of a scored CoT and their order: ``(units, protected, order)``.

    ``units`` are lists of word indices (a LaTeX command, or an equation when that kind is protected or
    preferred, spanning several words is one unit, see :func:`_units`); ``protected[j]`` says unit ``j`` holds a
    word of a protected span; ``order`` lists the other units best first: preferred equations, then units holding
    another preferred span, then all others; within each by mean word score (highest first), ties in text order.
    """
    text, spans, scores = scored.text, scored.spans, scored.scores
    n_words = len(spans)
    equations = "equations" in prefer_kinds or (protect and "equations" in protect_kinds)
    eq_spans = equation_spans(text) if equations else []
    units = _units(text, spans, latex_spans(text) + eq_spans)
    prot_words = (_overlaps(spans, protected_spans(text, protect_kinds, question)) if protect
                  else [False] * n_words)
    prot_units = [any(prot_words[w] for w in u) for u in units]
    unit_score = [sum(scores[w] for w in u) / len(u) for u in units]
    pref_words = (_overlaps(spans, protected_spans(text, prefer_kinds, question)) if prefer_kinds
                  else [False] * n_words)
    eq_words = _overlaps(spans, eq_spans) if "equations" in prefer_kinds else [False] * n_words
    tier = [0 if any(eq_words[w] for w in u) else 1 if any(pref_words[w] for w in u) else 2 for u in units]
    order = sorted((j for j in range(len(units)) if not prot_units[j]),
                   key=lambda j: (tier[j], -unit_score[j], j))
    return units, prot_units, order


class _Candidates:
    """The pruned versions of one CoT, rebuilt and counted on demand (memoized).

    Called with ``(k, swap)``: ``(text, target tokens, words kept)`` of the CoT keeping the protected units
    plus the ``k`` best units of ``order`` (see :func:`_rank_units`); ``swap`` replaces the k-th of them by
    ``order[swap]``.
    """

    def __init__(self, scored: WordScores, units: list, protected: list[bool], order: list[int], tokenizer,
                 keep_newlines: bool):
        self.scored, self.units, self.order = scored, units, order
        self.tokenizer, self.keep_newlines = tokenizer, keep_newlines
        self.protected_units = [j for j in range(len(units)) if protected[j]]
        self.cache: dict[tuple[int, int | None], tuple[str, int, int]] = {}

    def __call__(self, k: int, swap: int | None = None) -> tuple[str, int, int]:
        if (k, swap) not in self.cache:
            keep = [False] * len(self.scored.spans)
            chosen = self.protected_units + self.order[:k]
            if swap is not None:
                chosen[-1] = self.order[swap]
            for j in chosen:
                for w in self.units[j]:
                    keep[w] = True
            out = rebuild(self.scored.text, self.scored.spans, keep, self.keep_newlines)
            self.cache[(k, swap)] = (out, count_tokens(self.tokenizer, out), sum(keep))
        return self.cache[(k, swap)]


def _nearest_to_budget(candidate: _Candidates, budget: float) -> tuple[int, int | None]:
    """The ``(k, swap)`` of the candidate whose token count is nearest ``budget`` (γ × original tokens).

    A binary search finds the smallest ``k`` whose rebuilt text reaches the budget; then the counts
    around it are compared, and the last word taken may be swapped for one of the next
    :data:`SWAP_WINDOW` in score order whose token cost lands nearer the budget (word granularity: on a
    short CoT one word is ≈ 2-5 %). Ties go to no swap, then to fewer tokens.
    """
    n = len(candidate.order)
    lo, hi = 0, n  # smallest k whose rebuilt text reaches the budget
    while lo < hi:
        mid = (lo + hi) // 2
        if candidate(mid)[1] >= budget:
            hi = mid
        else:
            lo = mid + 1
    near = [(k, None) for k in (lo - 2, lo - 1, lo, lo + 1) if 0 <= k <= n]
    near += [(k, j) for k in (lo - 1, lo) if k >= 1 for j in range(k, min(n, k + SWAP_WINDOW))]
    return min(near, key=lambda c: (abs(candidate(*c)[1] - budget), c[1] is not None, candidate(*c)[1]))


def prune(scored: WordScores, ratios, tokenizer, scorer: str = "", protect: bool = True,
          protect_kinds=PROTECT_KINDS, keep_newlines: bool = True,
          prefer_kinds=(), question: str | None = None) -> list[CompressionResult]:
    """Prune one scored CoT to each γ in ``ratios``.

    Args:
        scored: words and importance scores of the CoT (from a :class:`~tokenskip.compress.scorers.Scorer`).
        ratios: one γ or a list of γ, each in (0, 1].
        tokenizer: the *target* model's tokenizer; all token counts use it.
        scorer: name recorded in the results.
        protect: keep protected spans (see :func:`protected_spans`) whatever their score.
        protect_kinds: which kinds of spans are protected (subset of :data:`PROTECT_KINDS`).
        keep_newlines: keep line breaks where words were dropped (see :func:`rebuild`).
        prefer_kinds: kinds of spans (see :data:`PROTECT_KINDS`) that are not protected but ranked
            above every other word: dropped only when the budget cannot hold them all (lowest score
            first), so they never cause an overshoot. E.g. ``protect_kinds=("answer", "boxed", "latex")``
            with ``prefer_kinds=("numbers", "operators")`` keeps the arithmetic whenever γ allows.
        question: the question the CoT answers; needed by the ``terms`` kind (ignored by the others).

    Returns:
        One :class:`CompressionResult` per γ, in the order given.

    Raises:
        ValueError: a γ outside (0, 1], or an unknown protected kind.
    """
    single = isinstance(ratios, (int, float, str))
    gammas = [validate_ratio(r) for r in ([ratios] if single else ratios)]
    text, n_words = scored.text, len(scored.spans)
    orig = count_tokens(tokenizer, text)
    if n_words == 0 or orig == 0:
        return [CompressionResult(text, orig, orig, 1.0, g, scorer, False, n_words, n_words) for g in gammas]
    units, protected, order = _rank_units(scored, protect, protect_kinds, prefer_kinds, question)
    candidate = _Candidates(scored, units, protected, order, tokenizer, keep_newlines)
    results = []
    for g in gammas:
        if g == 1.0:
            results.append(CompressionResult(text, orig, orig, 1.0, g, scorer, False, n_words, n_words))
            continue
        budget = g * orig
        overshoot = candidate(0)[1] > budget
        best = (0, None) if overshoot else _nearest_to_budget(candidate, budget)
        out, kept, words = candidate(*best)
        results.append(CompressionResult(out, orig, kept, kept / orig, g, scorer, overshoot, words, n_words))
    return results
