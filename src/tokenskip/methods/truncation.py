"""``truncation``: the base model's CoT capped at ⌈γ × that question's original CoT tokens⌉ (paper §5 baseline).

Decoding is greedy with that cap, so the kept part is exactly the original CoT's prefix, and nothing is
appended: the paper's baseline (default; ``truncation: plain-cap`` in metrics.json). With ``--force-answer``,
if the model did not end its turn within the cap, ``\\n\\nThe final answer is: $\\boxed{`` is appended and
at most ``answer_max_tokens`` more tokens are decoded; the answer is extracted from that
(``truncation: force-answer``; the report labels it "Truncation + forced answer"). The prompts are the
original run's (the same paper instruction); that run is made first when missing.
"""

from __future__ import annotations

import math

from tokenskip.contract.ratios import paper_grid
from tokenskip.methods import Method, register


def truncation_variant(cfg) -> str:
    """``plain-cap`` (the paper's truncation) or ``force-answer`` (``--force-answer``)."""
    return "force-answer" if cfg.force_answer else "plain-cap"


@register
class Truncation(Method):
    name, label, rank = "truncation", "Truncation", 20
    needs_original = True
    grid = tuple(paper_grid(include_one=False))
    color, marker = "tab:red", "v"

    def caps(self, problems, ratio, cfg, original):
        return [max(1, math.ceil(ratio * original[p.id]["cot_tokens"])) for p in problems]

    def settings(self, cfg) -> dict:
        s = {"truncation": truncation_variant(cfg)}
        if cfg.force_answer:
            s["answer_max_tokens"] = cfg.answer_max_tokens
        return s

    def plan(self, tokenizer, problems, key, cfg, original):
        plan = super().plan(tokenizer, problems, key, cfg, original)
        variant = truncation_variant(cfg)
        plan.metrics = lambda rows: {"truncation": variant}  # the report's label follows it
        return plan

    def row_hook(self, ratio, caps, problems, original):
        cap_by_id = dict(zip([p.id for p in problems], caps))

        def hook(p, row):
            row["cap"] = cap_by_id[p.id]
            row["original_cot_tokens"] = original[p.id]["cot_tokens"]
            return row

        return hook

    def can_sample(self, cfg) -> bool:
        # a forced answer line is decoded greedily
        return not cfg.force_answer

    def generate(self, backend, prompts, caps, adapter, cfg):
        if not cfg.force_answer:  # the paper's plain cap
            return super().generate(backend, prompts, caps, adapter, cfg)
        # the one forced-answer rule, shared with budget mode and the server (tokenskip.generation.inference)
        from tokenskip.generation.inference import ForcedAnswerEngine

        return ForcedAnswerEngine(backend, cfg.answer_max_tokens).generate(prompts, caps)
