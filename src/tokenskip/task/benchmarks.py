"""Benchmark registry: what a benchmark is, in one place.

A :class:`Benchmark` = name, aliases, display label, Hub id/config/split, a row parser (one JSON row ->
:class:`~tokenskip.contract.records.Problem`), a grader kind and the default ``max_new_tokens``. Nothing else in
the project branches on a benchmark's name: loaders call ``bench.parse_row``, grading takes
``bench.grader``, generation takes ``bench.max_new_tokens``.

Grader kinds (:mod:`tokenskip.task.grading`):

* ``numeric``  — the last number / boxed value, compared as a number (GSM8K);
* ``symbolic`` — LaTeX answers compared with math-verify (MATH);
* ``integer``  — an integer answer from 0 to 999, compared as an integer (AIME);
* ``choice``   — a choice letter A–D (GPQA-Diamond: the four choices shuffled per question, listed in the
  prompt).

Adding a benchmark is one :func:`register` call (see docs/development.md)::

    register(Benchmark("svamp", "SVAMP", grader="numeric", max_new_tokens=512,
                       parse_row=mapped_parser("Body", "Answer")))

The ``custom`` benchmark reads any local JSONL; its field names and grader kind are settings
(``--question-field``, ``--answer-field``, ``--grader``), see :func:`custom_benchmark`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from tokenskip.contract.io import DataError
from tokenskip.contract.records import Problem, require_text

GRADERS = ("numeric", "symbolic", "integer", "choice")
#: default max_new_tokens per grader kind, for benchmarks that do not set one (paper: 512 GSM8K, 1024 MATH;
#: AIME/GPQA are reasoning-model benchmarks: 32,768, the DeepSeek-R1 distills' evaluation length, model card)
GRADER_MAX_NEW_TOKENS = {"numeric": 512, "symbolic": 1024, "integer": 32768, "choice": 32768}
#: Choice letters of a ``choice`` benchmark, in prompt order.
CHOICE_LETTERS = "ABCD"
CUSTOM = "custom"

RowParser = Callable[[dict, object, int, int], Problem]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark.

    Attributes:
        name: canonical name; also the evaluation folder name (``evaluate/<name>/...``).
        label: display name in reports (``GSM8K``).
        grader: ``numeric``, ``symbolic``, ``integer`` or ``choice`` (module docstring).
        max_new_tokens: default cap on generated tokens (paper: 512 GSM8K, 1024 MATH).
        parse_row: ``(row, path, line, index) -> Problem``; raises :class:`~tokenskip.contract.io.DataError`.
        hub_id / hub_config / hub_split: the Hub dataset used when no ``--data`` is given.
        aliases: other accepted names.
    """

    name: str
    label: str
    grader: str
    max_new_tokens: int
    parse_row: RowParser
    hub_id: str | None = None
    hub_config: str | None = None
    hub_split: str = "test"
    aliases: tuple[str, ...] = ()


_REGISTRY: dict[str, Benchmark] = {}
_ALIASES: dict[str, str] = {}


def register(bench: Benchmark) -> Benchmark:
    """Add ``bench`` to the registry (its name and aliases become valid ``--benchmark`` values)."""
    if bench.grader not in GRADERS:
        raise ValueError(f"benchmark {bench.name!r}: grader must be one of {GRADERS}, got {bench.grader!r}")
    keys = [n.lower() for n in (bench.name, *bench.aliases)]
    for n in keys:
        if n == CUSTOM or (n in _ALIASES and _ALIASES[n] != bench.name):
            raise ValueError(f"benchmark name {n!r} is already taken by {_ALIASES.get(n, CUSTOM)!r}")
    _ALIASES.update(dict.fromkeys(keys, bench.name))
    _REGISTRY[bench.name] = bench
    return bench


def names() -> list[str]:
    """Every accepted ``--benchmark`` value (names and aliases, plus ``custom``), sorted."""
    return sorted({*_ALIASES, CUSTOM})


def get_benchmark(name: str, question_field: str | None = None, answer_field: str | None = None,
                  grader: str | None = None) -> Benchmark:
    """The benchmark called ``name`` (or an alias); ``custom`` is built from the three settings.

    ``grader`` (optional) overrides a registered benchmark's grader kind.

    Raises:
        ValueError: unknown name or grader kind; field settings given for a registered benchmark;
            ``custom`` without a grader kind.
    """
    key = str(name).lower()
    if key == CUSTOM:
        return custom_benchmark(question_field or "question", answer_field or "answer", grader)
    if key not in _ALIASES:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {names()}")
    if question_field or answer_field:
        raise ValueError("--question-field / --answer-field apply to --benchmark custom only")
    bench = _REGISTRY[_ALIASES[key]]
    if grader:
        _check_grader(grader)
        bench = replace(bench, grader=grader)
    return bench


def canonical_name(name: str) -> str:
    """Canonical name for a benchmark name or alias (``math500`` -> ``math``). Raises ``ValueError``."""
    key = str(name).lower()
    if key == CUSTOM:
        return CUSTOM
    if key not in _ALIASES:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {names()}")
    return _ALIASES[key]


