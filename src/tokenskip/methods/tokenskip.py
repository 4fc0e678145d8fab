"""``tokenskip``: the LoRA adapter trained on γ-compressed CoTs, prompted with γ's marker (paper §3).

Prompts follow the format stored next to the adapter (``prompt_format.json``, :mod:`tokenskip.task.prompt_format`),
with ``--system-prompt`` / ``--marker-delimiter`` overriding it; ``--prompt-style reference`` renders that format
with the reference's hand-written strings. ``--scale-max-new-tokens`` caps decoding at ``int(max_new_tokens × γ)``
(the reference on MATH; ``max_new_tokens`` in the run's settings and metrics.json is that cap).

γ control by a calibrated LoRA scale: when the adapter folder holds ``gamma_calibration.json`` (``tokenskip
calibrate``, :mod:`tokenskip.finetune.calibration`), γ is reached by scaling the adapter's LoRA delta by
``s = scale_for(γ)`` under the calibration's marker (``marker_ratio``, e.g. 0.5) instead of writing γ's own
marker; at ``s = 0`` the model is the target itself and the prompt is the plain one (the Original run's
equivalent, no adapter). The scale and marker enter the run's settings (fingerprint) and metrics
(``lora_scale``, ``marker_ratio``); :meth:`TokenSkip.adapter_for` names the adapter folder each γ decodes with.
"""

from functools import lru_cache
from pathlib import Path

from tokenskip.contract.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, GAMMA_CALIBRATION
from tokenskip.contract.ratios import GammaControl, paper_grid, validate_ratio
from tokenskip.methods import Method, register


def scaled_max_new_tokens(cap: int, ratio: float) -> int:
    """The reference's MATH cap for TokenSkip at γ: ``int(cap × γ)`` tokens (at least 1)."""
    return max(1, int(cap * validate_ratio(ratio)))


@lru_cache(maxsize=8)
def adapter_format(adapter, system_prompt, marker_delimiter):
    """The adapter's prompt format with the flags that were given (read once per adapter and flags)."""
    from tokenskip.task.prompt_format import resolve_prompt_format

    return resolve_prompt_format(adapter, system_prompt, marker_delimiter)


def gamma_control(adapter: str | None, ratio: float | None) -> GammaControl | None:
    """The :class:`GammaControl` of γ = ``ratio`` for ``adapter``; ``None`` when the adapter has no calibration
    (then γ's own marker and the adapter as trained are used, as before); see
    :meth:`tokenskip.finetune.calibration.GammaCalibration.control` (``tokenskip serve`` maps a request's γ with it
    too)."""
    if not adapter or ratio is None:
        return None
    folder = Path(adapter)
    stamp = tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in (
        folder / GAMMA_CALIBRATION, folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS))
    if not stamp[0]:
        return None
    return _control(str(adapter), float(ratio), stamp)


@lru_cache(maxsize=64)
def _control(adapter: str, ratio: float, stamp: tuple) -> GammaControl:
    from tokenskip.finetune.calibration import GammaCalibration

    return GammaCalibration.load(adapter).control(adapter, ratio)


@register
class TokenSkip(Method):
    name, label, rank = "tokenskip", "TokenSkip", 30
    uses_adapter = True
    grid = tuple(paper_grid())
    ratio_requested = True
    color, marker = "tab:blue", "o"

    def adapter_for(self, cfg, key) -> str | None:
        """The adapter folder the run at γ = ``key`` decodes with: ``--adapter``, or its copy scaled for γ when
        it is calibrated (``None`` at scale 0: the target model itself)."""
        ctl = gamma_control(cfg.adapter, key)
        return cfg.adapter if ctl is None else ctl.adapter

    def prompt(self, tokenizer, problem, ratio, cfg):
        ctl = gamma_control(cfg.adapter, ratio)
        if ctl is not None and ctl.marker_ratio is None:  # scale 0: the target itself, the plain prompt
            return super().prompt(tokenizer, problem, None, cfg)
        return self.marker_prompt(tokenizer, problem, ratio if ctl is None else ctl.marker_ratio, cfg)

    def marker_prompt(self, tokenizer, problem, ratio, cfg):
        """The prompt with γ = ``ratio``'s marker in the adapter's format (no calibration applied)."""
        from tokenskip.generation.inference import render_prompt

        fmt = adapter_format(cfg.adapter, cfg.system_prompt, cfg.marker_delimiter)
        if cfg.prompt_style == "reference":
            from tokenskip.task.prompts import styled_prompt

            return styled_prompt(tokenizer, problem.question, ratio, fmt.system_prompt, fmt.instruction,
                                 fmt.marker_delimiter, style="reference", model=cfg.model)
        return render_prompt(tokenizer, fmt, question=problem.question, ratio=ratio)

    def caps(self, problems, ratio, cfg, original):
        if cfg.scale_max_new_tokens:
            return scaled_max_new_tokens(cfg.resolved_max_new_tokens, ratio)
        return cfg.resolved_max_new_tokens

    def plan(self, tokenizer, problems, key, cfg, original):
        plan = super().plan(tokenizer, problems, key, cfg, original)
        if cfg.scale_max_new_tokens:  # the cap decides the rows and is the run's max_new_tokens
            plan.settings = {**plan.settings, "max_new_tokens": plan.caps, "scale_max_new_tokens": True}
            plan.metrics = lambda rows, cap=plan.caps: {"max_new_tokens": cap}
        ctl = gamma_control(cfg.adapter, key)
        if ctl is not None:  # the scale and marker decide the rows and are reported
            extra = {"lora_scale": ctl.scale, "marker_ratio": ctl.marker_ratio}
            plan.settings = {**plan.settings, **extra}
            more = plan.metrics
            plan.metrics = lambda rows: {**(more(rows) if more else {}), **extra}
        return plan

    def settings(self, cfg) -> dict:
        return {"marker_delimiter": adapter_format(cfg.adapter, cfg.system_prompt,
                                                   cfg.marker_delimiter).marker_delimiter}
