"""``nocot``: control without any CoT. The base model's turn is opened with ``The final answer is: $\\boxed{``
and at most ``answer_max_tokens`` tokens are decoded (the truncation baseline at a cap of 0 tokens), so CoT
tokens are 0 and the accuracy says how much of the task the model solves without reasoning.

A think model (the run's CoT format resolves to ``think``: :func:`tokenskip.task.think.resolve_cot_format`) gets an
empty, closed think block before the answer line — ``<think>\\n\\n</think>\\n\\n``, what Qwen3's template writes
with ``enable_thinking`` false; after an R1-Distill generation prompt, which opened the block, only its closing part
(:func:`tokenskip.task.think.empty_block`). Its output then starts with ``</think>\\n\\n``, so grading finds a closed
block with no thinking (0 CoT tokens) and the answer after it.
"""

from __future__ import annotations

from tokenskip.methods import Method, register
from tokenskip.task.think import THINK_CLOSE


def _opener() -> str:
    from tokenskip.task.prompts import FORCE_ANSWER

    return FORCE_ANSWER.lstrip()


def _block_prefix(prompt: str) -> str:
    """``</think>\\n\\n`` when the prompt ends (before the answer line) with a closed think block, else ``""``."""
    return THINK_CLOSE + "\n\n" if prompt.removesuffix(_opener()).rstrip().endswith(THINK_CLOSE) else ""


@register
class NoCoT(Method):
    name, label, rank = "nocot", "No CoT", 5
    color, marker = "tab:brown", "x"

    def prompt(self, tokenizer, problem, ratio, cfg):
        from tokenskip.task.prompts import build_prompt
        from tokenskip.task.think import empty_block, resolve_cot_format

        base = build_prompt(tokenizer, problem.question, None, cfg.system_prompt)
        if resolve_cot_format(getattr(cfg, "cot_format", "auto"), tokenizer) == "think":
            base += empty_block(base)
        return base + _opener()

    def caps(self, problems, ratio, cfg, original):
        return cfg.answer_max_tokens

    def settings(self, cfg) -> dict:
        return {"answer_max_tokens": cfg.answer_max_tokens}

    def can_sample(self, cfg) -> bool:
        # a forced answer line is decoded greedily
        return False

    def generate(self, backend, prompts, caps, adapter, cfg):
        # the opened answer line (after the closed think block, for a think model) is put back in front of each
        # output (and the brace closed) so grading reads it
        from tokenskip.engines import Generation

        return [Generation(_block_prefix(p) + _opener() + g.text + ("" if "}" in g.text else "}"), g.num_tokens,
                           g.latency_s, g.finish_reason, list(g.token_ids))
                for p, g in zip(prompts, backend.generate(prompts, caps))]
