"""``nocot``: control without any CoT. The base model's turn is opened with ``The final answer is: $\\boxed{``
and at most ``answer_max_tokens`` tokens are decoded (the truncation baseline at a cap of 0 tokens), so CoT
tokens are 0 and the accuracy says how much of the task the model solves without reasoning.
"""

from __future__ import annotations

from tokenskip.methods import Method, register


def _opener() -> str:
    from tokenskip.task.prompts import FORCE_ANSWER

    return FORCE_ANSWER.lstrip()


@register
class NoCoT(Method):
    name, label, rank = "nocot", "No CoT", 5
    color, marker = "tab:brown", "x"

    def prompt(self, tokenizer, problem, ratio, cfg):
        from tokenskip.task.prompts import build_prompt

        return build_prompt(tokenizer, problem.question, None, cfg.system_prompt) + _opener()

    def caps(self, problems, ratio, cfg, original):
        return cfg.answer_max_tokens

    def settings(self, cfg) -> dict:
        return {"answer_max_tokens": cfg.answer_max_tokens}

    def can_sample(self, cfg) -> bool:
        # a forced answer line is decoded greedily
        return False

    def generate(self, backend, prompts, caps, adapter, cfg):
        # the opened answer line is put back in front of each output (and the brace closed) so grading reads it
        from tokenskip.engines import Generation

        return [Generation(_opener() + g.text + ("" if "}" in g.text else "}"), g.num_tokens, g.latency_s,
                           g.finish_reason, list(g.token_ids)) for g in backend.generate(prompts, caps)]
