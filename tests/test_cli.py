import argparse

import pytest

from tokenskip.cli import COMMANDS, main
from tokenskip.config import add_dataclass_args, dataclass_from_args, dataclass_from_dict
from tokenskip.evaluate import EvaluateConfig


def parse(argv):
    p = argparse.ArgumentParser()
    add_dataclass_args(p, EvaluateConfig)
    return dataclass_from_args(EvaluateConfig, p.parse_args(argv))


def test_flags_lists_and_booleans():
    cfg = parse(["--model", "m", "--ratios", "1.0,0.9", "0.5", "--no-merge-adapter", "--limit", "3"])
    assert cfg.ratios == [1.0, 0.9, 0.5] and cfg.merge_adapter is False and cfg.limit == 3
    assert parse(["--model", "m"]).merge_adapter is True  # untouched default


def test_recipe_dicts_are_checked():
    with pytest.raises(ValueError, match=r"recipe: unknown setting\(s\) \['ratio'\]"):
        dataclass_from_dict(EvaluateConfig, {"model": "m", "ratio": 0.5}, "recipe")
    with pytest.raises(ValueError, match="limit: expected int"):
        dataclass_from_dict(EvaluateConfig, {"model": "m", "limit": "many"})
    assert dataclass_from_dict(EvaluateConfig, {"model": "m", "ratios": "0.7, 0.5"}).ratios == [0.7, 0.5]


def test_help_lists_every_stage(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in COMMANDS)


def test_bad_input_is_a_one_line_error(capsys, tmp_path):
    rc = main(["evaluate", "--model", "m", "--method", "prompt", "--ratios", "1.5", "--out", str(tmp_path)])
    assert rc == 2
    assert "error: compression ratio γ must be in (0, 1], got 1.5" in capsys.readouterr().err
    rc = main(["evaluate", "--model", "m", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)])
    assert rc == 2 and "missing.jsonl" in capsys.readouterr().err
