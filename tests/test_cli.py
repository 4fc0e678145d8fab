import argparse

import pytest

from tokenskip.cli import COMMANDS, main
from tokenskip.contract.config import add_dataclass_args, dataclass_from_args, dataclass_from_dict
from tokenskip.stages.evaluate import EvaluateConfig


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
    with pytest.raises(ValueError, match="limit: expected an integer"):
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


def test_expected_failures_of_every_kind_are_one_line(capsys, monkeypatch, tmp_path):
    import tokenskip.stages.evaluate as ev
    from tokenskip.errors import GradingError, MissingDependencyError

    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "Q?", "answer": "#### 5"}\n')
    argv = ["evaluate", "--model", "m", "--data", str(data), "--out", str(tmp_path)]
    for exc in (MissingDependencyError("--backend vllm needs vLLM: pip install 'tokenskip[vllm]'"),
                GradingError("math-verify worker did not start (EOFError); its stderr:\nNo module named x"),
                ImportError("No module named 'vllm'")):
        def boom(*a, exc=exc, **kw):
            raise exc
        monkeypatch.setattr(ev, "get_backend", boom)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"tokenskip evaluate: error: {str(exc).splitlines()[0]}") and "Traceback" not in err
    # a bug is not an expected failure: it keeps its traceback
    monkeypatch.setattr(ev, "get_backend", lambda *a, **kw: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(argv)


def test_custom_benchmark_from_the_command_line(tmp_path, tiny_model_dir, capsys):
    import json

    data = tmp_path / "FILE.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [{"problem": "What is 2 + 3?", "answer": "5"},
                                                              {"problem": "What is 7 - 4?", "answer": "3"},
                                                              {"problem": "What is 1 + 1?", "answer": "2"}]))
    out = tmp_path / "OUT"
    rc = main(["evaluate", "--model", tiny_model_dir, "--benchmark", "custom", "--data", str(data),
               "--question-field", "problem", "--answer-field", "answer", "--grader", "numeric",
               "--limit", "2", "--max-new-tokens", "4", "--out", str(out)])
    assert rc == 0
    d = out / "custom" / "original"
    rows = [json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines()]
    assert [(r["id"], r["question"], r["gold"]) for r in rows] == [("FILE/0", "What is 2 + 3?", "5"),
                                                                     ("FILE/1", "What is 7 - 4?", "3")]
    assert all(0 < r["num_tokens"] <= 4 for r in rows)
    m = json.loads((d / "metrics.json").read_text())
    assert (m["benchmark"], m["benchmark_label"], m["grader"], m["n"]) == ("custom", "Custom", "numeric", 2)
    # the grader kind is a required setting of a custom benchmark, named in a one-line error
    assert main(["evaluate", "--model", tiny_model_dir, "--benchmark", "custom", "--data", str(data),
                 "--out", str(out)]) == 2
    assert "error: --benchmark custom needs --grader numeric" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps", "tpu"])
def test_unusable_device_is_a_one_line_error_before_loading(capsys, tmp_path, monkeypatch, device):
    import torch

    import tokenskip.engines.models as models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    loaded = []
    monkeypatch.setattr(models, "load_tokenizer", lambda *a, **k: loaded.append(a))  # must not be reached
    for cmd in (["evaluate", "--model", "smollm2-135m-instruct"],
                ["generate", "--model", "smollm2-135m-instruct"],
                ["compress", "--predictions", str(tmp_path / "p.jsonl")]):
        rc = main([*cmd, "--device", device, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and f"--device {device}" in err[0], err
    assert loaded == []
    with pytest.raises(ValueError, match="no CUDA support|sees no GPU"):
        models.load_model("smollm2-135m-instruct", device="cuda")
    assert loaded == []


def test_cuda_index_past_the_last_gpu(monkeypatch):
    import torch

    from tokenskip.engines.models import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_device("cuda:0")
    with pytest.raises(ValueError, match=r"--device cuda:1: only 1 GPU\(s\) visible"):
        check_device("cuda:1")


def test_stop_strings_are_kept_whole():
    from tokenskip.cli import build_parser
    from tokenskip.contract.config import dataclass_from_args, dataclass_from_dict
    from tokenskip.generation.rollout import GenerationConfig

    parser = build_parser("generate")
    cfg = dataclass_from_args(GenerationConfig, parser.parse_args(
        ["--model", "m", "--stop", "\\n\\nUser:", "Question, next:"]))
    assert cfg.stop == ["\n\nUser:", "Question, next:"]
    assert cfg.backend_kwargs()["stop"] == ("\n\nUser:", "Question, next:")
    assert dataclass_from_dict(GenerationConfig, {"model": "m", "stop": ["a b, c"]}).stop == ["a b, c"]
    assert dataclass_from_dict(GenerationConfig, {"model": "m"}).stop == []