def grader_kind(benchmark_or_kind: str) -> str:
    """The grader kind (:data:`GRADERS`) of a grader kind or a registered benchmark name / alias.

    Raises:
        ValueError: neither a grader kind nor a registered benchmark.
    """
    key = str(benchmark_or_kind).lower()
    if key in GRADERS:
        return key
    if key in _ALIASES:
        return _REGISTRY[_ALIASES[key]].grader
    raise ValueError(f"unknown benchmark or grader {benchmark_or_kind!r}; expected a grader kind {list(GRADERS)} "
                     f"or a benchmark {sorted(_ALIASES)}")


def _check_grader(grader: str | None) -> str:
    if grader not in GRADERS:
        raise ValueError(f"--grader must be one of {list(GRADERS)}, got {grader!r}")
    return grader


# ------------------------------------------------------------------------------------- row parsers

_CALC = re.compile(r"<<[^>]*>>")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` (or ``\\fbox{…}``) in ``text``, nested braces handled; ``None`` if absent."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text):
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
            i += 1
    m = list(re.finditer(r"\\boxed ([^\s$]+)", text))  # "\boxed 5" form
    return m[-1].group(1) if m else None


def parse_gsm8k_row(row: dict, path, lineno: int, idx: int) -> Problem:
    """One OpenAI GSM8K row (``question``, ``answer`` ending in ``#### N``) as a :class:`Problem`."""
    q = require_text(row, "question", path, lineno, nonempty=True)
    a = require_text(row, "answer", path, lineno, nonempty=True)
    if "####" not in a:
        raise DataError(path, lineno, "answer", "expected the GSM8K format ending in '#### <number>'")
    sol, gold = a.rsplit("####", 1)
    gold = gold.strip().replace(",", "")
    if not gold:
        raise DataError(path, lineno, "answer", "empty gold answer after '####'")
    return Problem(id=str(row.get("id", f"gsm8k/{Path(str(path)).stem}/{idx}")), question=q, answer=gold,
                   solution=_CALC.sub("", sol).strip())


def parse_math_row(row: dict, path, lineno: int, idx: int) -> Problem:
    """A MATH-500 row (``problem``, ``solution``, ``answer``...) or a Hendrycks MATH row (gold = last boxed)."""
    q = require_text(row, "problem", path, lineno, nonempty=True)
    sol = row.get("solution") or ""
    if not isinstance(sol, str):
        raise DataError(path, lineno, "solution", "expected a string")
    if "answer" in row:
        ans = require_text(row, "answer", path, lineno, nonempty=True)
    else:
        ans = last_boxed(sol)
        if ans is None:
            raise DataError(path, lineno, "solution", "no 'answer' field and no \\boxed{} in the solution")
    meta = {k: row[k] for k in ("level", "type", "subject") if k in row}
    pid = row.get("unique_id") or row.get("id") or f"math/{Path(str(path)).stem}/{idx}"
    return Problem(id=str(pid), question=q, answer=ans.strip(), solution=sol, meta=meta)


def mapped_parser(question: str, answer: str, solution: str | None = None, id_field: str | None = "id",
                  answer_from: str = "field") -> RowParser:
    """A row parser for any JSONL given its field names.

    Args:
        question, answer, solution, id_field: field names in the file (``id_field`` absent from a row:
            the id is ``<file stem>/<row index>``).
        answer_from: ``field`` (gold = that field as is), ``gsm8k`` (text after ``####``) or ``boxed``
            (last ``\\boxed{}`` of that field).
    """
    if answer_from not in ("field", "gsm8k", "boxed"):
        raise ValueError(f"answer_from must be field, gsm8k or boxed, got {answer_from!r}")

    def parse(row: dict, path, lineno: int, idx: int) -> Problem:
        q = require_text(row, question, path, lineno, nonempty=True)
        a = require_text(row, answer, path, lineno, nonempty=True)
        sol = require_text(row, solution, path, lineno) if solution else ""
        if answer_from == "gsm8k":
            if "####" not in a:
                raise DataError(path, lineno, answer, "no '####' in the answer")
            sol, a = a.rsplit("####", 1)
            sol, a = _CALC.sub("", sol).strip(), a.strip().replace(",", "")
        elif answer_from == "boxed":
            b = last_boxed(a)
            if b is None:
                raise DataError(path, lineno, answer, "no \\boxed{} found")
            sol, a = a, b
        pid = str(row[id_field]) if id_field and id_field in row else f"{Path(str(path)).stem}/{idx}"
        return Problem(pid, q, a, sol)

    return parse


def parse_aime_row(row: dict, path, lineno: int, idx: int) -> Problem:
    """An AIME row (``problem`` or ``question``, ``answer``: an integer 0–999; ``id`` optional) as a
    :class:`Problem`; gold = the integer without leading zeros."""
    q = require_text(row, "problem" if "problem" in row else "question", path, lineno, nonempty=True)
    raw = row.get("answer")
    text = str(raw).strip() if isinstance(raw, (str, int)) and not isinstance(raw, bool) else ""
    if not re.fullmatch(r"\d{1,3}", text):
        raise DataError(path, lineno, "answer", f"expected an AIME answer, an integer from 0 to 999, got {raw!r}")
    sol = row.get("solution") if isinstance(row.get("solution"), str) else ""
    pid = row.get("id", row.get("problem_idx"))
    return Problem(id=str(pid) if pid is not None else f"aime/{Path(str(path)).stem}/{idx}", question=q,
                   answer=str(int(text)), solution=sol)


def shuffled_choices(key: str, correct: str, wrong: list[str]) -> tuple[list[str], str]:
    """The four choices of a question in a deterministic shuffled order and the correct one's letter.

    The order depends only on ``key`` (the question's id or text) through SHA-256, so it is the same on
    every machine and run (Python's ``hash`` is salted per process).
    """
    import hashlib
    import random

    order = [correct, *wrong]
    random.Random(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16)).shuffle(order)
    return order, CHOICE_LETTERS[order.index(correct)]


def parse_gpqa_row(row: dict, path, lineno: int, idx: int) -> Problem:
    """A GPQA row (``Question``, ``Correct Answer``, ``Incorrect Answer 1``…``3``, ``Record ID`` optional) as a
    :class:`Problem`: the question followed by the choices ``A) …``…``D) …`` in a shuffled order fixed per
    question (:func:`shuffled_choices`); gold = the correct choice's letter."""
    q = require_text(row, "Question", path, lineno, nonempty=True).strip()
    correct = require_text(row, "Correct Answer", path, lineno, nonempty=True).strip()
    wrong = [require_text(row, f"Incorrect Answer {k}", path, lineno, nonempty=True).strip() for k in (1, 2, 3)]
    pid = str(row.get("Record ID") or row.get("id") or f"gpqa/{Path(str(path)).stem}/{idx}")
    order, letter = shuffled_choices(pid + "\x00" + q, correct, wrong)
    listing = "\n".join(f"{c}) {t}" for c, t in zip(CHOICE_LETTERS, order))
    meta = {"choices": order, **{k: row[k] for k in ("High-level domain", "Subdomain") if k in row}}
    return Problem(id=pid, question=f"{q}\n\n{listing}", answer=letter,
                   solution=row.get("Explanation") if isinstance(row.get("Explanation"), str) else "", meta=meta)


def custom_benchmark(question_field: str = "question", answer_field: str = "answer",
                     grader: str | None = None) -> Benchmark:
    """The ``custom`` benchmark: a local JSONL whose question / answer field names and grader kind are given.

    Rows keep an ``id`` field when they have one, else get ``<file stem>/<row index>``.

    Raises:
        ValueError: ``grader`` is not one of :data:`GRADERS`.
    """
    if grader is None:
        raise ValueError("--benchmark custom needs --grader numeric (numbers, as GSM8K), symbolic (LaTeX, as MATH), "
                         "integer (0-999, as AIME) or choice (a letter A-D, as GPQA)")
    _check_grader(grader)
    return Benchmark(CUSTOM, "Custom", grader, GRADER_MAX_NEW_TOKENS[grader],
                     mapped_parser(question_field, answer_field), hub_id=None)


# ------------------------------------------------------------------------------------- the registry

GSM8K = register(Benchmark("gsm8k", "GSM8K", "numeric", 512, parse_gsm8k_row, hub_id="openai/gsm8k",
                           hub_config="main", hub_split="test"))
MATH500 = register(Benchmark("math", "MATH-500", "symbolic", 1024, parse_math_row,
                             hub_id="HuggingFaceH4/MATH-500", hub_split="test", aliases=("math500", "math-500")))
MATH_TRAIN = register(Benchmark("math-train", "MATH (train)", "symbolic", 1024, parse_math_row,
                                hub_id="hendrycks/competition_math", hub_split="train"))
# Reasoning-model benchmarks (issue 24): sampled decoding and pass@1 over n samples is their convention
# (evaluate --samples N --temperature 0.6 --top-p 0.95, docs/reasoning.md).
AIME2024 = register(Benchmark("aime2024", "AIME 2024", "integer", 32768, parse_aime_row,
                              hub_id="HuggingFaceH4/aime_2024", hub_split="train", aliases=("aime24", "aime-2024")))
AIME2025 = register(Benchmark("aime2025", "AIME 2025", "integer", 32768, parse_aime_row,
                              hub_id="math-ai/aime25", hub_split="test", aliases=("aime25", "aime-2025")))
GPQA_DIAMOND = register(Benchmark("gpqa-diamond", "GPQA-Diamond", "choice", 32768, parse_gpqa_row,
                                  hub_id="Idavidrein/gpqa", hub_config="gpqa_diamond", hub_split="train",
                                  aliases=("gpqa", "gpqa_diamond")))
