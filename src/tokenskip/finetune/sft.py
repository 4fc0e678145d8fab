"""SFT records of TokenSkip (paper step 4), the pure core: trajectories, γ draws, prompt/completion
records and the reader of a compressed folder. The stage runner is :mod:`tokenskip.stages.build_sft`."""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tokenskip.contract.io import (
    DataError,
    iter_jsonl,
)
from tokenskip.contract.layout import (
    SOURCE,
    compressed_file,
    compressed_ratios,
)
from tokenskip.contract.ratios import format_ratio, paper_grid
from tokenskip.contract.records import CompressedCot, SFTExample, SourceCot
from tokenskip.task.prompts import DEFAULT_MARKER_DELIMITER, answer_line, styled_prompt
from tokenskip.task.think import has_block, split_think, think_completion

logger = logging.getLogger(__name__)

#: The paper's ratio set (docs/method.md step 4).
PAPER_RATIOS = paper_grid()
COT_SOURCES = ("self", "gold", "both")
#: When the answer line is appended to an SFT target (see :func:`completion_for`).
ANSWER_LINE_MODES = ("always", "if-missing")
_ENDS_WITH_ANSWER = re.compile(r"\\boxed\s*\{|^\s*####\s*\S")


@dataclass
class Trajectory:
    """One training question with its CoT at every γ available for it.

    Attributes:
        id: row id in the SFT data (the problem id, or a sampled CoT's ``<id>#s<k>``; suffixed ``#self``/``#gold``
            with ``--cot-source both``).
        group: the problem id (the validation split never separates two trajectories of one question).
        question, answer: problem text and final answer.
        cots: γ -> CoT text; always has 1.0 (the uncompressed CoT).
        think_answer: a think-format trajectory: the text the model wrote after ``</think>`` (``""``: none known,
            the answer line stands in); its targets keep the tags (:func:`tokenskip.task.think.think_completion`).
            ``None``: a plain CoT.
    """

    id: str
    group: str
    question: str
    answer: str
    cots: dict[float, str]
    think_answer: str | None = None


# ---------------------------------------------------------------- pure core

def available_ratios(folder: str | Path) -> list[float]:
    """1.0 plus every γ that has a ``ratio-<γ>.jsonl`` in the compress folder, largest first."""
    return sorted({1.0, *compressed_ratios(folder)}, reverse=True)


def draw_ratio(traj_id: str, ratios: list[float], seed: int) -> float:
    """One γ drawn uniformly from ``ratios`` for the trajectory ``traj_id``.

    Each id gets its own generator seeded with ``"<seed>:<id>"`` (``random.Random`` hashes string seeds
    with SHA-512, so this is stable across processes and Python runs), so the draw of a trajectory does not
    depend on which others are in the set (``--limit`` or a new source does not reshuffle everyone).
    """
    if not ratios:
        raise ValueError("draw_ratio: no ratio to draw from")
    return random.Random(f"{seed}:{traj_id}").choice(sorted(ratios, reverse=True))


def draw_ratios(traj_id: str, ratios: list[float], seed: int, k: int) -> list[float]:
    """``k`` distinct γ drawn uniformly from ``ratios`` for ``traj_id`` (all of them when ``k`` ≥ their number).

    ``k = 1`` is :func:`draw_ratio` (the paper's one γ per trajectory), so that mixture is unchanged.
    """
    if k <= 1:
        return [draw_ratio(traj_id, ratios, seed)]
    pool = sorted(ratios, reverse=True)
    return sorted(random.Random(f"{seed}:{traj_id}").sample(pool, min(k, len(pool))), reverse=True)


def assign_ratios(trajectories: list[Trajectory], ratios: list[float], seed: int) -> dict[str, float]:
    """γ for each trajectory: drawn uniformly among the requested ``ratios`` that it has a CoT for.

    With complete compressed files every trajectory draws from all of ``ratios``; a trajectory missing
    from some ratio file draws among the rest (so a gap never yields a row without its compressed CoT).
    """
    return {tid: gs[0] for tid, gs in assign_ratio_sets(trajectories, ratios, seed, 1).items()}


