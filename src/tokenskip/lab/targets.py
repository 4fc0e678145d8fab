"""The CPU lab's targets (docs/lab.md), checked against a run's ``report.json``.

``tokenskip lab-targets runs/lab-smollm2-legs`` prints one line per target with the measured
value and whether it holds; the exit status is 0 only when all hold. Everything is read from the run's
``report.json`` (rows ``method, ratio, accuracy, act_ratio``) and ``manifest.json`` (stage seconds);
nothing is recomputed. Choose settings on the validation split: this check is for the final test run.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from tokenskip.contract.io import read_json
from tokenskip.contract.layout import MANIFEST, REPORT_JSON

#: the γ grid TokenSkip must follow, and the tolerances of the targets (issue text of the lab)
GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
MIN_ORIGINAL_ACCURACY = 0.60
MIN_COT_GAIN = 0.15            # Original − No CoT, accuracy points as a fraction
MAX_ACT_RATIO_ERROR = 0.05
MIN_KEPT_AT_HALF = 0.90        # TokenSkip γ=0.5 accuracy ÷ Original accuracy
MAX_WALL_S = 75 * 60


@dataclass
class Target:
    """One target: its name, the measured value as text (``"—"`` when not measured) and whether it holds."""

    name: str
    measured: str
    ok: bool


def _find(rows: list[dict], method: str, ratio: float | None) -> dict | None:
    for r in rows:
        if r.get("method") == method and (r.get("ratio") is None if ratio is None
                                          else r.get("ratio") is not None and abs(r["ratio"] - ratio) < 1e-9):
            return r
    return None


def check_targets(rows: list[dict], stage_seconds: dict[str, float] | None = None) -> list[Target]:
    """The lab's targets for one benchmark's report rows (``report.json["benchmarks"][name]``).

    Args:
        rows: dicts with ``method`` (``original``, ``nocot``, ``truncation``, ``tokenskip``), ``ratio``
            (γ or ``None``), ``accuracy`` (fraction) and ``act_ratio``.
        stage_seconds: stage -> seconds from ``manifest.json`` (the wall-time target; set-up not included).
    Returns:
        One :class:`Target` per target, in the order of docs/lab.md; a missing row fails its target.
    """
    out: list[Target] = []
    orig, nocot = _find(rows, "original", None), _find(rows, "nocot", None)
    ts_half, tr_half = _find(rows, "tokenskip", 0.5), _find(rows, "truncation", 0.5)

    def acc(r):
        return r.get("accuracy") if r else None

    a_orig = acc(orig)
    out.append(Target(f"Original accuracy ≥ {MIN_ORIGINAL_ACCURACY:.0%}", _pct(a_orig),
                      a_orig is not None and a_orig >= MIN_ORIGINAL_ACCURACY))
    gain = None if a_orig is None or acc(nocot) is None else a_orig - acc(nocot)
    out.append(Target(f"Original − No CoT ≥ {MIN_COT_GAIN * 100:.0f} points",
                      "—" if gain is None else f"{gain * 100:.1f} points", gain is not None and gain >= MIN_COT_GAIN))
    for g in GRID:
        r = _find(rows, "tokenskip", g)
        act = r.get("act_ratio") if r else None
        out.append(Target(f"TokenSkip γ={g}: |ActRatio − γ| ≤ {MAX_ACT_RATIO_ERROR}",
                          "—" if act is None else f"ActRatio {act:.3f}",
                          act is not None and abs(act - g) <= MAX_ACT_RATIO_ERROR))
    kept = None if not a_orig or acc(ts_half) is None else acc(ts_half) / a_orig
    out.append(Target(f"TokenSkip γ=0.5 keeps ≥ {MIN_KEPT_AT_HALF:.0%} of Original's accuracy",
                      "—" if kept is None else f"{kept:.1%} ({_pct(acc(ts_half))})",
                      kept is not None and kept >= MIN_KEPT_AT_HALF))
    beats = None if acc(ts_half) is None or acc(tr_half) is None else acc(ts_half) > acc(tr_half)
    out.append(Target("TokenSkip γ=0.5 beats Truncation γ=0.5",
                      "—" if beats is None else f"{_pct(acc(ts_half))} vs {_pct(acc(tr_half))}", bool(beats)))
    total = sum(stage_seconds.values()) if stage_seconds else None
    out.append(Target(f"stages' wall time ≤ {MAX_WALL_S // 60} min (set-up not included)",
                      "—" if total is None else f"{total / 60:.1f} min", total is not None and total <= MAX_WALL_S))
    return out


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the lab's run folder (with report.json and manifest.json)")
    parser.add_argument("--benchmark", default=None, help="benchmark key in report.json (default: the only one)")


def run_cli(args: argparse.Namespace) -> int:
    """Print one PASS/FAIL line per target; 0 when all hold, 1 when one fails, 2 when the report has no such
    benchmark."""
    run = Path(args.run_dir)
    report = read_json(run / REPORT_JSON)
    benches = report.get("benchmarks") or {}
    name = args.benchmark or (next(iter(benches)) if len(benches) == 1 else None)
    if name not in benches:
        print(f"{run / REPORT_JSON}: choose --benchmark from {sorted(benches)}", file=sys.stderr)
        return 2
    manifest = read_json(run / MANIFEST) if (run / MANIFEST).exists() else {}
    seconds = {k: v["seconds"] for k, v in manifest.get("stages", {}).items() if v.get("seconds") is not None}
    targets = check_targets(benches[name], seconds or None)
    width = max(len(t.name) for t in targets)
    for t in targets:
        print(f"{'PASS' if t.ok else 'FAIL'}  {t.name:<{width}}  {t.measured}")
    return 0 if all(t.ok for t in targets) else 1
