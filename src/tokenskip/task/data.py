"""Loading benchmark problems: local JSONL files (the offline path) or the Hub (through ``datasets``).

What a benchmark is (parser, grader, Hub id) lives in :mod:`tokenskip.task.benchmarks`; this module only
reads rows and hands them to the benchmark's parser.
"""

from __future__ import annotations

from pathlib import Path

from tokenskip.contract.io import DataError, iter_jsonl
from tokenskip.contract.records import Problem, require_text
from tokenskip.task.benchmarks import (
    Benchmark,
    get_benchmark,
    last_boxed,
    mapped_parser,
    parse_gsm8k_row,
    parse_math_row,
)

__all__ = ["Problem", "load_problems", "load_jsonl_mapped", "looks_like_path", "require_text", "last_boxed",
           "parse_gsm8k_row", "parse_math_row", "canonical_benchmark"]


def canonical_benchmark(name: str) -> str:
    """Canonical name of a benchmark or alias (``math500`` -> ``math``); raises ``ValueError`` otherwise."""
    from tokenskip.task.benchmarks import canonical_name

    return canonical_name(name)


def looks_like_path(data: str) -> bool:
    """Whether ``data`` names a local file (vs a Hub dataset id): it exists, ends in .jsonl/.json or
    starts with ``.`` or ``/``."""
    return Path(data).exists() or data.endswith((".jsonl", ".json")) or data.startswith((".", "/"))


def load_jsonl_mapped(path, question: str, answer: str, solution: str | None = None, id_field: str | None = None,
                      answer_from: str = "field") -> list[Problem]:
    """Any JSONL with a field mapping (see :func:`tokenskip.task.benchmarks.mapped_parser` for the arguments).

    Raises:
        DataError: a row lacks a mapped field.
    """
    parse = mapped_parser(question, answer, solution, id_field, answer_from)
    return [parse(row, path, lineno, idx) for idx, (lineno, row) in enumerate(iter_jsonl(path))]


def _load_hub(bench: Benchmark, hub_id: str, split: str | None) -> list[Problem]:
    from datasets import load_dataset

    split = split or bench.hub_split
    ds = load_dataset(hub_id, bench.hub_config, split=split) if bench.hub_config else load_dataset(hub_id, split=split)
    return [bench.parse_row(dict(r), f"{hub_id}[{split}]", i + 1, i) for i, r in enumerate(ds)]


def load_problems(benchmark: str | Benchmark, data: str | None = None, split: str | None = None,
                  limit: int | None = None, offset: int = 0) -> list[Problem]:
    """Load a benchmark slice.

    Args:
        benchmark: a :class:`~tokenskip.task.benchmarks.Benchmark` or a registered name (``gsm8k``, ``math``
            / ``math500``, ``math-train``).
        data: a local JSONL file, or a Hub dataset id; default: the benchmark's Hub id.
        split: Hub split (``train``/``test``; default the benchmark's); ignored for local files.
        limit: keep at most this many problems (after ``offset``); ``None`` = all.
        offset: skip this many problems first.

    Raises:
        DataError: a malformed row (names file, line, field), or a repeated problem id.
        FileNotFoundError: ``data`` looks like a path but does not exist.
        ValueError: unknown benchmark; a benchmark without a Hub id and no ``data``.
    """
    bench = benchmark if isinstance(benchmark, Benchmark) else get_benchmark(benchmark)
    if offset < 0 or (limit is not None and limit < 0):
        raise ValueError("offset and limit must be >= 0")
    data = data or bench.hub_id
    if not data:
        raise ValueError(f"benchmark {bench.name!r} has no Hub dataset: pass --data FILE.jsonl")
    if Path(data).exists():
        problems = [bench.parse_row(row, data, lineno, idx) for idx, (lineno, row) in enumerate(iter_jsonl(data))]
    elif looks_like_path(data):
        raise FileNotFoundError(f"data file not found: {data}")
    else:
        problems = _load_hub(bench, data, split)
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise DataError(data, None, "id", f"duplicate problem id {p.id!r}")
        seen.add(p.id)
    end = None if limit is None else offset + limit
    return problems[offset:end]
