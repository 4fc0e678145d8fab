"""Benchmark data: one :class:`Problem` record, loaders for GSM8K, MATH-500, MATH train and any JSONL.

Local files are read directly (the offline path); the Hub ids ``openai/gsm8k`` and
``HuggingFaceH4/MATH-500`` (and ``hendrycks/competition_math``-style ids) go through ``datasets``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tokenskip.io import DataError, iter_jsonl

BENCHMARKS = ("gsm8k", "math")
_BENCHMARK_ALIASES = {"gsm8k": "gsm8k", "math": "math", "math500": "math", "math-500": "math"}

HUB_IDS = {"gsm8k": "openai/gsm8k", "math": "HuggingFaceH4/MATH-500"}


@dataclass
class Problem:
    """One benchmark question.

    Attributes:
        id: stable identifier (``gsm8k/<file stem>/<row index>``, MATH's ``unique_id``...).
        question: problem text shown to the model.
        answer: gold final answer as a string (GSM8K: the number after ``####``, commas removed).
        solution: reference worked solution (GSM8K: calculator notes ``<<…>>`` removed); may be ``""``.
        meta: extra fields (level, subject...).
    """

    id: str
    question: str
    answer: str
    solution: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def canonical_benchmark(name: str) -> str:
    """``gsm8k`` or ``math`` for a benchmark name or alias (``math500``); raises ``ValueError`` otherwise."""
    try:
        return _BENCHMARK_ALIASES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(_BENCHMARK_ALIASES)}") from None


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


_CALC = re.compile(r"<<[^>]*>>")


def require_text(row: dict, key: str, path, lineno: int, nonempty: bool = False) -> str:
    """``row[key]`` as a string (numbers converted). Raises :class:`DataError` naming file, line and
    field when it is missing, not a string, or (``nonempty``) empty or only whitespace."""
    if key not in row:
        raise DataError(path, lineno, key, "missing")
    v = row[key]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str):
        raise DataError(path, lineno, key, f"expected a string, got {type(v).__name__}")
    if nonempty and not v.strip():
        raise DataError(path, lineno, key, "empty (expected a non-empty string)")
    return v


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


def load_jsonl_mapped(path, question: str, answer: str, solution: str | None = None, id_field: str | None = None,
                      answer_from: str = "field") -> list[Problem]:
    """Any JSONL with a field mapping.

    Args:
        path: JSONL file.
        question, answer, solution, id_field: field names in the file.
        answer_from: ``field`` (gold = that field as is), ``gsm8k`` (text after ``####``) or ``boxed``
            (last ``\\boxed{}`` of that field).
    Raises:
        DataError: a row lacks a mapped field.
    """
    out = []
    for idx, (lineno, row) in enumerate(iter_jsonl(path)):
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
        out.append(Problem(pid, q, a, sol))
    return out


def _load_file(path: str, benchmark: str) -> list[Problem]:
    parse: Callable = parse_gsm8k_row if benchmark == "gsm8k" else parse_math_row
    return [parse(row, path, lineno, idx) for idx, (lineno, row) in enumerate(iter_jsonl(path))]


def _load_hub(hub_id: str, benchmark: str, split: str | None) -> list[Problem]:
    from datasets import load_dataset

    if benchmark == "gsm8k":
        ds = load_dataset(hub_id, "main", split=split or "test")
        return [parse_gsm8k_row(dict(r), f"{hub_id}[{split or 'test'}]", i + 1, i) for i, r in enumerate(ds)]
    ds = load_dataset(hub_id, split=split or "test")
    return [parse_math_row(dict(r), f"{hub_id}[{split or 'test'}]", i + 1, i) for i, r in enumerate(ds)]


def load_problems(benchmark: str, data: str | None = None, split: str | None = None, limit: int | None = None,
                  offset: int = 0) -> list[Problem]:
    """Load a benchmark slice.

    Args:
        benchmark: ``gsm8k`` or ``math`` (alias ``math500``).
        data: a local JSONL file, or a Hub dataset id; default: the benchmark's Hub id.
        split: Hub split (``train``/``test``); ignored for local files.
        limit: keep at most this many problems (after ``offset``); ``None`` = all.
        offset: skip this many problems first.

    Raises:
        DataError: a malformed row (names file, line, field).
        FileNotFoundError: ``data`` looks like a path but does not exist.
    """
    bench = canonical_benchmark(benchmark)
    if offset < 0 or (limit is not None and limit < 0):
        raise ValueError("offset and limit must be >= 0")
    data = data or HUB_IDS[bench]
    if Path(data).exists():
        problems = _load_file(data, bench)
    elif data.endswith((".jsonl", ".json")) or data.startswith((".", "/")):
        raise FileNotFoundError(f"data file not found: {data}")
    else:
        problems = _load_hub(data, bench, split)
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(data, None, "id", f"duplicate problem id {dup!r}")
    end = None if limit is None else offset + limit
    return problems[offset:end]


def problems_by_id(problems: Iterable[Problem]) -> dict[str, Problem]:
    return {p.id: p for p in problems}
