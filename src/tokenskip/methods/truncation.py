"""``truncation``: the base model's CoT capped at ⌈γ × that question's original CoT tokens⌉ (paper §5 baseline).

Decoding is greedy with that cap, so the kept part is exactly the original CoT's prefix. If the model
did not end its turn within the cap, ``\\n\\nThe final answer is: $\\boxed{`` is appended and at most
``answer_max_tokens`` more tokens are decoded; the answer is extracted from that. The prompts are the
original run's (the same paper instruction); that run is made first when missing.
"""

from __future__ import annotations

import math

from tokenskip.methods import Method, register
from tokenskip.ratios import paper_grid


@register
class Truncation(Method):
    name, label, rank = "truncation", "Truncation", 20
    needs_original = True
    grid = tuple(paper_grid(include_one=False))
    color, marker = "tab:red", "v"

    def caps(self, problems, ratio, cfg, original):
        return [max(1, math.ceil(ratio * original[p.id]["cot_tokens"])) for p in problems]

    def settings(self, cfg) -> dict:
        return {"answer_max_tokens": cfg.answer_max_tokens}

    def row_hook(self, ratio, caps, problems, original):
        cap_by_id = dict(zip([p.id for p in problems], caps))

        def hook(p, row):
            row["cap"] = cap_by_id[p.id]
            row["original_cot_tokens"] = original[p.id]["cot_tokens"]
            return row

        return hook

    def generate(self, backend, prompts, caps, adapter, cfg):
        # the one forced-answer rule, shared with budget mode and the server (tokenskip.inference)
        from tokenskip.inference import BudgetEngine

        return BudgetEngine(backend, cfg.answer_max_tokens).generate(prompts, caps)
