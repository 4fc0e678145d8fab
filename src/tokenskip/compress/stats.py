"""How close compression came to the requested ratios γ: the per-γ statistics of compressed rows that
``tokenskip compress`` writes into its ``summary.json`` (:mod:`tokenskip.stages.compress`)."""

from __future__ import annotations

from tokenskip.contract.ratios import format_ratio
from tokenskip.contract.stats import percentile


def summarize(rows_by_ratio: dict[float, list[dict]]) -> dict:
    """Per-γ statistics of the achieved ratios of compressed rows (``ratio-<γ>.jsonl`` rows by γ), keyed by
    the formatted γ: ``n``, ``mean_achieved_ratio``, ``mean_abs_error`` (mean |achieved − γ|),
    ``p95_abs_error``, ``overshoot_share``, ``answer_numbers_kept_share``, ``mean_original_tokens``,
    ``mean_kept_tokens``. A statistic over zero rows is ``None`` (JSON ``null``), never NaN."""
    out = {}
    for g, rows in rows_by_ratio.items():
        errs = [abs(r["achieved_ratio"] - g) for r in rows]
        n = len(rows)

        def mean(values):
            return sum(values) / n if n else None

        out[format_ratio(g)] = {
            "n": n,
            "mean_achieved_ratio": mean([r["achieved_ratio"] for r in rows]),
            "mean_abs_error": mean(errs),
            "p95_abs_error": percentile(errs, 95),
            "overshoot_share": mean([bool(r["overshoot"]) for r in rows]),
            "answer_numbers_kept_share": mean([bool(r["answer_numbers_kept"]) for r in rows]),
            "mean_original_tokens": mean([r["original_tokens"] for r in rows]),
            "mean_kept_tokens": mean([r["kept_tokens"] for r in rows]),
        }
    return out
