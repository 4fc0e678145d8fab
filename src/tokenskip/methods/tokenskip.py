"""``tokenskip``: the LoRA adapter trained on γ-compressed CoTs, prompted with γ's marker (paper §3).

Prompts follow the format stored next to the adapter (``prompt_format.json``, :mod:`tokenskip.task.prompt_format`),
with ``--system-prompt`` / ``--marker-delimiter`` overriding it; ``--prompt-style reference`` renders that format
with the reference's hand-written strings. ``--scale-max-new-tokens`` caps decoding at ``int(max_new_tokens × γ)``
(the reference on MATH; ``max_new_tokens`` in the run's settings and metrics.json is that cap).
"""

from functools import lru_cache

from tokenskip.contract.ratios import paper_grid, validate_ratio
from tokenskip.methods import Method, register


def scaled_max_new_tokens(cap: int, ratio: float) -> int:
    """The reference's MATH cap for TokenSkip at γ: ``int(cap × γ)`` tokens (at least 1)."""
    return max(1, int(cap * validate_ratio(ratio)))


@lru_cache(maxsize=8)
def adapter_format(adapter, system_prompt, marker_delimiter):
    """The adapter's prompt format with the flags that were given (read once per adapter and flags)."""
    from tokenskip.task.prompt_format import resolve_prompt_format

    return resolve_prompt_format(adapter, system_prompt, marker_delimiter)


@register
class TokenSkip(Method):
    name, label, rank = "tokenskip", "TokenSkip", 30
    uses_adapter = True
    grid = tuple(paper_grid())
    ratio_requested = True
    color, marker = "tab:blue", "o"

    def prompt(self, tokenizer, problem, ratio, cfg):
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
        return plan

    def settings(self, cfg) -> dict:
        return {"marker_delimiter": adapter_format(cfg.adapter, cfg.system_prompt,
                                                   cfg.marker_delimiter).marker_delimiter}
