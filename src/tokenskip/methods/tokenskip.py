"""``tokenskip``: the LoRA adapter trained on γ-compressed CoTs, prompted with γ's marker (paper §3).

Prompts follow the format stored next to the adapter (``prompt_format.json``, :mod:`tokenskip.prompt_format`),
with ``--system-prompt`` / ``--marker-delimiter`` overriding it.
"""

from functools import lru_cache

from tokenskip.methods import Method, register
from tokenskip.ratios import paper_grid


@lru_cache(maxsize=8)
def adapter_format(adapter, system_prompt, marker_delimiter):
    """The adapter's prompt format with the flags that were given (read once per adapter and flags)."""
    from tokenskip.prompt_format import resolve_prompt_format

    return resolve_prompt_format(adapter, system_prompt, marker_delimiter)


@register
class TokenSkip(Method):
    name, label, rank = "tokenskip", "TokenSkip", 30
    uses_adapter = True
    grid = tuple(paper_grid())
    ratio_requested = True
    color, marker = "tab:blue", "o"

    def prompt(self, tokenizer, problem, ratio, cfg):
        from tokenskip.inference import render_prompt

        fmt = adapter_format(cfg.adapter, cfg.system_prompt, cfg.marker_delimiter)
        return render_prompt(tokenizer, fmt, question=problem.question, ratio=ratio)

    def settings(self, cfg) -> dict:
        return {"marker_delimiter": adapter_format(cfg.adapter, cfg.system_prompt, cfg.marker_delimiter).marker_delimiter}
