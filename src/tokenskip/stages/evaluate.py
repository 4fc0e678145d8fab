"""Stage *evaluate*: accuracy, CoT tokens, ActRatio and latency of a method on a test split.

Methods come from the registry in :mod:`tokenskip.methods` (paper §5: ``original``, ``prompt``,
``truncation``, ``tokenskip``); :func:`run_evaluate` is one loop over a method's γ, the same for all.
``truncation`` is the paper's plain cap by default (``truncation: plain-cap`` in metrics.json) and appends the
forced answer line with ``--force-answer`` (``truncation: force-answer``); ``--scale-max-new-tokens`` caps
TokenSkip at ``int(max_new_tokens × γ)`` as the reference does on MATH; ``--prompt-style reference`` uses the
reference's hand-written prompt strings (:mod:`tokenskip.task.prompts`).

``--backend openai --base-url URL`` sends the same prompts to an OpenAI-compatible endpoint (``tokenskip
serve``, ``vllm serve``) instead of a local engine (:mod:`tokenskip.engines.openai`). Adapter methods build
their prompts in the format stored next to the adapter (``prompt_format.json``); ``--system-prompt`` /
``--marker-delimiter`` override it.

Layout under ``--out`` (:mod:`tokenskip.contract.layout`)::

    <benchmark>/original/{predictions.jsonl,metrics.json}
    <benchmark>/<method>/ratio-<γ>/{predictions.jsonl,metrics.json}
    <benchmark>/budget/budget-<N>/{predictions.jsonl,metrics.json}

``act_ratio`` = CoT tokens ÷ CoT tokens of ``original`` on the same question ids (paper's ActRatio), from
the original run present in ``--out`` when this run's metrics are written; ``act_ratio_original`` records
which original (a hash of its predictions), so the report recomputes it when that run changed or
appeared later. An evaluation never rewrites another run's files.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tokenskip.contract.config import to_dict
from tokenskip.contract.console import say
from tokenskip.contract.io import ResumableJsonl, file_hash, iter_jsonl
from tokenskip.contract.layout import (
    ORIGINAL,
    PREDICTIONS,
    adapter_hash,
    eval_run_dir,
    original_predictions,
    state_file,
)
from tokenskip.contract.ratios import format_ratio, paper_grid, validate_ratios
from tokenskip.contract.records import Prediction, act_ratio
from tokenskip.engines import GenerationBackend, engine_spec, get_backend
from tokenskip.engines.models import configure_threads
from tokenskip.generation.rollout import (
    SampledGenerationConfig,
    print_metrics,
    row_settings,
    run_rows,
    sample_spread,
    think_setup,
    write_metrics,
)
from tokenskip.methods import Method, get_method, method_names
from tokenskip.task.data import load_problems
from tokenskip.task.prompts import DEFAULT_MARKER_DELIMITER, warn_default_system

logger = logging.getLogger(__name__)

#: Method names (from the registry), kept for callers that list them.
METHODS = tuple(method_names())
#: The paper's γ grid (docs/method.md step 3).
PAPER_RATIOS = paper_grid()


@dataclass
class EvaluateConfig(SampledGenerationConfig):
    """Evaluation settings: every :class:`~tokenskip.generation.rollout.SampledGenerationConfig` field plus the
    method.

    Defaults differing from the parent: none. ``ratios`` defaults to the method's γ grid (the paper's:
    1.0…0.5 for tokenskip, 0.9…0.5 for prompt/truncation). Decoding is greedy (the paper's); ``--samples N
    --temperature 0.6 --top-p 0.95`` is the reasoning-model convention: N sampled CoTs per question (rows
    ``<id>#s<k>``) and pass@1 averaged over them, with its spread, in ``metrics.json``.
    """

    method: str = field(default=ORIGINAL, metadata={"help": "what to evaluate", "choices": list(METHODS)})
    ratios: list[float] | None = field(default=None, metadata={"help": "compression ratios γ to evaluate (e.g. 1.0 0.5 "
                                                                       "or 1.0,0.5)"})
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter folder (method tokenskip)"})
    merge_adapter: bool = field(default=True, metadata={"help": "merge the adapter into the weights (HF; vLLM on CPU, "
                                                                "where LoRA decoding is ~2x slower): same outputs, "
                                                                "faster"})
    force_adapter: bool = field(default=False, metadata={
        "help": "load an adapter whose adapter_config.json names another base model (layer shapes must still fit)"})
    marker_delimiter: str | None = field(default=None, metadata={
        "help": "delimiter of the γ marker (must match training; default: the adapter's prompt_format.json, else "
                + DEFAULT_MARKER_DELIMITER + ")"})
    budgets: list[int] | None = field(default=None,
                                      metadata={"help": "method budget: CoT token budgets N (e.g. 64 128)"})
    length_model: str | None = field(default=None, metadata={"help": "method budget: length model JSON ('tokenskip "
                                                                     "fit-length'), or the original run's "
                                                                     "predictions.jsonl to fit one (default: "
                                                                     "<adapter>/length_model.json)"})
    answer_max_tokens: int = field(default=24, metadata={"help": "truncation, nocot: tokens allowed for the forced "
                                                                 "answer"})
    force_answer: bool = field(default=False, metadata={
        "help": "truncation: after the cap, append '\\n\\nThe final answer is: $\\boxed{' and decode the answer "
                "(this project's variant); default: a plain cap, as in the paper"})
    scale_max_new_tokens: bool = field(default=False, metadata={
        "help": "tokenskip: decode with max_new_tokens × γ, as the reference does on MATH (default: the same cap for "
                "every γ)"})

    def validate(self) -> None:
        """Check the values (no disk access: the adapter's existence is checked when the run starts)."""
        super().validate()
        m = get_method(self.method)
        if self.ratios is not None:
            validate_ratios(self.ratios, "--ratios")
        if m.uses_adapter and not self.adapter:
            raise ValueError(f"--method {m.name} needs --adapter DIR (the trained LoRA adapter)")
        if m.name == "budget" and (not self.budgets or any(b < 1 for b in self.budgets)):
            raise ValueError(f"--method budget needs --budgets N [N ...], each >= 1, got {self.budgets}")
        if self.sampling and not m.can_sample(self):
            raise ValueError(f"--method {m.name}{' --force-answer' if self.force_answer else ''} decodes greedily "
                             "(a forced answer line); --temperature applies to original, prompt, truncation "
                             "and tokenskip")

    def backend_kwargs(self, adapter: str | None = None, merge_adapter: bool = True) -> dict:
        return {**super().backend_kwargs(adapter, merge_adapter), "force_adapter": self.force_adapter}

    def input_fields(self) -> tuple[str, ...]:
        """The path settings this config reads (for the pipeline's input check)."""
        return ("data", "adapter") if self.method_obj.uses_adapter else ("data",)

    @property
    def method_obj(self) -> Method:
        return get_method(self.method)

    @property
    def resolved_ratios(self) -> list[float]:
        m = self.method_obj
        return [r for r in (m.ratio_of(k) for k in m.runs(self)) if r is not None]


def run_dir(out: str | Path, benchmark: str, method: str, ratio: float | None = None) -> Path:
    """Folder of one (benchmark, method, γ or budget N) run under ``out`` (:meth:`Method.folder`)."""
    return get_method(method).folder(out, benchmark, None if method == ORIGINAL else ratio)


def _read_predictions(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in (Prediction.from_json(row, path, n).to_json() for n, row in iter_jsonl(path))} \
        if path.exists() else {}


def _settings(cfg: EvaluateConfig, method: Method, ratio: float | None, extra: dict) -> dict:
    """What decides a run's rows (its ``predictions.state.json`` fingerprint): the rule shared with generate
    (:func:`~tokenskip.generation.rollout.row_settings`) plus the method, γ and adapter."""
    return {**row_settings(cfg, "evaluate"), "method": method.name, "ratio": ratio,
            "adapter": adapter_hash(cfg.adapter) if method.uses_adapter else None, **extra,
            **cfg.sampling_settings()}


def _metrics_extra(cfg: EvaluateConfig, method: Method, ratio: float | None, problems, rows, more=None) -> dict:
    bench = cfg.bench
    orig_path = original_predictions(Path(cfg.out) / bench.name)
    act, act_n, orig_hash = None, 0, None
    if orig_path.exists():
        orig = _read_predictions(orig_path)
        act, act_n = act_ratio({r["id"]: r["cot_tokens"] for r in rows}, {k: r["cot_tokens"] for k, r in orig.items()})
        orig_hash = file_hash(orig_path)
    return {"benchmark": bench.name, "benchmark_label": bench.label, "method": method.name,
            "method_label": method.label, "method_rank": method.rank, "method_style": [method.color, method.marker],
            "ratio_requested": method.ratio_requested, "ratio": ratio, "grader": bench.grader,
            "act_ratio": act, "act_ratio_n": act_n, "act_ratio_original": orig_hash,
            "model": cfg.model, "adapter": cfg.adapter if method.uses_adapter else None, **cfg.dtype_record(),
            "backend": cfg.backend, "max_new_tokens": cfg.resolved_max_new_tokens, "latency_mode": cfg.latency_mode,
            "settings": to_dict(cfg) | {"method": method.name}, "ids": [p.id for p in problems],
            **sample_spread(rows, cfg.samples), **(more(rows) if more else {})}


def run_evaluate(cfg: EvaluateConfig, backend: GenerationBackend | None = None) -> list[dict]:
    """Evaluate ``cfg.method`` at each of its γ; returns one metrics dict per run (see module docstring).

    ``backend`` (optional) is used for base-model methods; a method with an adapter loads its own backend,
    unless ``backend`` is a vLLM engine started with LoRA enabled (``enable_lora=True``), which then
    serves the adapter per request. A method that needs the original run gets it first (reused when on disk).

    Raises:
        ValueError / FileNotFoundError: invalid settings, missing adapter or data.
    """
    cfg.validate()
    if not cfg.out:
        raise ValueError("--out is required")
    method = get_method(cfg.method)
    if method.uses_adapter and not Path(cfg.adapter).exists():
        raise FileNotFoundError(f"adapter folder not found: {cfg.adapter}")
    engine_spec(cfg.backend).check_settings(cfg.device, cfg.base_url)  # before data and model load
    if method.uses_adapter:  # the adapter's stored prompt format, recorded in the settings (not in the caller's cfg)
        from tokenskip.methods.tokenskip import adapter_format

        fmt = adapter_format(cfg.adapter, cfg.system_prompt, cfg.marker_delimiter)
        cfg = dataclasses.replace(cfg, system_prompt=fmt.system_prompt, marker_delimiter=fmt.marker_delimiter)
    configure_threads(cfg.threads)
    bench = cfg.bench
    problems = load_problems(bench, cfg.data, cfg.split, cfg.limit, cfg.offset)
    problems = cfg.expand(problems, [""] * len(problems))[0]  # --samples N: rows <id>#s<k>
    backend_for = _Engines(cfg, backend)
    results = []
    try:
        original = None
        if method.needs_original:
            results.append(_run_one(cfg, get_method(ORIGINAL), None, problems, backend_for))
            original = _read_predictions(original_predictions(Path(cfg.out) / bench.name))
        for key in method.runs(cfg):
            results.append(_run_one(cfg, method, key, problems, backend_for, original))
    finally:
        backend_for.close()
    if method.name != ORIGINAL and not original_predictions(Path(cfg.out) / bench.name).exists():
        logger.warning("no original run under %s: act_ratio stays null until one exists "
                       "(tokenskip evaluate --method original --out %s); the report fills it in", cfg.out, cfg.out)
    return results


class _Engines:
    """The engines of one :func:`run_evaluate` call, picked per run by the adapter folder it decodes with
    (``None``: the base model; ``backend``: the caller's engine, if any). An engine started with LoRA serves every
    adapter per request; otherwise each distinct adapter folder gets one engine load (runs sharing a folder come
    one after another: every γ of an uncalibrated adapter, the γ of a calibrated one that map to one scale), and
    the previous adapter engine is closed first."""

    def __init__(self, cfg: EvaluateConfig, backend: GenerationBackend | None):
        self.cfg, self.backend = cfg, backend
        self.owned: list[GenerationBackend] = []
        self.with_adapter: tuple[str, GenerationBackend] | None = None   # the adapter folder loaded, its engine

    def __call__(self, adapter: str | None) -> GenerationBackend:
        cfg = self.cfg
        if adapter is not None:
            if self.backend is not None and self.backend.capabilities.adapters_per_request:
                return self.backend   # an engine started with LoRA serves the adapter per request
            if self.with_adapter is None or self.with_adapter[0] != adapter:
                if self.with_adapter is not None:
                    self.with_adapter[1].close()
                    self.owned.remove(self.with_adapter[1])
                kwargs = cfg.backend_kwargs(adapter=adapter, merge_adapter=cfg.merge_adapter)
                engine = get_backend(cfg.backend, **kwargs)
                self.with_adapter = (adapter, engine)
                self.owned.append(engine)
            return self.with_adapter[1]
        if self.backend is None:
            self.backend = get_backend(cfg.backend, **cfg.backend_kwargs())
            self.owned.append(self.backend)
        return self.backend

    def close(self) -> None:
        for b in self.owned:
            b.close()


def _run_one(cfg: EvaluateConfig, method: Method, key, problems, backend_for,
             original: dict[str, dict] | None = None) -> dict:
    """One run of a method (its γ, or its budget N): the method's plan, resumable generation, metrics."""
    adapter = method.adapter_for(cfg, key)   # per run: a calibrated adapter's copy scaled for γ
    b = backend_for(adapter)
    cot_format = think_setup(cfg, b.tokenizer)
    if method.name == ORIGINAL:
        warn_default_system(b.tokenizer, cfg.prompt_style, cfg.system_prompt, logger)
    d = method.folder(cfg.out, cfg.bench.name, key)
    ratio = method.ratio_of(key)
    plan = method.plan(b.tokenizer, problems, key, cfg, original)
    settings = _settings(cfg, method, ratio, plan.settings)
    if original is not None:  # rows depend on which original run they cut
        from tokenskip.contract.io import read_json

        settings["original"] = read_json(state_file(eval_run_dir(cfg.out, cfg.bench.name, ORIGINAL)
                                                    / PREDICTIONS))["fingerprint"]

    cfg.seed_torch()  # each run samples from the same seed (HF; vLLM: the engine's)
    with ResumableJsonl(d / PREDICTIONS, settings) as w:
        rows = run_rows(problems, plan.prompts, w, b, cfg.bench.grader, plan.caps, adapter=adapter,
                        row_hook=plan.row_hook,
                        decode=MethodDecode(method, cfg),
                        desc=f"{cfg.bench.name} {method.describe(key)}", cot_format=cot_format)
    m = write_metrics(d, rows, _metrics_extra(cfg, method, ratio, problems, rows, plan.metrics))
    return m | {"_dir": str(d)}


class MethodDecode:
    """A method's decoding of one chunk, ``(engine, prompts, caps, adapter) -> [Generation]``: a plain object
    (method and config) so that it pickles to the actors of a Ray pool."""

    def __init__(self, method: Method, cfg: EvaluateConfig):
        self.method, self.cfg = method, cfg

    def __call__(self, engine, prompts, caps, adapter=None):
        return self.method.generate(engine, prompts, caps, adapter, self.cfg)


def run_evaluations(cfgs: list[EvaluateConfig]) -> list[dict]:
    """Run several evaluations sharing loaded models (the pipeline's evaluate stage); returns all metrics.

    HF: the base model is shared by every method without an adapter (adapter methods load theirs,
    merged). vLLM: one engine, started with LoRA enabled when any run needs an adapter, serves every
    method, so the engine (minutes for a 7B model) starts once.
    """
    def key(c):
        return (c.backend, c.model, c.dtype, c.device, c.batch_size, c.latency_mode,
                c.tensor_parallel_size, c.gpu_memory_utilization, c.threads, tuple(c.stop),
                c.enforce_eager, c.prefix_caching, c.max_num_seqs, c.kv_cache_space_gb, c.max_model_len,
                c.seed if c.sampling else None,  # vLLM samples from its engine's seed
                tuple(c.cluster_kwargs().values()))

    engines: dict[tuple, GenerationBackend] = {}
    results = []
    shown = set()  # truncation runs return the original run's metrics too: print each run once
    try:
        for cfg in cfgs:
            cfg.validate()
            shared = None
            if not _merged_engine(cfg):
                k = key(cfg)
                if k not in engines:
                    kwargs = cfg.backend_kwargs()
                    adapters = [c.adapter for c in cfgs if c.method_obj.uses_adapter and key(c) == k
                                and not _merged_engine(c)]
                    kwargs.update(cfg.engine.lora_kwargs(adapters))
                    engines[k] = get_backend(cfg.backend, **kwargs)
                shared = engines[k]
            for m in run_evaluate(cfg, backend=shared):
                results.append(m)
                if m["_dir"] in shown:
                    continue
                shown.add(m["_dir"])
                print_metrics(m, f"[evaluate {m['benchmark']}] {_label(m)}: ")
    finally:
        for b in engines.values():
            b.close()
    return results


def _merged_engine(cfg: EvaluateConfig) -> bool:
    """Whether ``cfg``'s adapter gets an engine of its own, loaded with the adapter (the engine's rule:
    :meth:`tokenskip.engines.EngineSpec.merges_adapter`), rather than a LoRA request on a shared engine."""
    return cfg.method_obj.uses_adapter and (engine_spec(cfg.backend).wraps
                                            or cfg.engine.merges_adapter(cfg.merge_adapter))


def _label(m: dict) -> str:
    label = m["method"] + ("" if m.get("ratio") is None else f" γ={format_ratio(m['ratio'])}")
    if m.get("budget") is not None:
        label += f" N={m['budget']} within_budget={100 * (m.get('within_budget') or 0):.1f}%"
    return label


def show(cfg: EvaluateConfig, results: list[dict]) -> None:
    """What ``tokenskip evaluate`` prints: one metrics line per run and its folder."""
    for m in results:
        print_metrics(m, f"[{m['benchmark']}] {_label(m)}: ")
        say(f"    -> {m['_dir']}")
