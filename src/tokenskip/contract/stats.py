"""The one percentile of the project: every p5/p50/p95 in a summary, a report or a benchmark table."""

from __future__ import annotations

import math


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (``q`` in [0, 100]) of ``values``; ``None`` for no values.

    Definition: **linear interpolation between closest ranks** (numpy's default ``method="linear"``): on the
    sorted values ``v``, position ``(len(v) - 1) · q / 100``, interpolated between its two neighbours. E.g. the
    95th percentile of 0.68, 0.70, 0.71, 0.73 is 0.727 (not 0.73, which nearest rank would give).
    """
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile: q must be in [0, 100], got {q}")
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)