def assign_ratio_sets(trajectories: list[Trajectory], ratios: list[float], seed: int, k: int) -> dict[str, list[float]]:
    """``k`` distinct γ for each trajectory (see :func:`assign_ratios` for the gaps and :func:`draw_ratios`)."""
    out = {}
    for t in trajectories:
        avail = [r for r in ratios if r in t.cots]
        if not avail:
            raise ValueError(f"trajectory {t.id!r} has a CoT for none of the ratios {ratios}")
        out[t.id] = draw_ratios(t.id, avail, seed, k)
    return out


def split_groups(groups: list[str], share: float, seed: int) -> set[str]:
    """The problem ids held out for validation: ``round(share × n)`` of the ``n`` distinct ids, seeded.

    Ids are sorted before the seeded shuffle, so the split depends only on the set of ids and the seed.
    """
    uniq = sorted(set(groups))
    random.Random(seed).shuffle(uniq)
    return set(uniq[:round(share * len(uniq))])


def ends_with_answer(cot: str) -> bool:
    """True when the CoT's last non-empty line already states an answer: a ``\\boxed{…}`` or ``#### …``."""
    lines = [ln for ln in cot.strip().splitlines() if ln.strip()]
    return bool(lines) and bool(_ENDS_WITH_ANSWER.search(lines[-1]))


