"""The lab's target check reads report.json rows and says which targets hold."""

from __future__ import annotations

import json

from tokenskip.cli import main as tokenskip_cli
from tokenskip.lab.targets import GRID, check_targets


def rows(orig=0.64, nocot=0.40, half=0.60, trunc=0.10, act=None):
    act = act or {g: g for g in GRID}
    out = [{"method": "original", "ratio": None, "accuracy": orig, "act_ratio": 1.0},
           {"method": "nocot", "ratio": None, "accuracy": nocot, "act_ratio": 0.0},
           {"method": "truncation", "ratio": 0.5, "accuracy": trunc, "act_ratio": 0.5}]
    out += [{"method": "tokenskip", "ratio": g, "accuracy": half if g == 0.5 else orig, "act_ratio": a}
            for g, a in act.items()]
    return out


def test_all_targets_hold():
    ts = check_targets(rows(), {"warmup": 600.0, "evaluate": 1200.0})
    assert [t.ok for t in ts] == [True] * len(ts) and len(ts) == 2 + len(GRID) + 3
    assert ts[1].measured == "24.0 points" and ts[-1].measured == "30.0 min"
    assert ts[-3].measured == "93.8% (60.0%)"


def test_each_failure_is_named():
    ts = {t.name: t for t in check_targets(rows(orig=0.55, nocot=0.45, half=0.45, trunc=0.5,
                                                act={**{g: g for g in GRID}, 0.7: 0.76}), {"a": 80 * 60.0})}
    failed = sorted(n for n, t in ts.items() if not t.ok)
    assert failed == sorted(["Original accuracy ≥ 60%", "Original − No CoT ≥ 15 points",
                             "TokenSkip γ=0.7: |ActRatio − γ| ≤ 0.05",
                             "TokenSkip γ=0.5 keeps ≥ 90% of Original's accuracy",
                             "TokenSkip γ=0.5 beats Truncation γ=0.5",
                             "stages' wall time ≤ 75 min (set-up not included)"])
    assert ts["TokenSkip γ=0.7: |ActRatio − γ| ≤ 0.05"].measured == "ActRatio 0.760"


def test_missing_rows_fail_and_cli_exit_status(tmp_path, capsys):
    ts = check_targets([{"method": "original", "ratio": None, "accuracy": 0.7, "act_ratio": 1.0}])
    assert ts[0].ok and not any(t.ok for t in ts[1:]) and ts[1].measured == "—"
    (tmp_path / "report.json").write_text(json.dumps({"benchmarks": {"gsm8k": rows()}}))
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {"train": {"seconds": 60.0}}}))
    assert tokenskip_cli(["lab-targets", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("PASS") == len(ts)
    (tmp_path / "report.json").write_text(json.dumps({"benchmarks": {"gsm8k": rows(trunc=0.9)}}))
    assert tokenskip_cli(["lab-targets",
                          str(tmp_path)]) == 1 and "FAIL  TokenSkip γ=0.5 beats Truncation" in capsys.readouterr().out
