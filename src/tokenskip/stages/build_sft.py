"""Build the γ-mixed SFT data: each trajectory gets ONE compression ratio γ, as prompt/completion records.

Paper step 4 (docs/method.md): every trajectory draws one γ uniformly from {1.0, 0.9, 0.8, 0.7, 0.6, 0.5}
(seed 42); the input is the question with the γ marker appended to the user turn (no marker for γ = 1),
the target is the (compressed) CoT followed by ``\\n\\nThe final answer is: $\\boxed{ANSWER}$``.

Input (``--compressed DIR``, written by ``tokenskip compress``):

* ``DIR/source.jsonl`` — the uncompressed CoTs (γ = 1.0): ``{id, question, answer, cot, cot_tokens}``;
* ``DIR/ratio-<γ>.jsonl`` — the CoTs pruned to γ: ``{id, question, answer, ratio, cot, ...}``
  (file names from :func:`tokenskip.task.prompts.format_ratio`).

Output (``--out OUT``, written atomically, byte-identical on a rerun):

* ``OUT/train.jsonl``, ``OUT/validation.jsonl`` — rows ``{id, ratio, prompt, completion}``; ``prompt`` is
  the chat-templated user turn with the generation prompt (text, ready to tokenize without adding special
  tokens), ``completion`` the target text (no end-of-turn token: ``tokenskip train`` adds it);
* ``OUT/stats.json`` — counts per γ and per split, and the resolved settings;
* ``OUT/prompt_format.json`` — instruction, system prompt, marker delimiter and γ set of the prompts
  (:mod:`tokenskip.task.prompt_format`), copied next to the adapter by ``tokenskip train``.

Example::

    tokenskip build-sft --compressed W/compress --model smollm2-135m-instruct --out W/sft
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tokenskip.contract.config import to_dict
from tokenskip.contract.io import SCHEMA_VERSION, read_json, write_json_atomic, write_jsonl_atomic
from tokenskip.contract.layout import COMPRESS_SUMMARY, SFT_STATS, SFT_TRAIN, SFT_VALIDATION
from tokenskip.contract.ratios import validate_ratios
from tokenskip.contract.records import problem_id
from tokenskip.finetune.sft import (
    ANSWER_LINE_MODES,
    COT_SOURCES,
    Trajectory,
    available_ratios,
    build_records,
    collapse_whitespace,
    read_compressed,
    think_answer,
)
from tokenskip.task.prompt_format import PromptFormat
from tokenskip.task.prompts import DEFAULT_MARKER_DELIMITER
from tokenskip.task.think import COT_FORMATS, ENABLE_THINKING_HELP, validate_cot_format

logger = logging.getLogger(__name__)


@dataclass
class SFTDataConfig:
    """Settings of ``tokenskip build-sft``. Defaults follow the paper (docs/method.md step 4)."""

    compressed: str = field(default="", metadata={"help": "folder written by 'tokenskip compress' "
                                                          "(source.jsonl + ratio-<γ>.jsonl)"})
    out: str = field(default="", metadata={"help": "output folder (train.jsonl, validation.jsonl, stats.json)"})
    model: str = field(default="smollm2-135m-instruct",
                       metadata={"help": "model whose tokenizer's chat template renders the prompts "
                                         "(alias, .gguf, folder or Hub id)"})
    ratios: list[float] | None = field(default=None, metadata={
        "help": "compression ratios γ to draw from, uniformly; each γ < 1 needs DIR/ratio-<γ>.jsonl "
                "(default: 1.0 plus every γ compressed in --compressed; the paper's grid is 1.0 0.9 0.8 0.7 0.6 0.5)"})
    seed: int = field(default=42, metadata={"help": "seed of the γ draw and of the validation split (paper: 42)"})
    ratios_per_cot: int = field(default=1, metadata={
        "help": "γ values drawn (without replacement) per CoT, each its own row: 1 = the paper's mixture; "
                "more gives the model the same question at several γ (row ids then end in @<γ>)"})
    validation_share: float = field(default=0.1, metadata={"help": "share of questions held out for validation"})
    cot_source: str = field(default="self", metadata={
        "help": "γ = 1.0 CoTs: 'self' = DIR/source.jsonl (the model's own CoTs), 'gold' = the dataset's "
                "reference solutions (needs --benchmark/--data), 'both' = both (ids suffixed #self/#gold)",
        "choices": list(COT_SOURCES)})
    benchmark: str = field(default="gsm8k", metadata={"help": "benchmark of the gold solutions (gsm8k, math)"})
    data: str | None = field(default=None, metadata={"help": "JSONL file or Hub id of the gold solutions"})
    split: str | None = field(default=None, metadata={"help": "Hub split of --data (e.g. train)"})
    limit: int | None = field(default=None, metadata={"help": "use at most this many gold problems"})
    offset: int = field(default=0, metadata={"help": "skip this many gold problems first"})
    system_prompt: str | None = field(default=None, metadata={"help": "optional system turn (paper, Qwen: "
                                                                        "'You are a helpful assistant.')"})
    marker_delimiter: str = field(default=DEFAULT_MARKER_DELIMITER,
                                  metadata={"help": "delimiter around γ in the user-turn marker"})
    answer_line: str = field(default="if-missing", metadata={
        "help": "when the answer line '\\n\\nThe final answer is: $\\boxed{A}$' ends a target: always (the reference: "
                "appended even when the CoT already ends with its answer, so it appears twice) or if-missing (this "
                "project: not appended when the CoT's last line already gives \\boxed{…} or '#### …')",
        "choices": list(ANSWER_LINE_MODES)})
    cot_format: str = field(default="auto", metadata={
        "help": "think: targets keep the <think> tags (<think> + CoT at γ + </think> + the model's answer after it); "
                "plain: CoT + answer line (the paper); auto: think for outputs with a block or a chat template that "
                "makes them", "choices": list(COT_FORMATS)})
    enable_thinking: bool | None = field(default=None, metadata={"help": ENABLE_THINKING_HELP})
    prompt_style: str = field(default="chat-template", metadata={
        "help": "chat-template: the tokenizer's chat template; reference: the TokenSkip reference's training "
                "prompt strings (Qwen ChatML / Llama-3.1 without a system block)",
        "choices": ["chat-template", "reference"]})

    def validate(self) -> None:
        """Check the values only (no disk access, no changes; ``ratios: null`` is resolved by :func:`build_sft`
        from the compress folder when it runs). Raises ``ValueError`` naming the setting."""
        if not self.compressed:
            raise ValueError("build-sft: --compressed (the folder written by 'tokenskip compress') is required")
        if not self.out:
            raise ValueError("build-sft: --out is required")
        if self.ratios is not None:
            validate_ratios(self.ratios, "build-sft: --ratios")
        if self.ratios_per_cot < 1:
            raise ValueError(f"build-sft: --ratios-per-cot must be >= 1, got {self.ratios_per_cot}")
        if not 0.0 <= self.validation_share < 1.0:
            raise ValueError(f"build-sft: --validation-share must be in [0, 1), got {self.validation_share}")
        if self.answer_line not in ANSWER_LINE_MODES:
            raise ValueError(f"build-sft: --answer-line must be one of {ANSWER_LINE_MODES}, got {self.answer_line!r}")
        if self.prompt_style not in ("chat-template", "reference"):
            raise ValueError(f"build-sft: --prompt-style must be chat-template or reference, got {self.prompt_style!r}")
        validate_cot_format(self.cot_format, "build-sft: --cot-format")
        if self.cot_source not in COT_SOURCES:
            raise ValueError(f"build-sft: --cot-source must be one of {COT_SOURCES}, got {self.cot_source!r}")
        if self.offset < 0 or (self.limit is not None and self.limit < 0):
            raise ValueError("build-sft: --limit and --offset must be >= 0")

    def input_fields(self) -> tuple[str, ...]:
        """The path settings this config reads (for the pipeline's input check)."""
        return ("compressed", "data") if self.cot_source in ("gold", "both") else ("compressed",)


def collect_trajectories(cfg: SFTDataConfig, source: dict[str, dict], compressed: dict[float, dict[str, str]],
                         problems=None, folder_source: str | None = None) -> list[Trajectory]:
    """The trajectories of ``cfg.cot_source``, each with every CoT version available for it.

    A compressed row is a pruning of ``source.jsonl``'s CoT for that id, so it is offered only to a
    trajectory whose uncompressed CoT is that same text (whitespace-insensitive). Hence for ``gold``:
    if the folder was built from the gold solutions, trajectories are restricted to the ids it holds;
    if it was not (it holds the model's own CoTs) and some γ < 1 is requested, that is an error (there is
    no compressed version of the gold solutions); with ``both``, gold trajectories then get γ = 1.0 only.

    Args:
        problems: :class:`tokenskip.task.data.Problem` list (needed for ``gold``/``both``).
        folder_source: ``settings.cot_source`` of the folder's ``summary.json`` if known; ``"gold"`` marks
            every id of ``source.jsonl`` as a gold solution even where the texts differ in more than whitespace.
    """
    def versions(rid: str) -> dict[float, str]:
        return {r: rows[rid] for r, rows in compressed.items() if rid in rows}

    suffix = cfg.cot_source == "both"
    out: list[Trajectory] = []
    if cfg.cot_source in ("self", "both"):
        seen: set[tuple[str, str]] = set()
        repeats = 0
        for rid, s in source.items():
            group = problem_id(rid)  # sampled CoTs (<id>#s<k>) of one problem stay on one side of the split
            key = (group, collapse_whitespace(s["cot"]))
            if key in seen:  # two samples wrote the same CoT: one row is enough
                repeats += 1
                continue
            seen.add(key)
            out.append(Trajectory(rid + "#self" if suffix else rid, group, s["question"], s["answer"],
                                  {1.0: s["cot"], **versions(rid)}, think_answer(s.get("output"), cfg.cot_format)))
        if repeats:
            logger.info("%d sampled CoT(s) repeat another CoT of the same problem; each kept once", repeats)
    if cfg.cot_source in ("gold", "both"):
        usable, from_gold = _gold_problems(cfg, source, problems, folder_source)
        for p in usable:
            out.append(Trajectory(p.id + "#gold" if suffix else p.id, p.id, p.question, p.answer,
                                  {1.0: p.solution, **(versions(p.id) if p.id in from_gold else {})},
                                  think_answer(None, cfg.cot_format)))
    if not out:
        raise ValueError(f"build-sft: no trajectories (source {cfg.cot_source!r}, folder {cfg.compressed})")
    return out


def _gold_problems(cfg: SFTDataConfig, source: dict[str, dict], problems,
                   folder_source: str | None) -> tuple[list, set[str]]:
    """The problems whose reference solutions become trajectories, and the ids among them whose
    ``source.jsonl`` CoT is that solution (so the folder's compressed rows of that id prune it).

    Problems without a solution are skipped (a warning). When the folder holds gold solutions, only its
    ids are kept; when it holds none, gold wanting some γ < 1 is an error and both a warning (see
    :func:`collect_trajectories`).

    Raises:
        ValueError: ``problems`` is ``None``, or ``--cot-source gold`` asks for γ < 1 of a folder not built
            from the gold solutions.
    """
    if problems is None:
        raise ValueError("build-sft: --cot-source gold/both needs the dataset (--benchmark, --data)")
    usable = [p for p in problems if p.solution.strip()]
    if len(usable) < len(problems):
        logger.warning("%d problem(s) have no reference solution; skipped", len(problems) - len(usable))
    from_gold = {p.id for p in usable if p.id in source
                 and (folder_source == "gold"
                      or collapse_whitespace(source[p.id]["cot"]) == collapse_whitespace(p.solution))}
    wants_compressed = any(r < 1.0 for r in cfg.ratios)
    if from_gold:
        if len(from_gold) < len(usable):
            logger.info("gold: keeping the %d of %d problems present in %s", len(from_gold), len(usable),
                        cfg.compressed)
        usable = [p for p in usable if p.id in from_gold]
    elif wants_compressed and cfg.cot_source == "gold":
        raise ValueError(
            f"build-sft: {cfg.compressed} was not built from the gold solutions of {cfg.data or cfg.benchmark} "
            "(no source.jsonl CoT equals a reference solution), so there is no compressed version of them; "
            "use --cot-source self, compress the gold solutions, or --ratios 1.0")
    elif wants_compressed:
        logger.warning("both: %s holds no compressed gold solutions; gold trajectories get γ = 1.0 only",
                       cfg.compressed)
    return usable, from_gold


# ---------------------------------------------------------------- runner

def run_build_sft(cfg: SFTDataConfig, tokenizer=None) -> dict:
    """Read ``cfg.compressed`` (+ the gold data), write ``train.jsonl``, ``validation.jsonl``, ``stats.json``.

    Returns the stats dict. Raises ``FileNotFoundError``/``DataError``/``ValueError`` on bad inputs (see
    :func:`read_compressed`, :func:`collect_trajectories`).
    """
    cfg.validate()
    if cfg.ratios is None:  # resolved now, not at validation: the folder may not exist when a pipeline plans
        if not Path(cfg.compressed).is_dir():
            raise FileNotFoundError(f"build-sft: compress folder {cfg.compressed} not found")
        cfg = dataclasses.replace(cfg, ratios=available_ratios(cfg.compressed))
    if tokenizer is None:
        from tokenskip.engines.models import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
    from tokenskip.task.prompts import warn_default_system

    warn_default_system(tokenizer, cfg.prompt_style, cfg.system_prompt, logger)
    fmt = PromptFormat(system_prompt=cfg.system_prompt, marker_delimiter=cfg.marker_delimiter,
                       ratios=tuple(sorted(cfg.ratios, reverse=True)), cot_format=cfg.cot_format,
                       enable_thinking=cfg.enable_thinking).for_tokenizer(tokenizer)
    cfg = dataclasses.replace(cfg, cot_format=fmt.cot_format)   # auto resolved from the chat template
    source, compressed = read_compressed(cfg.compressed, cfg.ratios)
    problems = None
    if cfg.cot_source in ("gold", "both"):
        from tokenskip.task.data import load_problems

        problems = load_problems(cfg.benchmark, cfg.data, split=cfg.split, limit=cfg.limit, offset=cfg.offset)
    summary_path = Path(cfg.compressed) / COMPRESS_SUMMARY
    summary = read_json(summary_path) if summary_path.is_file() else {}
    settings = summary.get("settings") if isinstance(summary, dict) else None
    folder_source = settings.get("cot_source") if isinstance(settings, dict) else None
    trajectories = collect_trajectories(cfg, source, compressed, problems, folder_source)
    train, val, stats = build_records(tokenizer, trajectories, cfg)
    out = Path(cfg.out)
    write_jsonl_atomic(out / SFT_TRAIN, train)
    write_jsonl_atomic(out / SFT_VALIDATION, val)
    stats = {"schema_version": SCHEMA_VERSION, **stats, "config": to_dict(cfg)}
    write_json_atomic(out / SFT_STATS, stats)
    fmt.save(out)  # train copies it next to the adapter
    logger.debug("wrote %d train / %d validation rows to %s; per γ (train): %s", len(train), len(val), out,
                stats["per_ratio"]["train"])
    return stats


def summary_line(stats: dict) -> str:
    """``build-sft: 200 train / 0 validation rows; per γ (train): 1.0 ×34, 0.9 ×31, ...``."""
    per = stats["per_ratio"]["train"]
    shares = ", ".join(f"{g} ×{n}" for g, n in sorted(per.items(), key=lambda kv: -float(kv[0])))
    n = stats["n"]
    return f"build-sft: {n['train']} train / {n['validation']} validation rows; per γ (train): {shares}"


def summary_lines(stats: dict) -> list[str]:
    """The stage's summary for the pipeline (:func:`summary_line` after the stage name, which the pipeline adds)."""
    return [summary_line(stats).removeprefix("build-sft: ")]


def show(cfg: SFTDataConfig, stats: dict) -> None:
    """What ``tokenskip build-sft`` prints: the row counts per γ and the file written."""
    from tokenskip.contract.console import say

    say(summary_line(stats))
    say(f"wrote {Path(cfg.out) / SFT_TRAIN}")
