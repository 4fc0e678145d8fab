"""``tokenskip calibrate``: fit the γ → LoRA-scale map of a TokenSkip adapter on a validation split.

γ control by a calibrated LoRA scale (CoT-Valve style, arXiv 2502.09601; :mod:`tokenskip.finetune.calibration`):
a {1.0, 0.5} adapter's LoRA delta scaled by ``s`` ∈ [0, 1] under the γ-0.5 marker moves the model between the
target itself (``s = 0``: the full CoT) and the adapter as trained (``s = 1``: about γ 0.5). This command decodes
the validation questions once with the target model (the Original run: plain prompt, no adapter) and once per
``--scales`` value with the scaled adapter under the ``--marker-ratio`` marker, measures ActRatio (mean CoT tokens
÷ the Original's on the same questions) and accuracy per scale, fits the calibration and stores it in the adapter
folder (``gamma_calibration.json``), where ``evaluate`` (method tokenskip) picks it up: a user still asks for γ.

It builds on the cores (the rollout loop, the methods' prompts, the engines), not on ``stages.evaluate``: the lab
does not import stages. Layout under ``--out``: ``original/`` and ``scale-<s>/`` (``predictions.jsonl``, resumable,
and ``metrics.json``) and a copy of the fitted ``gamma_calibration.json``.

Example::

    tokenskip calibrate --model runs/lab/merge --adapter runs/lab/train --benchmark gsm8k \\
        --data runs/lab/lab-data/validation.jsonl --limit 100 --scales 0.5 0.75 0.875 1.0 1.1 --out runs/lab/calibrate
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path

from tokenskip.contract.console import say
from tokenskip.contract.io import ResumableJsonl, write_json_atomic
from tokenskip.contract.layout import CALIBRATION_SCALE_PREFIX, GAMMA_CALIBRATION, ORIGINAL, PREDICTIONS, adapter_hash
from tokenskip.contract.ratios import format_ratio, paper_grid, validate_ratio
from tokenskip.contract.records import act_ratio
from tokenskip.engines import engine_spec, get_backend
from tokenskip.engines.models import configure_threads
from tokenskip.finetune.calibration import GammaCalibration, fit_calibration, format_scale, scaled_adapter
from tokenskip.generation.rollout import GenerationConfig, row_settings, run_rows, write_metrics
from tokenskip.methods import get_method
from tokenskip.task.data import load_problems

#: the largest LoRA scale a calibration may measure (the lab's adapter garbled its CoTs from 1.3 on)
MAX_SCALE = 2.0


@dataclass
class CalibrateConfig(GenerationConfig):
    """Settings of ``tokenskip calibrate``: the generation settings plus the adapter, scales and marker."""

    adapter: str | None = field(default=None, metadata={"help": "TokenSkip LoRA adapter folder (trained on "
                                                                "γ ∈ {1.0, 0.5}); the calibration is saved there"})
    scales: list[float] = field(default_factory=lambda: [0.5, 0.75, 0.875, 1.0, 1.1], metadata={
        "help": "LoRA scales to measure (0 = the target itself, always measured); default: the grid that was "
                "monotone on the lab's validation split (below 0.5 ActRatio was flat, above 1.15 the CoTs garbled: "
                "docs/lab/experiments.md); above 1 extrapolates the adapter's delta"})
    marker_ratio: float = field(default=0.5, metadata={"help": "the γ marker written in the prompt at every scale"})
    marker_delimiter: str | None = field(default=None, metadata={
        "help": "delimiter of the γ marker (default: the adapter's prompt_format.json)"})
    merge_adapter: bool = field(default=True, metadata={"help": "merge each scaled adapter into the weights (HF; "
                                                                "vLLM on CPU)"})
    force_adapter: bool = field(default=False, metadata={
        "help": "load an adapter whose adapter_config.json names another base model"})
    save: bool = field(default=True, metadata={"help": "write gamma_calibration.json into the adapter folder"})
    machine: str | None = field(default=None, metadata={"help": "free text recorded with the calibration (default: "
                                                                "the CPU/GPU, engine and dtype)"})

    def validate(self) -> None:
        super().validate()
        if not self.adapter:
            raise ValueError("--adapter DIR is required (the TokenSkip adapter to calibrate)")
        if not self.out:
            raise ValueError("--out DIR is required (the calibration's work folder)")
        validate_ratio(self.marker_ratio)
        if engine_spec(self.backend).needs_base_url:
            raise ValueError(f"--backend {self.backend}: calibrate loads scaled adapters locally (use hf or vllm)")
        if not self.scales or any(not 0 <= s <= MAX_SCALE for s in self.scales):
            raise ValueError(f"--scales must be values in [0, {MAX_SCALE:g}], got {self.scales}")

    def backend_kwargs(self, adapter: str | None = None, merge_adapter: bool = True) -> dict:
        return {**super().backend_kwargs(adapter, merge_adapter), "force_adapter": self.force_adapter}


def _machine(dtype: str, backend: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}; engine {backend}, {dtype}"


def _measure(cfg: CalibrateConfig, name: str, engine, problems, prompts, adapter: str | None, extra: dict):
    """Decode (resumably) one setting into ``<out>/<name>/``; returns its rows."""
    d = Path(cfg.out) / name
    settings = {**row_settings(cfg, "calibrate"), "adapter": adapter_hash(cfg.adapter) if adapter else None,
                **extra}
    with ResumableJsonl(d / PREDICTIONS, settings) as w:
        rows = run_rows(problems, prompts, w, engine, cfg.bench.grader, cfg.resolved_max_new_tokens,
                        adapter=adapter, desc=f"calibrate {name}")
    write_metrics(d, rows, {"benchmark": cfg.bench.name, "method": extra.get("method"), "model": cfg.model,
                            "adapter": adapter, "backend": cfg.backend, "grader": cfg.bench.grader,
                            "max_new_tokens": cfg.resolved_max_new_tokens, "ids": [p.id for p in problems],
                            "settings": settings})
    return rows


def _accuracy(rows: list[dict]) -> float:
    return sum(bool(r["correct"]) for r in rows) / len(rows) if rows else 0.0


def run_calibrate(cfg: CalibrateConfig) -> GammaCalibration:
    """Measure ActRatio and accuracy per scale, fit the calibration, save it (see module docstring).

    Raises:
        ValueError / FileNotFoundError: bad settings, a missing adapter or data, an adapter that cannot be
            scaled (:func:`tokenskip.finetune.calibration.scaled_config`), no scale > 0.
    """
    cfg.validate()
    if not Path(cfg.adapter).is_dir():
        raise FileNotFoundError(f"adapter folder not found: {cfg.adapter}")
    engine_spec(cfg.backend).check_settings(cfg.device, cfg.base_url)
    from tokenskip.methods.tokenskip import adapter_format

    fmt = adapter_format(cfg.adapter, cfg.system_prompt, cfg.marker_delimiter)
    cfg = dataclasses.replace(cfg, system_prompt=fmt.system_prompt, marker_delimiter=fmt.marker_delimiter)
    scales = sorted({float(s) for s in cfg.scales} - {0.0})
    if not scales:
        raise ValueError("--scales needs at least one scale > 0 (scale 0 is the Original run, always measured)")
    folders = {s: str(scaled_adapter(cfg.adapter, s)) for s in scales}  # a DoRA adapter fails here, before decoding
    configure_threads(cfg.threads)
    problems = load_problems(cfg.bench, cfg.data, cfg.split, cfg.limit, cfg.offset)
    table, dtype = _measure_all(cfg, problems, folders)
    cal = fit_calibration([row[:3] for row in table], cfg.marker_ratio,
                          split=cfg.split or Path(cfg.data or cfg.bench.name).stem, n=len(problems),
                          machine=cfg.machine or _machine(dtype, cfg.backend))
    write_json_atomic(Path(cfg.out) / GAMMA_CALIBRATION, cal.to_json())
    if cfg.save:
        cal.save(cfg.adapter)
    _show(cal, table, cfg)
    return cal


def _measure_all(cfg: CalibrateConfig, problems, folders: dict[float, str]) -> tuple[list[list[float]], str]:
    """The Original run and one run per scaled adapter: ``[scale, ActRatio, accuracy, mean CoT tokens]`` rows
    (scale 0 first) and the engines' dtype. HF (and vLLM on CPU, merged): an engine per scale, one at a time;
    vLLM with LoRA: one engine, the scaled adapters per request."""
    spec = engine_spec(cfg.backend)
    per_request = not spec.merges_adapter(cfg.merge_adapter)
    base = get_backend(cfg.backend, **cfg.backend_kwargs(),
                       **(spec.lora_kwargs(list(folders.values())) if per_request else {}))
    plain, tokenskip = get_method(ORIGINAL), get_method("tokenskip")
    open_base = True
    try:
        tok, dtype = base.tokenizer, base.capabilities.dtype
        orig = _measure(cfg, ORIGINAL, base, problems, [plain.prompt(tok, p, None, cfg) for p in problems], None,
                        {"method": ORIGINAL})
        marked = [tokenskip.marker_prompt(tok, p, cfg.marker_ratio, cfg) for p in problems]
        orig_tokens = {r["id"]: r["cot_tokens"] for r in orig}
        table = [[0.0, 1.0, _accuracy(orig), _mean_cot(orig)]]
        if not per_request:  # free the base model before loading the scaled ones
            base.close()
            open_base = False
        for s, folder in folders.items():
            engine = base if per_request else get_backend(cfg.backend, **cfg.backend_kwargs(
                adapter=folder, merge_adapter=cfg.merge_adapter))
            try:
                rows = _measure(cfg, f"{CALIBRATION_SCALE_PREFIX}{format_scale(s)}", engine, problems, marked,
                                folder, {"method": "tokenskip", "lora_scale": s, "marker_ratio": cfg.marker_ratio,
                                         "marker_delimiter": cfg.marker_delimiter})
            finally:
                if engine is not base:
                    engine.close()
            act, _ = act_ratio({r["id"]: r["cot_tokens"] for r in rows}, orig_tokens)
            if act is None:
                raise ValueError("calibrate: the Original run wrote no CoT tokens, so ActRatio is undefined")
            table.append([s, act, _accuracy(rows), _mean_cot(rows)])
    finally:
        if open_base:
            base.close()
    return table, dtype


def _mean_cot(rows: list[dict]) -> float:
    return sum(r["cot_tokens"] for r in rows) / len(rows) if rows else 0.0


def _show(cal: GammaCalibration, table, cfg: CalibrateConfig) -> None:
    say(f"[calibrate] {cal.n} questions ({cal.split}), marker γ={format_ratio(cal.marker_ratio)}; {cal.machine}")
    say(f"{'scale':>6} {'ActRatio':>9} {'accuracy':>9} {'CoT tokens':>11}")
    for s, act, acc, cot in table:
        say(f"{s:>6.2f} {act:>9.3f} {100 * acc:>8.1f}% {cot:>11.1f}")
    say("γ → scale: " + ", ".join(f"{format_ratio(g)} → {cal.scale_for(g):.3f}" for g in paper_grid()))
    say(f"    -> {Path(cfg.adapter) / GAMMA_CALIBRATION if cfg.save else Path(cfg.out) / GAMMA_CALIBRATION}")
