"""``tokenskip``: the LoRA adapter trained on γ-compressed CoTs, prompted with γ's marker (paper §3)."""

from tokenskip.methods import Method, register
from tokenskip.ratios import paper_grid


@register
class TokenSkip(Method):
    name, label, rank = "tokenskip", "TokenSkip", 30
    uses_adapter = True
    grid = tuple(paper_grid())
    ratio_requested = True
    color, marker = "tab:blue", "o"

    def prompt(self, tokenizer, problem, ratio, cfg):
        from tokenskip.prompts import INSTRUCTION, build_prompt

        return build_prompt(tokenizer, problem.question, ratio, cfg.system_prompt, INSTRUCTION, cfg.marker_delimiter)

    def settings(self, cfg) -> dict:
        return {"marker_delimiter": cfg.marker_delimiter}
