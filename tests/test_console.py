"""Console output: compact training lines, one progress bar per step, --quiet."""

from __future__ import annotations

import json
import os

import pytest

from tokenskip.cli import main as cli_main
from tokenskip.contract import console


@pytest.fixture(autouse=True)
def not_quiet(monkeypatch):
    """Start loud; whatever set_quiet changes in the environment is undone after the test."""
    monkeypatch.setenv("TOKENSKIP_QUIET", "0")
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "VLLM_LOGGING_LEVEL"):
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])
        else:
            monkeypatch.setenv(var, "")
            monkeypatch.delenv(var)


def test_quiet_also_quiets_the_engines_own_logging(monkeypatch):
    console.set_quiet(True)
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    assert os.environ["VLLM_LOGGING_LEVEL"] == "ERROR"      # read by vLLM when it is imported, after this
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")       # a level the user set is kept
    console.set_quiet(True)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"


def test_train_line_is_compact_and_complete():
    logs = {"loss": 1.23456, "learning_rate": 3e-4, "grad_norm": 0.912, "epoch": 0.4}
    assert console.train_line(10, 25, logs, 90.0, tokens_seen=8280) == \
        "step 10/25 (40%) · epoch 0.40 · loss 1.2346 · lr 3.0e-04 · grad norm 0.91 · 92 tok/s · 1m30s, ~2m15s left"
    # a resumed run: pace from this session's 5 steps, not all 20
    assert console.train_line(20, 25, {"loss": 1.0}, 50.0, steps_this_session=5).endswith("50s, ~50s left")
    assert console.train_line(25, 25, {"loss": 0.5}, 3700.0) == "step 25/25 (100%) · loss 0.5000 · 1h01m"


@pytest.mark.parametrize("seconds,text", [(0.4, "0s"), (59.6, "1m00s"), (425, "7m05s"), (7380, "2h03m")])
def test_duration(seconds, text):
    assert console.duration(seconds) == text


def test_progress_is_off_when_quiet_or_trivial(monkeypatch, capsys):
    with console.progress(3, "step") as bar:
        bar.update(3)
    assert "step: 100%" in capsys.readouterr().err
    with console.progress(1, "one") as bar:
        bar.update(1)
    console.set_quiet(True)
    with console.progress(3, "hidden") as bar:
        bar.update(3)
    console.say("summary")
    console.note("progress line")
    console.set_quiet(False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_one_bar_per_generation_step(tmp_path, tiny_model, smol_tokenizer, capsys):
    """run_rows draws the step's bar; the backend underneath draws none (no duplicated bars)."""
    from tokenskip.contract.io import ResumableJsonl
    from tokenskip.engines.hf import HFBackend
    from tokenskip.generation.rollout import run_rows
    from tokenskip.task.data import Problem

    backend = HFBackend(hf_model=tiny_model, hf_tokenizer=smol_tokenizer, batch_size=2)
    problems = [Problem(f"q{i}", f"What is {i} + 1?", str(i + 1)) for i in range(5)]
    with ResumableJsonl(tmp_path / "p.jsonl", {"t": 1}) as w:
        run_rows(problems, [p.question for p in problems], w, backend, "gsm8k", 4, chunk=2, desc="gsm8k original")
    err = capsys.readouterr().err
    assert "gsm8k original: 100%" in err
    assert err.count("generate") == 0  # the backend's own bar (desc "generate") is off


def test_quiet_flag_prints_nothing(tmp_path, capsys):
    from test_report import make_run

    run = make_run(tmp_path, benchmarks=("gsm8k",), compress=False, loss=False)
    assert cli_main(["report", str(run), "--no-plots"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.md")
    assert cli_main(["report", str(run), "--no-plots", "--quiet"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert json.loads((run / "report.json").read_text())["name"] == "smoke-run"


def test_train_summary_line():
    from tokenskip.stages.train import summary_line

    m = {"global_step": 25, "train_runtime_s": 450.2, "train_loss": 1.38123, "eval_loss": None,
         "tokens_per_s": 92.4, "trainable_params": 4_884_480, "total_params": 139_399_488,
         "trainable_share": 4_884_480 / 139_399_488}
    assert summary_line(m) == "trained 25 steps in 7m30s: loss 1.3812, 92 tokens/s, 4.9M of 139M parameters (3.50%)"


def test_build_sft_summary_line():
    from tokenskip.stages.build_sft import summary_line

    stats = {"n": {"train": 8, "validation": 1}, "per_ratio": {"train": {"0.5": 3, "1.0": 3, "0.7": 2}}}
    assert summary_line(stats) == "build-sft: 8 train / 1 validation rows; per γ (train): 1.0 ×3, 0.7 ×2, 0.5 ×3"
