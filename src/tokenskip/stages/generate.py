"""Stage *generate*: the target model writes a CoT for every problem of a split, graded as it goes.

``tokenskip generate`` produces the self-generated trajectories that later stages compress (e.g. on
GSM8K train); ``tokenskip evaluate`` shares the same rollout core (:mod:`tokenskip.generation.rollout`) on test
splits. Output folder::

    predictions.jsonl   one Prediction row per problem (id, prompt, output, cot, cot_tokens, pred, gold,
                        correct, latency_s, num_tokens, finish_reason, output_token_ids), written as rows finish
    metrics.json        n, accuracy, avg/median CoT tokens, latency, throughput, settings

Decoding is greedy (the paper's). ``--samples N --temperature T`` instead writes N sampled CoTs per problem
(row ids ``<problem id>#s<k>``, :func:`tokenskip.contract.records.sample_id`), the paper's optional way to harvest
more correct trajectories: compress keeps every correct one, build-sft treats each as its own CoT (duplicates
of one problem dropped) and never splits one problem's samples between train and validation.

A killed run resumes (rows already written are kept, never duplicated); a run whose settings changed
starts over (see :class:`tokenskip.contract.io.ResumableJsonl`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from tokenskip.contract.config import to_dict
from tokenskip.contract.io import ResumableJsonl
from tokenskip.contract.layout import METRICS, ORIGINAL, PREDICTIONS
from tokenskip.engines import GenerationBackend, SampledDecode, engine_spec, get_backend
from tokenskip.engines.models import configure_threads
from tokenskip.generation.rollout import (
    GenerationConfig,
    SampledGenerationConfig,
    metrics_line,
    print_metrics,
    row_settings,
    run_rows,
    sample_spread,
    think_setup,
    write_metrics,
)
from tokenskip.task.data import load_problems

logger = logging.getLogger(__name__)

__all__ = ["GenerateConfig", "run_generate"]


@dataclass
class GenerateConfig(SampledGenerationConfig):
    """Settings of stage *generate*: :class:`~tokenskip.generation.rollout.SampledGenerationConfig` (generation
    settings plus sampled CoTs). Defaults differing from the parent: none.

    ``samples`` 1 with ``temperature`` 0 is greedy decoding, one CoT per problem (the paper's default).
    """


def _row_settings(cfg: GenerateConfig) -> dict:
    """:func:`~tokenskip.generation.rollout.row_settings` plus the sampling settings (only when sampling, so
    greedy runs keep their fingerprint)."""
    return row_settings(cfg, "generate") | cfg.sampling_settings()


def run_generate(cfg: GenerationConfig, backend: GenerationBackend | None = None) -> dict:
    """Run stage *generate*: CoT for every problem of the slice, graded; returns the metrics dict.

    A plain :class:`~tokenskip.generation.rollout.GenerationConfig` is read as a :class:`GenerateConfig` with its
    defaults
    (greedy, one CoT per problem). With ``samples`` N > 1 the metrics are over all N × problems rows.

    Raises:
        ValueError: invalid settings; DataError: malformed data rows.
    """
    from tokenskip.task.prompts import styled_prompt, warn_default_system

    if not isinstance(cfg, GenerateConfig):
        cfg = GenerateConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    cfg.validate()
    if not cfg.out:
        raise ValueError("--out is required")
    out = Path(cfg.out)
    if backend is None:  # before data and model load
        engine_spec(cfg.backend).check_settings(cfg.device, cfg.base_url)
    configure_threads(cfg.threads)
    bench = cfg.bench
    problems = load_problems(bench, cfg.data, cfg.split, cfg.limit, cfg.offset)
    own = backend is None
    backend = backend or get_backend(cfg.backend, **cfg.backend_kwargs())
    try:
        tok = backend.tokenizer
        cot_format = think_setup(cfg, tok)
        warn_default_system(tok, cfg.prompt_style, cfg.system_prompt, logger)
        prompts = [styled_prompt(tok, p.question, None, cfg.system_prompt, style=cfg.prompt_style, model=cfg.model)
                   for p in problems]
        problems, prompts = cfg.expand(problems, prompts)  # N rows per problem, ids <id>#s<k>
        cfg.seed_torch()

        decode = SampledDecode(cfg.temperature, cfg.top_p) if cfg.sampling else None
        with ResumableJsonl(out / PREDICTIONS, _row_settings(cfg)) as w:
            rows = run_rows(problems, prompts, w, backend, bench.grader, cfg.resolved_max_new_tokens,
                            decode=decode, cot_format=cot_format)
        return write_metrics(out, rows, {"benchmark": bench.name, "benchmark_label": bench.label,
                                         "method": ORIGINAL, "ratio": None, "grader": bench.grader,
                                         "model": cfg.model, **cfg.dtype_record(), "backend": cfg.backend,
                                         "max_new_tokens": cfg.resolved_max_new_tokens,
                                         "latency_mode": cfg.latency_mode, "settings": to_dict(cfg),
                                         **sample_spread(rows, cfg.samples)})
    finally:
        if own:
            backend.close()


def summary_lines(m: dict) -> list[str]:
    """The stage's summary for the pipeline: one metrics line."""
    return [metrics_line(m)]


def show(cfg: GenerateConfig, metrics: dict) -> None:
    """What ``tokenskip generate`` prints: the metrics line and the files written."""
    from tokenskip.contract.console import say

    print_metrics(metrics)
    say(f"wrote {Path(cfg.out) / PREDICTIONS} and {METRICS}")
