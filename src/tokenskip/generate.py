"""Stage *generate*: the target model writes a CoT for every problem of a split, graded as it goes.

``tokenskip generate`` produces the self-generated trajectories that later stages compress (e.g. on
GSM8K train); ``tokenskip evaluate`` shares the same rollout core (:mod:`tokenskip.rollout`) on test
splits. Output folder::

    predictions.jsonl   one Prediction row per problem (id, prompt, output, cot, cot_tokens, pred, gold,
                        correct, latency_s, num_tokens, finish_reason, output_token_ids), written as rows finish
    metrics.json        n, accuracy, avg/median CoT tokens, latency, throughput, settings

A killed run resumes (rows already written are kept, never duplicated); a run whose settings changed
starts over (see :class:`tokenskip.io.ResumableJsonl`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from tokenskip.backends import GenerationBackend, get_backend
from tokenskip.config import add_dataclass_args, dataclass_from_args, to_dict
from tokenskip.data import load_problems
from tokenskip.io import ResumableJsonl
from tokenskip.layout import METRICS, ORIGINAL, PREDICTIONS
from tokenskip.models import check_device, configure_threads
from tokenskip.rollout import (GenerationConfig, data_identity, grade_row, metrics_line, print_metrics, run_rows,
                               summarize, write_metrics)

logger = logging.getLogger(__name__)

__all__ = ["GenerationConfig", "grade_row", "summarize", "run_rows", "run_generate", "data_identity",
           "write_metrics", "print_metrics"]


def run_generate(cfg: GenerationConfig, backend: GenerationBackend | None = None) -> dict:
    """Run stage *generate*: CoT for every problem of the slice, graded; returns the metrics dict.

    Raises:
        ValueError: invalid settings; DataError: malformed data rows.
    """
    from tokenskip.prompts import styled_prompt, warn_default_system

    cfg.validate()
    if not cfg.out:
        raise ValueError("--out is required")
    out = Path(cfg.out)
    if backend is None and cfg.backend == "hf":  # before data and model load (vLLM picks its own platform)
        check_device(cfg.device)
    configure_threads(cfg.threads)
    bench = cfg.bench
    problems = load_problems(bench, cfg.data, cfg.split, cfg.limit, cfg.offset)
    own = backend is None
    backend = backend or get_backend(cfg.backend, **cfg.backend_kwargs())
    try:
        tok = backend.tokenizer
        warn_default_system(tok, cfg.prompt_style, cfg.system_prompt, logger)
        prompts = [styled_prompt(tok, p.question, None, cfg.system_prompt, style=cfg.prompt_style, model=cfg.model)
                   for p in problems]
        settings = {"stage": "generate", "model": cfg.model, "benchmark": bench.name,
                    "data": cfg.data_identity(), "max_new_tokens": cfg.resolved_max_new_tokens,
                    "dtype": cfg.dtype_choice().dtype, "backend": cfg.backend, "system_prompt": cfg.system_prompt}
        if cfg.stop:  # only when set, so runs made before --stop existed keep their fingerprint
            settings["stop"] = cfg.stop
        if cfg.prompt_style != "chat-template":  # likewise
            settings["prompt_style"] = cfg.prompt_style
        if bench.name == "custom":  # the field names and grader decide the rows
            settings.update(question_field=cfg.question_field, answer_field=cfg.answer_field, grader=bench.grader)
        with ResumableJsonl(out / PREDICTIONS, settings) as w:
            rows = run_rows(problems, prompts, w, backend, bench.grader, cfg.resolved_max_new_tokens)
        return write_metrics(out, rows, {"benchmark": bench.name, "benchmark_label": bench.label,
                                         "method": ORIGINAL, "ratio": None, "grader": bench.grader,
                                         "model": cfg.model, **cfg.dtype_record(), "backend": cfg.backend,
                                         "max_new_tokens": cfg.resolved_max_new_tokens,
                                         "latency_mode": cfg.latency_mode, "settings": to_dict(cfg)})
    finally:
        if own:
            backend.close()


def summary_lines(m: dict) -> list[str]:
    """The stage's summary for the pipeline: one metrics line."""
    return [metrics_line(m)]


def add_arguments(parser) -> None:
    add_dataclass_args(parser, GenerationConfig)


def run_generate_cli(args) -> int:
    cfg = dataclass_from_args(GenerationConfig, args)
    m = run_generate(cfg)
    print_metrics(m)
    from tokenskip.console import say

    say(f"wrote {Path(cfg.out) / PREDICTIONS} and {METRICS}")
    return 0


run_cli = run_generate_cli