def completion_for(cot: str, answer: str, mode: str = "if-missing") -> str:
    """The SFT target of a CoT: the stripped CoT, then :func:`tokenskip.task.prompts.answer_line` unless
    ``mode`` is ``if-missing`` and the CoT already ends with its answer (:func:`ends_with_answer`).

    ``always`` is the reference's choice: it keeps the model's full output (Qwen2.5-Instruct CoTs
    usually end with ``$\\boxed{18}$``) and appends the answer line, so the answer appears twice and
    every target ends with the same line. ``if-missing`` (this project) avoids teaching the model to
    answer twice; targets without an answer still get the line.

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in ANSWER_LINE_MODES:
        raise ValueError(f"answer_line must be one of {ANSWER_LINE_MODES}, got {mode!r}")
    cot = cot.strip()
    if mode == "if-missing" and ends_with_answer(cot):
        return cot
    return cot + answer_line(answer)


def make_record(tokenizer, traj: Trajectory, ratio: float, system_prompt: str | None = None,
                marker_delimiter: str = DEFAULT_MARKER_DELIMITER, prompt_style: str = "chat-template",
                model: str = "", answer_line_mode: str = "always") -> dict:
    """The SFT row ``{id, ratio, prompt, completion}`` of one trajectory at ``ratio``.

    ``prompt`` = chat template of the user turn (+ γ marker when γ < 1) with the generation prompt
    (or the reference's training string, ``prompt_style="reference"``);
    ``completion`` = the CoT at γ + :func:`tokenskip.task.prompts.answer_line` (see :func:`completion_for`); for a
    think trajectory ``<think>`` + the CoT at γ + ``</think>`` + its answer, without the ``<think>`` a generation
    prompt already opened (:func:`tokenskip.task.think.think_completion`).
    """
    prompt = styled_prompt(tokenizer, traj.question, ratio, system_prompt, marker_delimiter=marker_delimiter,
                           style=prompt_style, model=model, training=True)
    if traj.think_answer is not None:
        completion = think_completion(traj.cots[ratio], traj.think_answer or answer_line(traj.answer), prompt)
    else:
        completion = completion_for(traj.cots[ratio], traj.answer, answer_line_mode)
    return SFTExample(traj.id, ratio, prompt, completion).to_json()


def build_records(tokenizer, trajectories: list[Trajectory], cfg) -> tuple[list[dict], list[dict], dict]:
    """``(train_rows, validation_rows, stats)`` for ``trajectories`` (pure: no file I/O).

    ``stats`` = ``{"n": {"train": N, "validation": N, "total": N}, "per_ratio": {split: {"0.5": N...}}}``.
    Rows keep the order of ``trajectories``.
    """
    ids = [t.id for t in trajectories]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise ValueError(f"duplicate trajectory id {dup!r}")
    k = getattr(cfg, "ratios_per_cot", 1)
    gammas = assign_ratio_sets(trajectories, cfg.ratios, cfg.seed, k)
    held_out = split_groups([t.group for t in trajectories], cfg.validation_share, cfg.seed)
    train, val = [], []
    for t in trajectories:
        for g in gammas[t.id]:
            rec = make_record(tokenizer, t, g, cfg.system_prompt, cfg.marker_delimiter, cfg.prompt_style,
                              cfg.model, cfg.answer_line)
            if k > 1:
                rec["id"] = f"{t.id}@{format_ratio(g)}"
            (val if t.group in held_out else train).append(rec)
    per_ratio = {}
    for name, rows in (("train", train), ("validation", val)):
        c = Counter(format_ratio(r["ratio"]) for r in rows)
        per_ratio[name] = {format_ratio(g): c.get(format_ratio(g), 0) for g in sorted(cfg.ratios, reverse=True)}
    stats = {"n": {"train": len(train), "validation": len(val), "total": len(train) + len(val)},
             "per_ratio": per_ratio}
    return train, val, stats


# ---------------------------------------------------------------- reading the compressed folder

def collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


def think_answer(output: str | None, cot_format: str) -> str | None:
    """A trajectory's :attr:`Trajectory.think_answer` from the model's whole output: ``None`` in the plain format
    (or ``auto`` and an output without a think block), else the text after ``</think>`` (``""`` when unknown)."""
    if cot_format == "plain" or (cot_format == "auto" and not (output and has_block(output))):
        return None
    return split_think(output).answer if output else ""




def read_compressed(folder: str | Path, ratios: list[float]) -> tuple[dict[str, dict], dict[float, dict[str, str]]]:
    """Read ``source.jsonl`` and the ``ratio-<γ>.jsonl`` files for the γ < 1 in ``ratios``.

    Returns:
        ``(source, compressed)``: ``source[id] = {"question", "answer", "cot", "output"}`` (``output``: the model's
        whole output, ``None`` when the row has none) and
        ``compressed[γ][id] = cot``.

    Raises:
        FileNotFoundError: the folder or ``source.jsonl`` is missing, or a requested γ < 1 has no file
            (the message lists the ratio files that exist).
        DataError: a row lacks ``id``/``question``/``answer``/``cot``, or an id repeats.
    """
    folder = Path(folder)
    src_path = folder / SOURCE
    if not src_path.is_file():
        raise FileNotFoundError(f"{src_path} not found: --compressed must be a folder written by 'tokenskip compress'")
    source: dict[str, dict] = {}
    for lineno, row in iter_jsonl(src_path):
        rec = SourceCot.from_json(row, src_path, lineno)
        if rec.id in source:
            raise DataError(src_path, lineno, "id", f"duplicate id {rec.id!r}")
        if not rec.question.strip():
            raise DataError(src_path, lineno, "question", "empty (expected a non-empty string)")
        source[rec.id] = {"question": rec.question, "answer": rec.answer, "cot": rec.cot, "output": rec.output}
    compressed: dict[float, dict[str, str]] = {}
    missing = [r for r in ratios if r < 1.0 and not compressed_file(folder, r).is_file()]
    if missing:
        have = [compressed_file(folder, r).name for r in compressed_ratios(folder)]
        raise FileNotFoundError(
            f"{folder}: no compressed file for γ = {', '.join(format_ratio(r) for r in missing)} "
            f"(expected {', '.join(compressed_file(folder, r).name for r in missing)}; found: {have or 'none'}). "
            "Compress to these ratios first or drop them from --ratios.")
    for r in ratios:
        if r >= 1.0:
            continue
        path = compressed_file(folder, r)
        rows: dict[str, str] = {}
        for lineno, row in iter_jsonl(path):
            rec = CompressedCot.from_json(row, path, lineno)
            if rec.id in rows:
                raise DataError(path, lineno, "id", f"duplicate id {rec.id!r}")
            if rec.id not in source:
                raise DataError(path, lineno, "id", f"id {rec.id!r} is not in {SOURCE}")
            rows[rec.id] = rec.cot
        compressed[r] = rows
    return source, compressed


