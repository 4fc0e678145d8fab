"""``prompt``: the base model told in its instruction to cut its reasoning words by (1 − γ) (paper §5 baseline)."""

from tokenskip.contract.ratios import paper_grid
from tokenskip.methods import Method, register


@register
class PromptReduction(Method):
    name, label, rank = "prompt", "Prompt", 10
    grid = tuple(paper_grid(include_one=False))
    ratio_requested = True
    color, marker = "tab:orange", "s"

    def prompt(self, tokenizer, problem, ratio, cfg):
        from tokenskip.task.prompts import prompt_reduction_instruction, styled_prompt

        return styled_prompt(tokenizer, problem.question, None, cfg.system_prompt,
                             instruction=prompt_reduction_instruction(ratio), style=cfg.prompt_style, model=cfg.model)
