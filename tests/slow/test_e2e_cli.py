"""The issues' "must work exactly as written" commands, on the packaged 135M model (slow: minutes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import GSM8K_TEST, MATH500_TEST, REPO, need_data

pytestmark = pytest.mark.slow
TOKENSKIP = [sys.executable, "-m", "tokenskip.cli"]
D = "data/gsm8k"


def sh(args, cwd=REPO):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENSKIP_THREADS="1")
    r = subprocess.run(TOKENSKIP + [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("bench,data", [("gsm8k", GSM8K_TEST), ("math500", MATH500_TEST)])
def test_evaluate_three_questions(tmp_path, bench, data):
    need_data(data)
    sh(["evaluate", "--model", "smollm2-135m-instruct", "--benchmark", bench, "--data", os.path.relpath(data, REPO),
        "--limit", 3, "--max-new-tokens", 48, "--out", tmp_path])
    (pred,) = list(tmp_path.rglob("predictions.jsonl"))
    got = rows(pred)
    assert len(got) == 3
    assert all({"id", "output", "cot_tokens", "pred", "gold", "correct"} <= set(r) for r in got)
    assert all(0 < r["cot_tokens"] <= 60 and r["output"] for r in got)
    m = json.loads((pred.parent / "metrics.json").read_text())
    assert 0.0 <= m["accuracy"] <= 1.0 and m["avg_cot_tokens"] == pytest.approx(sum(r["cot_tokens"] for r in got) / 3)


def test_compress_train_evaluate_sequence(tmp_path):
    need_data(GSM8K_TEST)
    W = tmp_path
    sh(["compress", "--cot-source", "gold", "--benchmark", "gsm8k", "--data", f"{D}/train.jsonl", "--limit", 16,
        "--scorer", "self-information", "--model", "smollm2-135m-instruct", "--ratios", 0.9, 0.7, 0.5,
        "--out", W / "compress"])
    summary = json.loads((W / "compress" / "summary.json").read_text())
    for r in ("0.9", "0.7", "0.5"):
        assert summary["ratios"][r]["mean_abs_error"] <= 0.05
    sh(["build-sft", "--compressed", W / "compress", "--cot-source", "gold", "--benchmark", "gsm8k", "--data",
        f"{D}/train.jsonl", "--limit", 16, "--model", "smollm2-135m-instruct", "--out", W / "sft"])
    sh(["train", "--model", "smollm2-135m-instruct", "--data", W / "sft", "--max-steps", 2, "--out", W / "adapter"])
    assert list((W / "adapter").rglob("adapter_config.json"))
    common = ["evaluate", "--model", "smollm2-135m-instruct", "--benchmark", "gsm8k", "--data", f"{D}/test.jsonl",
              "--limit", 2, "--max-new-tokens", 32]
    sh(common + ["--method", "original", "--out", W / "eval"])
    sh(common + ["--method", "tokenskip", "--adapter", W / "adapter", "--ratios", 1.0, 0.5, "--out", W / "eval"])
    metrics = [json.loads(p.read_text()) for p in (W / "eval").rglob("tokenskip/*/metrics.json")]
    assert sorted(m["ratio"] for m in metrics) == [0.5, 1.0]
    assert all(m["act_ratio"] is not None and m["act_ratio"] > 0 for m in metrics)


def test_issue9_commands_dry_run_and_custom_benchmark(tmp_path):
    # issue 9, "must work exactly as written"
    need_data(GSM8K_TEST)
    plan = sh(["run", "recipes/demo-smollm2-gsm8k.yaml", "--dry-run", "--set", f"run_dir={tmp_path}"])
    assert "compress" in plan and "fingerprint" in plan and not (tmp_path / "demo-smollm2-gsm8k").exists()
    data = tmp_path / "FILE.jsonl"
    data.write_text('{"problem": "What is 2 + 3?", "answer": "5"}\n{"problem": "What is 6 - 2?", "answer": "4"}\n'
                    '{"problem": "What is 3 * 3?", "answer": "9"}\n')
    sh(["evaluate", "--model", "smollm2-135m-instruct", "--benchmark", "custom", "--data", data,
        "--question-field", "problem", "--answer-field", "answer", "--grader", "numeric", "--limit", 2,
        "--max-new-tokens", 16, "--out", tmp_path / "OUT"])
    got = rows(tmp_path / "OUT" / "custom" / "original" / "predictions.jsonl")
    assert [(r["question"], r["gold"]) for r in got] == [("What is 2 + 3?", "5"), ("What is 6 - 2?", "4")]
    assert all(0 < r["num_tokens"] <= 16 for r in got)


def test_serve_commands_of_issue_14(tmp_path):
    """`tokenskip serve --model smollm2-135m-instruct --port P &`, then the issue's curl commands."""
    import shutil
    import socket
    import time

    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENSKIP_THREADS="1")
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(TOKENSKIP + ["serve", "--model", "smollm2-135m-instruct", "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def curl(*args):
        return subprocess.run(["curl", "-s", *args], capture_output=True, text=True, timeout=300).stdout

    try:
        health = ""
        for _ in range(300):  # bounded: 5 minutes for start-up and model load
            health = curl(f"localhost:{port}/health")
            if '"ready"' in health:
                break
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(1)
        assert json.loads(health)["status"] == "ready"
        body = json.loads(curl(f"localhost:{port}/v1/chat/completions", "-H", "content-type: application/json", "-d",
                               '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"What is 2 + '
                               '3?"}],'
                               '"max_tokens":32,"compression_ratio":0.5}'))
        assert body["choices"][0]["message"]["content"] and body["choices"][0]["message"]["compression_ratio"] == 0.5
        assert 0 < body["usage"]["completion_tokens"] <= 32 and body["usage"]["cot_tokens"] <= 32
        code = curl("-o", "/dev/null", "-w", "%{http_code}", f"localhost:{port}/v1/chat/completions", "-H",
                    "content-type: application/json", "-d",
                    '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"hi"}],"compression_ratio":1.5}')
        assert code == "400"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
