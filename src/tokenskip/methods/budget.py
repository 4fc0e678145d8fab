"""``budget``: the adapter with a CoT token budget N per question (``--budgets``): γ = N ÷ the question's
predicted original CoT length (``--length-model``), decoding capped at N and the answer line forced when
the CoT hits it (:mod:`tokenskip.generation.length_model`, :mod:`tokenskip.generation.inference`). Runs go to
``budget/budget-<N>``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tokenskip.contract.layout import LENGTH_MODEL, budget_run_dir
from tokenskip.methods import Method, RunPlan, register
from tokenskip.methods.tokenskip import adapter_format


@lru_cache(maxsize=4)
def _length_model(path: str):
    from tokenskip.generation.length_model import load_length_model

    return load_length_model(path)


def length_model_path(cfg) -> str:
    """``--length-model``, else ``<adapter>/length_model.json`` (resolved when the run starts)."""
    if cfg.length_model:
        return cfg.length_model
    default = Path(cfg.adapter) / LENGTH_MODEL
    if default.is_file():
        return str(default)
    raise FileNotFoundError("--method budget needs --length-model (a 'tokenskip fit-length' JSON, or the original "
                            f"CoTs' predictions.jsonl); none given and no {default}")


@register
class Budget(Method):
    name, label, rank = "budget", "TokenSkip (budget)", 40
    uses_adapter = True
    color, marker = "tab:purple", "P"

    def runs(self, cfg) -> list:
        return list(cfg.budgets)

    def folder(self, out, benchmark, key):
        return budget_run_dir(out, benchmark, key)

    def ratio_of(self, key):
        return None

    def describe(self, key) -> str:
        return f"budget N={key}"

    def plan(self, tokenizer, problems, key, cfg, original):
        from tokenskip.generation.inference import Query, plan_ratio, render_prompt

        fmt = adapter_format(cfg.adapter, cfg.system_prompt, cfg.marker_delimiter)
        lm = _length_model(length_model_path(cfg))
        ratios = {p.id: plan_ratio(Query(question=p.question, max_cot_tokens=key), fmt, lm) for p in problems}

        def hook(p, row):
            row.update(budget=key, ratio=ratios[p.id], predicted_cot_tokens=round(lm.predict(p.question), 1),
                       within_budget=row["cot_tokens"] <= key)
            return row

        def metrics(rows):
            return {"budget": key,
                    "within_budget": sum(bool(r["within_budget"]) for r in rows) / len(rows) if rows else None,
                    "mean_ratio": sum(r["ratio"] for r in rows) / len(rows) if rows else None,
                    "length_model_metrics": lm.metrics}

        return RunPlan([render_prompt(tokenizer, fmt, question=p.question, ratio=ratios[p.id]) for p in problems],
                       key, hook, {"marker_delimiter": fmt.marker_delimiter, "budget": key,
                                   "length_model": lm.weights, "answer_max_tokens": cfg.answer_max_tokens}, metrics)

    def can_sample(self, cfg) -> bool:
        # a forced answer line is decoded greedily
        return False

    def generate(self, backend, prompts, caps, adapter, cfg):
        from tokenskip.generation.inference import ForcedAnswerEngine

        return ForcedAnswerEngine(backend, cfg.answer_max_tokens).generate(prompts, caps, adapter=adapter)
