"""Stage *evaluate*: accuracy, CoT tokens, ActRatio and latency of a method on a test split.

Methods (paper §5 baselines, docs/method.md):

* ``original``   — the base model as is.
* ``prompt``     — the base model told in the instruction to cut its reasoning words by (1 − γ).
* ``truncation`` — the base model's CoT capped at ⌈γ × that question's original CoT tokens⌉: decode
  greedily with that cap (greedy, so the kept part is exactly the original CoT's prefix), nothing
  appended: the paper's baseline (default, ``truncation: plain-cap`` in metrics.json). With
  ``--force-answer``, if the model did not end its turn within the cap,
  ``\\n\\nThe final answer is: $\\boxed{`` is appended and at most ``answer_max_tokens`` more tokens
  decoded (``truncation: force-answer``). Needs the ``original`` run of the same questions (run first
  automatically when missing).
* ``tokenskip``  — the LoRA adapter trained on γ-compressed CoTs, prompted with γ's marker.
* ``nocot``      — control without any CoT: the base model's turn is opened with
  ``The final answer is: $\\boxed{`` and at most ``answer_max_tokens`` tokens are decoded (the
  truncation baseline at a cap of 0 tokens), so CoT tokens are 0 and the accuracy says how much of
  the task the model solves without reasoning.
* ``budget``     — the adapter with a token budget N per question (``--budgets``): γ = N ÷ the question's
  predicted original CoT length (``--length-model``), decoding capped at N (:mod:`tokenskip.budget`).

``--backend openai --base-url URL`` sends the same prompts to an OpenAI-compatible endpoint (``tokenskip
serve``, ``vllm serve``) instead of a local engine (:mod:`tokenskip.backends.openai`).

Adapter methods build their prompts with :mod:`tokenskip.inference` in the format stored next to the
adapter (``prompt_format.json``); ``--system-prompt`` / ``--marker-delimiter`` override it.

Layout under ``--out``::

    <benchmark>/original/{predictions.jsonl,metrics.json}
    <benchmark>/nocot/{predictions.jsonl,metrics.json}
    <benchmark>/<method>/ratio-<γ>/{predictions.jsonl,metrics.json}
    <benchmark>/budget/budget-<N>/{predictions.jsonl,metrics.json}

``act_ratio`` = avg CoT tokens ÷ avg CoT tokens of ``original`` on the same question ids (paper's
ActRatio); it is (re)computed for every run under ``<benchmark>/`` whenever an evaluation finishes,
so it appears as soon as the ``original`` run exists.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tokenskip.backends import Generation, GenerationBackend, get_backend
from tokenskip.config import add_dataclass_args, dataclass_from_args, to_dict
from tokenskip.console import say
from tokenskip.data import load_problems
from tokenskip.generate import GenerationConfig, data_identity, print_metrics, run_rows, write_metrics
from tokenskip.io import ResumableJsonl, file_hash, iter_jsonl, read_json, write_json_atomic
from tokenskip.models import check_device, configure_threads
from tokenskip.budget import load_length_model
from tokenskip.inference import FORCE_ANSWER  # also public here
from tokenskip.inference import BudgetEngine, Query, plan_ratio, render_prompt
from tokenskip.prompt_format import resolve_prompt_format
from tokenskip.prompts import (DEFAULT_MARKER_DELIMITER, build_prompt, format_ratio, prompt_reduction_instruction,
                               styled_prompt, validate_ratio, warn_default_system)

logger = logging.getLogger(__name__)

METHODS = ("original", "prompt", "truncation", "tokenskip", "budget", "nocot")
#: The paper's γ grid (docs/method.md step 3).
PAPER_RATIOS = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]


@dataclass
class EvaluateConfig(GenerationConfig):
    """Evaluation settings: every :class:`~tokenskip.generate.GenerationConfig` field plus the method.

    Defaults differing from the parent: none. ``ratios`` defaults to the paper's grid
    (1.0…0.5 for tokenskip, 0.9…0.5 for prompt/truncation).
    """

    method: str = field(default="original", metadata={"help": "what to evaluate", "choices": list(METHODS)})
    ratios: list[float] | None = field(default=None, metadata={"help": "compression ratios γ to evaluate (e.g. 1.0 0.5 or 1.0,0.5)"})
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter folder (method tokenskip)"})
    merge_adapter: bool = field(default=True, metadata={"help": "merge the adapter into the weights (HF backend; same outputs, faster)"})
    force_adapter: bool = field(default=False, metadata={
        "help": "load an adapter whose adapter_config.json names another base model (layer shapes must still fit)"})
    marker_delimiter: str | None = field(default=None, metadata={"help": "delimiter of the γ marker (must match training; default: the adapter's prompt_format.json, else " + DEFAULT_MARKER_DELIMITER + ")"})
    budgets: list[int] | None = field(default=None, metadata={"help": "method budget: CoT token budgets N (e.g. 64 128)"})
    length_model: str | None = field(default=None, metadata={"help": "method budget: length model JSON ('tokenskip fit-length'), or the original run's predictions.jsonl to fit one (default: <adapter>/length_model.json)"})
    answer_max_tokens: int = field(default=24, metadata={"help": "truncation, nocot: tokens allowed for the forced answer"})
    force_answer: bool = field(default=False, metadata={
        "help": "truncation: after the cap, append '\\n\\nThe final answer is: $\\boxed{' and decode the answer "
                "(this project's variant); default: a plain cap, as in the paper"})
    scale_max_new_tokens: bool = field(default=False, metadata={
        "help": "tokenskip: decode with max_new_tokens × γ, as the reference does on MATH (default: the same cap for every γ)"})

    def validate(self) -> None:
        super().validate()
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {METHODS}, got {self.method!r}")
        if self.ratios is not None:
            self.ratios = [validate_ratio(r) for r in self.ratios]
        if self.method in ("tokenskip", "budget") and not self.adapter:
            raise ValueError(f"--method {self.method} needs --adapter DIR (the trained LoRA adapter)")
        if self.method == "budget":
            if not self.budgets or any(b < 1 for b in self.budgets):
                raise ValueError(f"--method budget needs --budgets N [N ...], each >= 1, got {self.budgets}")
            if not self.length_model and self.adapter and (Path(self.adapter) / "length_model.json").is_file():
                self.length_model = str(Path(self.adapter) / "length_model.json")
            if not self.length_model:
                raise ValueError("--method budget needs --length-model (a 'tokenskip fit-length' JSON, or the "
                                 "original CoTs' predictions.jsonl)")
        if self.adapter and not Path(self.adapter).exists():
            raise FileNotFoundError(f"adapter folder not found: {self.adapter}")

    def backend_kwargs(self, adapter: str | None = None, merge_adapter: bool = True) -> dict:
        return {**super().backend_kwargs(adapter, merge_adapter), "force_adapter": self.force_adapter}

    @property
    def resolved_ratios(self) -> list[float]:
        if self.method in ("original", "budget", "nocot"):
            return []
        if self.ratios:
            return list(self.ratios)
        return PAPER_RATIOS if self.method == "tokenskip" else [r for r in PAPER_RATIOS if r < 1.0]


def run_dir(out: str | Path, benchmark: str, method: str, ratio: float | None = None) -> Path:
    """Folder of one (benchmark, method, γ) run under ``out``."""
    if method == "budget":
        return Path(out) / benchmark / "budget" / f"budget-{int(ratio)}"
    base = Path(out) / benchmark / method
    return base if method in ("original", "nocot") else base / f"ratio-{format_ratio(ratio)}"


#: The truncation baseline decodes as budget mode does: CoT capped, then the answer line forced (module docstring).
TruncatingBackend = BudgetEngine


class ForcedAnswerBackend:
    """Wraps a backend for the ``nocot`` control: prompts end with the opened answer line, which is put
    back in front of each generated text (and the ``}`` closed when missing) so grading reads it as usual."""

    def __init__(self, inner: GenerationBackend, opener: str):
        self.inner, self.opener = inner, opener
        self.tokenizer, self.batch_size, self.name = inner.tokenizer, inner.batch_size, inner.name
        self.count_tokens = inner.count_tokens

    def generate(self, prompts: Sequence[str], max_new_tokens, adapter=None) -> list[Generation]:
        out = []
        for g in self.inner.generate(prompts, max_new_tokens):
            text = self.opener + g.text + ("" if "}" in g.text else "}")
            out.append(Generation(text, g.num_tokens, g.latency_s, g.finish_reason, list(g.token_ids)))
        return out


def _read_rows(path: Path) -> dict[str, dict]:
    return {r["id"]: r for _, r in iter_jsonl(path)} if path.exists() else {}


def refresh_act_ratios(out: str | Path, benchmark: str) -> None:
    """(Re)compute ``act_ratio`` in every metrics.json under ``out/benchmark`` against its original run.

    ActRatio = mean CoT tokens of the run ÷ mean CoT tokens of ``original`` over the ids both have
    (paper's definition; docs/method.md step 7). Left ``null`` when there is no original run.
    """
    root = Path(out) / benchmark
    orig = _read_rows(root / "original" / "predictions.jsonl")
    for mpath in sorted(root.rglob("metrics.json")):
        pred = mpath.with_name("predictions.jsonl")
        if not pred.exists():
            continue
        m = read_json(mpath)
        wanted = set(m.get("ids") or [])
        rows = {k: v for k, v in _read_rows(pred).items() if not wanted or k in wanted}
        common = [k for k in rows if k in orig]
        act = None
        if common:
            base = sum(orig[k]["cot_tokens"] for k in common)
            act = (sum(rows[k]["cot_tokens"] for k in common) / base) if base else None
        if m.get("act_ratio") != act or "act_ratio" not in m:
            m["act_ratio"] = act
            m["act_ratio_n"] = len(common)
            write_json_atomic(mpath, m)


def adapter_hash(folder: str | Path) -> str:
    """Hash of a peft adapter's config and weights (not of checkpoints or logs beside them)."""
    folder = Path(folder)
    parts = [folder / n for n in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")]
    parts = [p for p in parts if p.exists()]
    return "+".join(file_hash(p) for p in parts) if parts else file_hash(folder)


def _settings(cfg: EvaluateConfig, ratio: float | None, extra: dict | None = None) -> dict:
    s = {"stage": "evaluate", "method": cfg.method, "ratio": ratio, "model": cfg.model,
         "adapter": adapter_hash(cfg.adapter) if cfg.adapter and cfg.method in ("tokenskip", "budget") else None,
         "benchmark": cfg.benchmark, "data": data_identity(cfg), "max_new_tokens": cfg.resolved_max_new_tokens,
         "dtype": cfg.dtype_choice().dtype, "backend": cfg.backend, "system_prompt": cfg.system_prompt}
    if cfg.stop:  # only when set, so runs made before --stop existed keep their fingerprint
        s["stop"] = cfg.stop
    if cfg.prompt_style != "chat-template":  # likewise
        s["prompt_style"] = cfg.prompt_style
    if cfg.method in ("tokenskip", "budget"):
        s["marker_delimiter"] = cfg.marker_delimiter
    if cfg.method == "truncation":
        s["truncation"] = truncation_variant(cfg)
        if cfg.force_answer:
            s["answer_max_tokens"] = cfg.answer_max_tokens
    if cfg.method == "nocot":
        s["answer_max_tokens"] = cfg.answer_max_tokens
    if cfg.method == "tokenskip" and cfg.scale_max_new_tokens:
        s["max_new_tokens"] = scaled_max_new_tokens(cfg.resolved_max_new_tokens, ratio)
        s["scale_max_new_tokens"] = True
    return {**s, **(extra or {})}


def truncation_variant(cfg: EvaluateConfig) -> str:
    """``plain-cap`` (the paper's truncation) or ``force-answer`` (``--force-answer``)."""
    return "force-answer" if cfg.force_answer else "plain-cap"


def scaled_max_new_tokens(cap: int, ratio: float) -> int:
    """The reference's MATH cap for TokenSkip at γ: ``int(cap × γ)`` tokens (at least 1)."""
    return max(1, int(cap * validate_ratio(ratio)))


def _metrics_extra(cfg: EvaluateConfig, method: str, ratio: float | None, problems) -> dict:
    extra = {"truncation": truncation_variant(cfg)} if method == "truncation" else {}
    cap = cfg.resolved_max_new_tokens
    if method == "tokenskip" and cfg.scale_max_new_tokens:
        cap = scaled_max_new_tokens(cap, ratio)
    return extra | {"benchmark": cfg.benchmark, "method": method, "ratio": ratio, "model": cfg.model,
            "adapter": cfg.adapter if method in ("tokenskip", "budget") else None, **cfg.dtype_record(),
            "backend": cfg.backend,
            "max_new_tokens": cap, "latency_mode": cfg.latency_mode,
            "settings": to_dict(cfg) | {"method": method},
            "ids": [p.id for p in problems]}


def run_evaluate(cfg: EvaluateConfig, backend: GenerationBackend | None = None) -> list[dict]:
    """Evaluate ``cfg.method`` at each of its γ; returns one metrics dict per run (see module docstring).

    ``backend`` (optional) is used for base-model methods; tokenskip loads its own backend with the
    adapter, unless ``backend`` is a vLLM engine started with LoRA enabled (``enable_lora=True``), which
    then serves the adapter per request.

    Raises:
        ValueError / FileNotFoundError: invalid settings, missing adapter or data.
    """
    cfg.validate()
    if not cfg.out:
        raise ValueError("--out is required")
    if cfg.backend == "hf":  # before data and model load (vLLM picks its own platform)
        check_device(cfg.device)
    fmt = resolve_prompt_format(cfg.adapter if cfg.method in ("tokenskip", "budget") else None,
                                cfg.system_prompt, cfg.marker_delimiter)
    cfg.system_prompt, cfg.marker_delimiter = fmt.system_prompt, fmt.marker_delimiter  # recorded in settings
    length_model = load_length_model(cfg.length_model) if cfg.method == "budget" else None
    configure_threads(cfg.threads)
    problems = load_problems(cfg.benchmark, cfg.data, cfg.split, cfg.limit, cfg.offset)
    owned: list[GenerationBackend] = []

    def base_backend() -> GenerationBackend:
        nonlocal backend
        if backend is None:
            backend = get_backend(cfg.backend, **cfg.backend_kwargs())
            owned.append(backend)
        return backend

    results = []
    try:
        if cfg.method in ("original", "truncation"):
            results.append(_run_original(cfg, problems, base_backend))
        if cfg.method == "prompt":
            for r in cfg.resolved_ratios:
                b = base_backend()
                prompts = [styled_prompt(b.tokenizer, p.question, None, cfg.system_prompt,
                                         instruction=prompt_reduction_instruction(r), style=cfg.prompt_style,
                                         model=cfg.model) for p in problems]
                results.append(_run_one(cfg, problems, prompts, b, r, cfg.resolved_max_new_tokens))
        elif cfg.method == "truncation":
            orig_rows = _read_rows(run_dir(cfg.out, cfg.benchmark, "original") / "predictions.jsonl")
            orig_fp = read_json(run_dir(cfg.out, cfg.benchmark, "original") / "predictions.state.json")["fingerprint"]
            for r in cfg.resolved_ratios:
                b = TruncatingBackend(base_backend(), cfg.answer_max_tokens) if cfg.force_answer else base_backend()
                caps = [max(1, math.ceil(r * orig_rows[p.id]["cot_tokens"])) for p in problems]
                prompts = [orig_rows[p.id]["prompt"] for p in problems]

                def hook(p, row, cap_by_id=dict(zip([p.id for p in problems], caps))):
                    row["cap"] = cap_by_id[p.id]
                    row["original_cot_tokens"] = orig_rows[p.id]["cot_tokens"]
                    return row

                results.append(_run_one(cfg, problems, prompts, b, r, caps, hook, {"original": orig_fp}))
        elif cfg.method == "nocot":
            b = base_backend()
            opener = FORCE_ANSWER.lstrip()
            prompts = [build_prompt(b.tokenizer, p.question, None, cfg.system_prompt) + opener for p in problems]
            results.append(_run_one(cfg, problems, prompts, ForcedAnswerBackend(b, opener), None,
                                    cfg.answer_max_tokens))
        elif cfg.method in ("tokenskip", "budget"):
            if backend is not None and getattr(backend, "lora", False):
                tb = backend   # a vLLM engine started with LoRA serves the adapter per request
            else:
                tb = get_backend(cfg.backend, **cfg.backend_kwargs(adapter=cfg.adapter,
                                                                   merge_adapter=cfg.merge_adapter))
                owned.append(tb)
            for r in cfg.resolved_ratios:
                if cfg.prompt_style == "reference":
                    prompts = [styled_prompt(tb.tokenizer, p.question, r, fmt.system_prompt, fmt.instruction,
                                             fmt.marker_delimiter, style="reference", model=cfg.model)
                               for p in problems]
                else:
                    prompts = [render_prompt(tb.tokenizer, fmt, question=p.question, ratio=r) for p in problems]
                cap = (scaled_max_new_tokens(cfg.resolved_max_new_tokens, r) if cfg.scale_max_new_tokens
                       else cfg.resolved_max_new_tokens)
                results.append(_run_one(cfg, problems, prompts, tb, r, cap, adapter=cfg.adapter))
            for n in (cfg.budgets or []) if cfg.method == "budget" else []:
                results.append(_run_budget(cfg, problems, tb, fmt, length_model, n))
    finally:
        for b in owned:
            b.close()
    refresh_act_ratios(cfg.out, cfg.benchmark)
    if cfg.method in ("prompt", "tokenskip", "budget") and not (run_dir(cfg.out, cfg.benchmark, "original")
                                                     / "predictions.jsonl").exists():
        logger.warning("no original run under %s: act_ratio stays null until one exists "
                       "(tokenskip evaluate --method original --out %s)", cfg.out, cfg.out)
    return [read_json(Path(m["_dir"]) / "metrics.json") | {"_dir": m["_dir"]} for m in results]


def _run_original(cfg: EvaluateConfig, problems, base_backend) -> dict:
    d = run_dir(cfg.out, cfg.benchmark, "original")
    settings = _settings(cfg, None) | {"method": "original", "adapter": None}
    settings.pop("answer_max_tokens", None)
    settings.pop("truncation", None)
    b = base_backend()
    warn_default_system(b.tokenizer, cfg.prompt_style, cfg.system_prompt, logger)
    prompts = [styled_prompt(b.tokenizer, p.question, None, cfg.system_prompt, style=cfg.prompt_style,
                             model=cfg.model) for p in problems]
    with ResumableJsonl(d / "predictions.jsonl", settings) as w:
        rows = run_rows(problems, prompts, w, b, cfg.benchmark, cfg.resolved_max_new_tokens,
                        desc=f"{cfg.benchmark} original")
    m = write_metrics(d, rows, _metrics_extra(cfg, "original", None, problems))
    return m | {"_dir": str(d)}


def _run_budget(cfg: EvaluateConfig, problems, engine, fmt, length_model, budget: int) -> dict:
    """Method ``budget`` at one budget N: γ per question from the length model, CoT capped at N."""
    ratios = {p.id: plan_ratio(Query(question=p.question, max_cot_tokens=budget), fmt, length_model)
              for p in problems}
    prompts = [render_prompt(engine.tokenizer, fmt, question=p.question, ratio=ratios[p.id]) for p in problems]

    def hook(p, row):
        row.update(budget=budget, ratio=ratios[p.id], predicted_cot_tokens=round(length_model.predict(p.question), 1),
                   within_budget=row["cot_tokens"] <= budget)
        return row

    d = run_dir(cfg.out, cfg.benchmark, "budget", budget)
    extra = {"budget": budget, "length_model": length_model.weights, "answer_max_tokens": cfg.answer_max_tokens}
    with ResumableJsonl(d / "predictions.jsonl", _settings(cfg, None, extra)) as w:
        rows = run_rows(problems, prompts, w, BudgetEngine(engine, cfg.answer_max_tokens), cfg.benchmark,
                        budget, adapter=cfg.adapter, row_hook=hook)
    within = sum(bool(r["within_budget"]) for r in rows) / len(rows) if rows else None
    m = write_metrics(d, rows, _metrics_extra(cfg, "budget", None, problems)
                      | {"budget": budget, "within_budget": within,
                         "mean_ratio": sum(r["ratio"] for r in rows) / len(rows) if rows else None,
                         "length_model_metrics": length_model.metrics})
    return m | {"_dir": str(d)}


def _run_one(cfg, problems, prompts, backend, ratio, caps, hook=None, extra_settings=None, adapter=None) -> dict:
    d = run_dir(cfg.out, cfg.benchmark, cfg.method, ratio)
    with ResumableJsonl(d / "predictions.jsonl", _settings(cfg, ratio, extra_settings)) as w:
        rows = run_rows(problems, prompts, w, backend, cfg.benchmark, caps, adapter=adapter, row_hook=hook,
                        desc=f"{cfg.benchmark} {cfg.method}" + ("" if ratio is None else f" γ={format_ratio(ratio)}"))
    m = write_metrics(d, rows, _metrics_extra(cfg, cfg.method, ratio, problems))
    return m | {"_dir": str(d)}


def add_arguments(parser) -> None:
    add_dataclass_args(parser, EvaluateConfig)


def run_cli(args) -> int:
    cfg = dataclass_from_args(EvaluateConfig, args)
    for m in run_evaluate(cfg):
        label = m["method"] + ("" if m.get("ratio") is None else f" γ={format_ratio(m['ratio'])}")
        if m.get("budget") is not None:
            label += f" N={m['budget']} within_budget={100 * (m.get('within_budget') or 0):.1f}%"
        print_metrics(m, f"[{m['benchmark']}] {label}: ")
        say(f"    -> {m['_dir']}")
    return 0
