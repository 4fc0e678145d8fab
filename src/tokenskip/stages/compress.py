"""Stage runner of ``tokenskip compress``: prune CoTs to ratios γ and write one row file per γ.

The pure core (scoring, pruning) is :mod:`tokenskip.compress` (``compress``, ``compress_batch``); this module
reads the CoTs, writes the run folder and holds the command's settings.

Inputs: generate's ``predictions.jsonl`` (correct rows with ``cot_tokens`` ≤ ``max_cot_tokens``, paper
step 2) or, with ``--cot-source gold``, a dataset's reference solutions.

Outputs under ``--out``:

* ``source.jsonl`` — the uncompressed CoTs kept: ``id, question, answer, cot, cot_tokens``;
* ``ratio-<γ>.jsonl`` — per γ: ``id, question, answer, ratio, cot, original_tokens, kept_tokens,
  achieved_ratio, scorer, overshoot, answer_numbers_kept``;
* ``summary.json`` — per γ: ``n``, ``mean_achieved_ratio``, ``mean_abs_error`` (mean |achieved − γ|),
  ``p95_abs_error``, ``overshoot_share``, ``answer_numbers_kept_share``; plus scorer, model, settings.

Every row file is a :class:`~tokenskip.contract.io.ResumableJsonl` keyed by ``id``: a killed run resumes, and
changed settings start the file over.

``--compat reference`` replaces the project's pruner by the reference's LLMLingua-2 call
(:mod:`tokenskip.compress.reference`: γ in cl100k tokens per chunk, nothing protected, Qwen/Llama
settings); rows keep the same fields (counts in target tokens, ``overshoot`` always false). Its input is the
model's whole output (``output``), as the reference's; for a think output (one holding a ``<think>`` block) it is
the block's content (``cot``), as in the project's mode, so the tags and the answer after the block are never
pruned. In the project's mode a warning names every γ whose overshoot share exceeds 5 %.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tokenskip.compress import PROTECT_KINDS, SCORERS, answer_numbers_kept, compress_batch, count_tokens
from tokenskip.compress.scorers import part_scorers
from tokenskip.compress.stats import summarize
from tokenskip.contract.config import CLUSTER_KEYS, ClusterSettings, ModelSettings, to_dict
from tokenskip.contract.console import progress
from tokenskip.contract.io import DataError, ResumableJsonl, file_hash, iter_jsonl, write_json_atomic
from tokenskip.contract.layout import COMPRESS_SUMMARY, SOURCE, compressed_file
from tokenskip.contract.ratios import paper_grid, validate_ratios
from tokenskip.contract.records import CompressedCot, SourceCot
from tokenskip.task.think import has_block

logger = logging.getLogger(__name__)

#: CoT sources: the same words as build-sft's (``self``, ``gold``); ``predictions`` = ``self`` (its old name)
COT_SOURCES = ("self", "gold", "predictions")


@dataclass
class CompressConfig(ModelSettings, ClusterSettings):
    """Settings of the compress stage. Defaults follow the paper (ratios 0.9…0.5, CoTs ≤ 500 tokens).

    ``backend: ray`` scores self-information in a Ray actor pool (``ray_*`` settings; docs/scale-out.md); any other
    backend name (a recipe's top-level ``backend`` reaches this stage too) scores in this process.
    """

    out: str = field(default="", metadata={"help": "output folder"})
    predictions: str = field(default="", metadata={"help": "generate's predictions.jsonl (with --cot-source "
                                                           "predictions)"})
    cot_source: str = field(default="self", metadata={
        "help": "where CoTs come from: 'self' = the model's correct predictions (--predictions; old name "
                "'predictions'), 'gold' = a dataset's reference solutions (--data)",
        "choices": list(COT_SOURCES)})
    benchmark: str = field(default="gsm8k", metadata={"help": "benchmark of --data (with --cot-source gold)"})
    data: str = field(default="", metadata={"help": "dataset file or Hub id (with --cot-source gold)"})
    limit: int | None = field(default=None, metadata={"help": "use at most this many CoTs (after --offset)"})
    offset: int = field(default=0, metadata={"help": "skip this many dataset rows first (gold source)"})
    max_cot_tokens: int = field(default=500, metadata={"help": "drop CoTs longer than this, in target tokens (paper: "
                                                               "500)"})
    ratios: list[float] = field(default_factory=lambda: paper_grid(include_one=False),
                                metadata={"help": "compression ratios γ in (0, 1] (paper §4)"})
    model: str = field(default="smollm2-135m-instruct", metadata={
        "help": "target model (alias, folder, .gguf or Hub id): its tokenizer counts tokens"})
    backend: str = field(default="hf", metadata={
        "help": "ray: score self-information in a Ray actor pool (docs/scale-out.md); hf, vllm, openai: here",
        "choices": ["hf", "vllm", "openai", "ray"]})
    scorer: str = field(default="self-information", metadata={
        "help": "token importance scorer", "choices": ["self-information", "llmlingua2", "random"]})
    scorer_model: str = field(default="", metadata={
        "help": "scorer model (self-information: a causal LM, default --model; llmlingua2: a token "
                "classifier, default microsoft/llmlingua-2-xlm-roberta-large-meetingbank)"})
    batch_size: int = field(default=8, metadata={"help": "texts (windows) per scorer forward pass"})
    seed: int = field(default=42, metadata={"help": "seed of the random scorer"})
    keep_newlines: bool = field(default=True, metadata={"help": "keep line breaks where words were dropped"})
    protect: bool = field(default=True, metadata={"help": "always keep protected spans (see --protect-kinds)"})
    # Default: the answer line's numbers, \boxed{} and LaTeX commands are always kept; other numbers and
    # operators are ranked first but may go. Protecting every number overshoots γ ≤ 0.6 on GSM8K (digits
    # are ~half of SmolLM2's tokens there); measured on 500 CoTs: mean |err| ≤ 0.006, p95 ≤ 0.021.
    protect_kinds: list[str] = field(default_factory=lambda: ["answer", "boxed", "latex"],
                                     metadata={"empty_ok": True,
                                               "help": "protected span kinds, always kept even past γ: numbers "
                                                       "operators boxed latex answer (= the numbers of the "
                                                       "final answer line) terms (= the first mention of each "
                                                       "content word of the question); the flag alone protects "
                                                       "nothing"})
    prefer_kinds: list[str] = field(default_factory=lambda: ["numbers", "operators"], metadata={
        "empty_ok": True,
        "help": "span kinds ranked above all other words but dropped (lowest score first) when the budget "
                "cannot hold them, so they never overshoot γ; e.g. --protect-kinds answer boxed latex "
                "--prefer-kinds numbers operators; the flag alone prefers nothing"})
    compat: str = field(default="project", metadata={
        "help": "project: γ in target-model tokens with protected spans (this project's pruner); reference: "
                "the TokenSkip reference's LLMLingua-2 call (γ in GPT-3.5 cl100k tokens per ≤510-token chunk, "
                "percentile threshold, nothing protected; needs --scorer llmlingua2 and tokenskip[reference])",
        "choices": ["project", "reference"]})
    reference_family: str = field(default="auto", metadata={
        "help": "--compat reference: qwen (whole output, nothing forced) or llama (text before the answer "
                "line, force 'Step' ':', keep digits, drop consecutive); auto: llama when --model names Llama",
        "choices": ["auto", "qwen", "llama"]})

    #: Share of overshooting CoTs per γ above which a run warns (issue 13: MATH with protected LaTeX had ~50 %).
    OVERSHOOT_WARN_SHARE = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()

    def validate(self) -> None:
        if not self.out:
            raise ValueError("--out is required")
        if self.backend not in ("hf", "vllm", "openai", "ray"):
            raise ValueError(f"--backend must be hf, vllm, openai or ray, got {self.backend!r}")
        self.validate_cluster()
        if self.from_predictions and not self.predictions:
            raise ValueError("--cot-source predictions needs --predictions FILE (or use --cot-source gold --data FILE)")
        if self.cot_source == "gold" and not self.data:
            raise ValueError("--cot-source gold needs --data (a dataset file or Hub id)")
        if self.cot_source not in COT_SOURCES:
            raise ValueError(f"cot_source must be one of {list(COT_SOURCES)}, got {self.cot_source!r}")
        if self.scorer not in SCORERS:
            raise ValueError(f"unknown scorer {self.scorer!r}; expected one of {list(SCORERS)}")
        validate_ratios(self.ratios, "--ratios")
        bad = (set(self.protect_kinds) | set(self.prefer_kinds)) - set(PROTECT_KINDS)
        if bad:
            raise ValueError(f"unknown --protect-kinds/--prefer-kinds {sorted(bad)}; expected some of "
                             f"{list(PROTECT_KINDS)}")
        if self.compat not in ("project", "reference"):
            raise ValueError(f"--compat must be project or reference, got {self.compat!r}")
        if self.compat == "reference" and self.scorer != "llmlingua2":
            raise ValueError("--compat reference compresses with LLMLingua-2: use --scorer llmlingua2 (got "
                             f"{self.scorer!r})")
        for name, value, low in (("max_cot_tokens", self.max_cot_tokens, 1), ("batch_size", self.batch_size, 1),
                                 ("offset", self.offset, 0), ("limit", self.limit, 0)):
            if value is not None and value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")

    def unused_settings(self) -> tuple[str, ...]:
        """Left out of a recipe's fingerprint: where the scores are computed (here or in a Ray pool) never
        changes what is written, so switching ``backend`` re-runs nothing."""
        return ("backend",) + CLUSTER_KEYS

    def input_fields(self) -> tuple[str, ...]:
        """The path settings this config reads (for the pipeline's input check)."""
        return ("predictions",) if self.from_predictions else ("data",)

    @property
    def from_predictions(self) -> bool:
        """CoTs are the model's own (``self``, the same word as build-sft's; ``predictions`` is its old name)."""
        return self.cot_source in ("self", "predictions")


def load_source(cfg: CompressConfig, tokenizer) -> list[dict]:
    """The CoTs to compress as ``source.jsonl`` rows (``id, question, answer, cot, cot_tokens``).

    Predictions: rows with ``correct`` true and ``cot_tokens`` ≤ ``max_cot_tokens``; the question is
    the row's ``question`` field, else the problem of that id in ``--data`` when given, else it is cut
    out of the row's chat ``prompt`` (between the paper's instruction line and the end of the user
    turn of the target's chat template). Gold: ``Problem.solution`` of each problem.
    Empty CoTs are dropped. ``cot_tokens`` is recounted with the target tokenizer.

    Raises:
        DataError: a predictions row lacks a needed field (names file, line, field), or no CoT is left
            (the message says how many rows were read and how many were dropped for each reason: a
            model that answers every training question wrong leaves nothing to train on).
    """
    dropped = {"incorrect": [], "too_long": [], "empty": []}  # reason -> ids
    if cfg.cot_source == "gold":
        from tokenskip.task.data import load_problems

        rows = [{"id": p.id, "question": p.question, "answer": p.answer, "cot": p.solution}
                for p in load_problems(cfg.benchmark, cfg.data, split="train", limit=cfg.limit, offset=cfg.offset)]
        n_read = len(rows)
    else:
        rows, n_read = _prediction_rows(cfg, tokenizer, dropped)
    kept = []
    for r in rows:
        r["cot_tokens"] = count_tokens(tokenizer, r["cot"])
        if not r["cot"].strip():
            dropped["empty"].append(r["id"])
        elif r["cot_tokens"] > cfg.max_cot_tokens:
            dropped["too_long"].append(r["id"])
        else:
            kept.append(SourceCot(**r).to_json())
    if cfg.from_predictions and cfg.limit is not None:
        kept = kept[:cfg.limit]
    why = drop_reasons(dropped, cfg.max_cot_tokens)
    if not kept:  # the error says it all (no log line repeating it)
        source = cfg.predictions if cfg.from_predictions else cfg.data
        raise DataError(source, None, None, f"no CoT left to compress: read {n_read} row(s); dropped "
                        f"{why or 'none'}")
    logger.info("%d of %d rows to compress (dropped: %s)", len(kept), n_read, why or "none")
    return kept


def _prediction_rows(cfg: CompressConfig, tokenizer, dropped: dict[str, list]) -> tuple[list[dict], int]:
    """The correct rows of ``cfg.predictions`` whose own ``cot_tokens`` (when given) is within
    ``max_cot_tokens``, as source rows without ``cot_tokens`` (see :func:`load_source`), and the number of
    rows read. The ids of the rows left out are added to ``dropped`` (reason -> ids).

    Raises:
        DataError: a row lacks ``id``/``cot``/``correct``, or its ``cot`` or ``question`` is not a
            non-empty string (names file, line, field).
    """
    rows, n_read = [], 0
    for lineno, r in iter_jsonl(cfg.predictions):
        n_read += 1
        for key in ("id", "cot", "correct"):
            if key not in r:
                raise DataError(cfg.predictions, lineno, key, "missing (expected generate's predictions.jsonl)")
        if not isinstance(r["cot"], str):
            raise DataError(cfg.predictions, lineno, "cot", "expected a string")
        if r["correct"] is not True:
            dropped["incorrect"].append(r["id"])
            continue
        question = r.get("question")
        if question is None:
            question = _question_of(r, lineno, cfg, tokenizer)
        elif not isinstance(question, str) or not question.strip():
            raise DataError(cfg.predictions, lineno, "question", "empty or not a string (expected the question text)")
        if r.get("cot_tokens") is not None and int(r["cot_tokens"]) > cfg.max_cot_tokens:
            dropped["too_long"].append(r["id"])
            continue
        row = {"id": r["id"], "question": question, "answer": str(r.get("gold", "")), "cot": r["cot"]}
        if isinstance(r.get("output"), str):
            row["output"] = r["output"]  # --compat reference compresses it; build-sft reads a think answer from it
        rows.append(row)
    return rows, n_read


def drop_reasons(dropped: dict[str, list], max_cot_tokens: int) -> str:
    """One line saying how many rows were dropped for each reason, with the first ids of each."""
    what = {"incorrect": "with 'correct' not true (only correct CoTs are compressed, paper step 2)",
            "too_long": f"with a CoT over --max-cot-tokens {max_cot_tokens} tokens",
            "empty": "with an empty CoT"}
    parts = []
    for reason, ids in dropped.items():
        if ids:
            shown = ", ".join(repr(i) for i in ids[:3]) + (", …" if len(ids) > 3 else "")
            parts.append(f"{len(ids)} {what[reason]} (ids {shown})")
    return "; ".join(parts)


_QUESTIONS: dict[tuple, dict[str, str]] = {}


def _question_of(row: dict, lineno: int, cfg: CompressConfig, tokenizer) -> str:
    """The question of a predictions row without a ``question`` field (see :func:`load_source`)."""
    from tokenskip.task.prompts import INSTRUCTION, build_prompt

    if cfg.data:
        key = (cfg.benchmark, cfg.data)
        if key not in _QUESTIONS:
            from tokenskip.task.data import load_problems

            _QUESTIONS[key] = {p.id: p.question for p in load_problems(cfg.benchmark, cfg.data, split="train")}
        if row["id"] in _QUESTIONS[key]:
            return _QUESTIONS[key][row["id"]]
        raise DataError(cfg.predictions, lineno, "id", f"{row['id']!r} is not a problem id of {cfg.data}")
    prompt = row.get("prompt")
    if isinstance(prompt, str) and getattr(tokenizer, "chat_template", None):
        mark = "\x00QUESTION\x00"
        suffix = build_prompt(tokenizer, mark).split(mark, 1)[1]
        start = prompt.find(INSTRUCTION + "\n")
        if start >= 0 and prompt.endswith(suffix):
            return prompt[start + len(INSTRUCTION) + 1:len(prompt) - len(suffix)]
    raise DataError(cfg.predictions, lineno, "question",
                    "missing, and the prompt is not the paper's instruction in the target's chat template; "
                    "pass --data (the dataset generate read) to join questions by id")


def _write_source(cfg: CompressConfig, out: Path, source: list[dict]) -> dict:
    """Append the ``source`` rows not yet in ``out/source.jsonl`` (a file written with other settings
    starts over); returns those settings, the fingerprint that every ``ratio-<γ>.jsonl`` extends."""
    input_file = cfg.predictions if cfg.from_predictions else cfg.data
    settings = {"cot_source": "predictions" if cfg.from_predictions else cfg.cot_source, "input": input_file,
                "input_hash": file_hash(input_file) if Path(input_file).exists() else None,
                "benchmark": cfg.benchmark, "limit": cfg.limit, "offset": cfg.offset,
                "max_cot_tokens": cfg.max_cot_tokens, "model": cfg.model}
    with ResumableJsonl(out / SOURCE, settings) as src:
        for r in source:
            if r["id"] not in src.done_keys:
                src.append(r)
    return settings


def _prune_settings(cfg: CompressConfig, source_settings: dict, scorer_dtype: str) -> tuple[str, str | None, dict]:
    """``(scorer model, reference family, settings of the ratio files)``. The scorer model defaults to
    ``--model`` for self-information, and under ``--compat reference`` to LLMLingua-2's meetingbank model;
    the family (:func:`~tokenskip.compress.reference.reference_family`) is ``None`` in the project's mode.
    ``scorer_dtype`` is the resolved dtype of ``--dtype`` (recorded for the self-information scorer only)."""
    scorer_model = cfg.scorer_model or (cfg.model if cfg.scorer == "self-information" else "")
    if cfg.compat == "reference":
        from tokenskip.compress.reference import reference_family

        family = reference_family(cfg.model, cfg.reference_family)
        scorer_model = scorer_model or "microsoft/llmlingua-2-xlm-roberta-large-meetingbank"
        return scorer_model, family, {**source_settings, "compat": "reference", "reference_family": family,
                                      "scorer": cfg.scorer, "scorer_model": scorer_model}
    return scorer_model, None, {
        **source_settings, "scorer": cfg.scorer, "scorer_model": scorer_model,
        "seed": cfg.seed if cfg.scorer == "random" else None, "keep_newlines": cfg.keep_newlines,
        "protect": cfg.protect, "protect_kinds": sorted(cfg.protect_kinds) if cfg.protect else [],
        "prefer_kinds": sorted(cfg.prefer_kinds),
        "scorer_dtype": scorer_dtype if cfg.scorer == "self-information" else None}


def run_compress(cfg: CompressConfig) -> dict:
    """Compress every source CoT to every γ under ``cfg.out``; return the summary (also written)."""
    from tokenskip.engines.hardware import resolve_dtype
    from tokenskip.engines.models import check_device, configure_threads, load_tokenizer

    cfg.validate()
    check_device(cfg.device)  # at run time, not in validate: a GPU recipe still plans on a CPU machine
    configure_threads(cfg.threads)
    out = Path(cfg.out)
    tokenizer = load_tokenizer(cfg.model)
    source = load_source(cfg, tokenizer)  # raises before anything is written when no CoT is left
    out.mkdir(parents=True, exist_ok=True)
    source_settings = _write_source(cfg, out, source)
    dtype = resolve_dtype(cfg.dtype, cfg.device)
    scorer_model, family, prune_settings = _prune_settings(cfg, source_settings, dtype.dtype)
    files = {g: ResumableJsonl(compressed_file(out, g), {**prune_settings, "ratio": g})
             for g in cfg.ratios}
    t0 = time.perf_counter()
    try:
        todo = [r for r in source if any(r["id"] not in f.done_keys for f in files.values())]
        logger.info("%d of %d CoTs to score (%d already done)", len(todo), len(source), len(source) - len(todo))
        if todo and family is not None:
            _run_reference(cfg, todo, files, scorer_model, family, tokenizer)
        elif todo:
            _run_project(cfg, todo, files, scorer_model, tokenizer)
        ids = [r["id"] for r in source]
        rows_by_ratio = {g: [files[g].rows[i] for i in ids if i in files[g].rows] for g in cfg.ratios}
    finally:
        for f in files.values():
            f.close()
    summary = {"scorer": cfg.scorer, "scorer_model": scorer_model, "model": cfg.model, "n_source": len(source),
               "compat": cfg.compat, "reference_family": family,
               "seconds": round(time.perf_counter() - t0, 2), "ratios": summarize(rows_by_ratio),
               "dtype": dtype.dtype, "dtype_requested": cfg.dtype, "dtype_reason": dtype.reason,
               "settings": to_dict(cfg)}
    write_json_atomic(out / COMPRESS_SUMMARY, summary)
    warn_overshoot(summary)
    return summary


def warn_overshoot(summary: dict, limit: float = CompressConfig.OVERSHOOT_WARN_SHARE) -> list[str]:
    """Log (and return) one warning per γ whose share of overshooting CoTs exceeds ``limit`` (0..1).

    An overshoot means the protected spans alone exceeded γ, so that γ's SFT targets are longer than
    asked; the cure is to move a kind from --protect-kinds to --prefer-kinds (e.g. LaTeX on MATH).
    """
    out = []
    for g, s in summary.get("ratios", {}).items():
        share = s.get("overshoot_share")
        if share is not None and share == share and share > limit:
            msg = (f"γ={g}: {share:.1%} of CoTs overshoot (protected spans alone exceed γ; mean achieved "
                   f"{s['mean_achieved_ratio']:.3f}); consider moving kinds from --protect-kinds to --prefer-kinds")
            logger.warning(msg)
            out.append(msg)
    return out


def _run_project(cfg: CompressConfig, todo: list[dict], files: dict, scorer_model: str, tokenizer) -> None:
    """Compress ``todo`` rows with this project's scorer and pruner (:func:`tokenskip.compress.compress_batch`)
    into ``files`` (γ -> :class:`~tokenskip.contract.io.ResumableJsonl`), part by part, with a progress bar.
    Under ``backend: ray`` the self-information scores of every part come from a Ray actor pool, each part
    written as soon as its scores arrive."""
    step = (cfg.ray_shard_size if cfg.backend == "ray" else None) or max(64, cfg.batch_size * 8)
    parts = [todo[k:k + step] for k in range(0, len(todo), step)]
    bar = progress(len(todo), "compress", unit="CoT")
    pool = None
    if cfg.backend == "ray":
        from tokenskip.engines.ray_pool import PoolSettings

        pool = PoolSettings(cfg.ray_address, cfg.ray_actors, cfg.ray_cpus_per_actor, cfg.ray_gpus_per_actor)
    texts = [[r["cot"] for r in part] for part in parts]
    for k, scorer in part_scorers(cfg.scorer, texts, scorer_model, cfg.dtype, cfg.device, cfg.batch_size, cfg.seed,
                                  pool):
        part = parts[k]
        results = compress_batch(texts[k], cfg.ratios, scorer, tokenizer,
                                 protect=cfg.protect, protect_kinds=cfg.protect_kinds,
                                 keep_newlines=cfg.keep_newlines, prefer_kinds=cfg.prefer_kinds,
                                 questions=[r["question"] for r in part])
        for r, per_ratio in zip(part, results):
            for res in per_ratio:
                f = files[res.ratio]
                if r["id"] in f.done_keys:
                    continue
                f.append(CompressedCot(
                    id=r["id"], question=r["question"], answer=r["answer"], ratio=res.ratio, cot=res.text,
                    original_tokens=res.original_tokens, kept_tokens=res.kept_tokens,
                    achieved_ratio=res.achieved_ratio, scorer=res.scorer, overshoot=res.overshoot,
                    words_kept=res.words_kept, words_total=res.words_total,
                    answer_numbers_kept=answer_numbers_kept(r["cot"], res.text)).to_json())
        bar.update(len(part))
    bar.close()


def _reference_text(row: dict) -> str:
    """What ``--compat reference`` compresses of a source row: the model's whole output (the reference's input), or
    the ``cot`` column for gold rows and for think outputs (their block's content, as in the project's mode)."""
    output = row.get("output")
    return output if output and not has_block(output) else row["cot"]


def _run_reference(cfg: CompressConfig, todo: list[dict], files: dict, scorer_model: str, family: str,
                   tokenizer) -> None:
    """Compress ``todo`` rows the reference's way (see :mod:`tokenskip.compress.reference`) into ``files``."""
    from tokenskip.compress.reference import ReferenceCompressor, compress_reference, reference_input

    comp = ReferenceCompressor(scorer_model, batch_size=cfg.batch_size, device=cfg.device)
    step = max(64, cfg.batch_size * 8)
    for k in range(0, len(todo), step):
        part = todo[k:k + step]
        texts = [reference_input(_reference_text(r), family) for r in part]
        for r, text, per_ratio in zip(part, texts, compress_reference(texts, cfg.ratios, comp, tokenizer, family)):
            for res in per_ratio:
                f = files[res.ratio]
                if r["id"] in f.done_keys:
                    continue
                f.append({"id": r["id"], "question": r["question"], "answer": r["answer"], "ratio": res.ratio,
                          "cot": res.text, "original_tokens": res.original_tokens, "kept_tokens": res.kept_tokens,
                          "achieved_ratio": res.achieved_ratio, "scorer": res.scorer, "overshoot": False,
                          "words_kept": res.words_kept, "words_total": res.words_total,
                          "answer_numbers_kept": answer_numbers_kept(text, res.text)})
        logger.info("compressed %d/%d CoTs (reference mode, %s)", min(k + step, len(todo)), len(todo), family)


def summary_lines(summary: dict) -> list[str]:
    """One line per γ of a compress ``summary.json`` (achieved ratio, |error|, overshoot, answers kept);
    a statistic that is ``null`` (no rows) shows as ``n/a``."""
    def fmt(x, spec):
        return "n/a" if x is None else format(x, spec)

    return [f"γ={g}: n={s['n']} achieved={fmt(s['mean_achieved_ratio'], '.3f')} "
            f"|err| mean={fmt(s['mean_abs_error'], '.3f')} p95={fmt(s['p95_abs_error'], '.3f')} "
            f"overshoot={fmt(s['overshoot_share'], '.1%')} "
            f"answer numbers kept={fmt(s['answer_numbers_kept_share'], '.1%')}" for g, s in summary["ratios"].items()]


def show(cfg: CompressConfig, summary: dict) -> None:
    """What ``tokenskip compress`` prints: the summary lines and the file written."""
    from tokenskip.contract.console import say

    for line in summary_lines(summary):
        say(line)
    say(f"wrote {Path(cfg.out) / COMPRESS_SUMMARY}")
