"""backend ray (issue 25): the HF engine replicated over a Ray Data actor pool, on a local 2-CPU cluster.

Greedy rows through 2 actors × 1 thread equal the single-process run's; a replica killed mid-run (SIGKILL by
PID) is restarted and the stage still writes every row once; a driver killed mid-run leaves whole rows that a
rerun completes, each once. Skipped where Ray Data is not installed (``make distributed``); CI installs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import GSM8K_TEST, REPO, need_data
from tokenskip.contract.io import read_jsonl
from tokenskip.stages.generate import GenerateConfig, run_generate

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

N = 12   # problems: 2 shards of 8 and 4 at batch size 2 (the HF chunk, 4 × batch size), or 12 of 1
REPLICA = "ray::MapWorker(MapBatches(ShardWorker))"


@pytest.fixture(scope="module")
def cluster():
    """One local 2-CPU Ray cluster for the module (workers inherit this process's environment)."""
    from tokenskip.engines.ray_pool import connect

    connect(None, num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def cfg(model, out, **kw) -> GenerateConfig:
    base = dict(model=model, benchmark="gsm8k", data=str(need_data(GSM8K_TEST)), limit=N, max_new_tokens=12,
                batch_size=2, out=str(out), dtype="float32", threads=1)
    return GenerateConfig(**(base | kw))


def rows_of(out: Path) -> list[dict]:
    """Predictions rows without the timing field (the rest is decided by the model and the settings)."""
    return [{k: v for k, v in r.items() if k != "latency_s"} for r in read_jsonl(out / "predictions.jsonl")]


def test_greedy_rows_through_two_actors_equal_the_single_process_run(tmp_path, tiny_model_dir, cluster):
    from tokenskip.engines import get_backend

    run_generate(cfg(tiny_model_dir, tmp_path / "local"))
    pooled_cfg = cfg(tiny_model_dir, tmp_path / "ray", backend="ray", ray_actors=2, ray_cpus_per_actor=1)
    pool = get_backend("ray", **pooled_cfg.backend_kwargs())
    m = run_generate(pooled_cfg, pool)
    local, pooled = rows_of(tmp_path / "local"), rows_of(tmp_path / "ray")
    assert len(local) == N and pooled == local
    assert any(r["num_tokens"] > 0 for r in pooled)
    assert m["backend"] == "ray" and m["settings"]["ray_engine"] == "hf" and m["n"] == N
    # what the scaling benchmark reads: every generated token, and each shard's decoding span in its replica
    assert pool.stats.tokens == sum(r["num_tokens"] for r in pooled)
    assert len(pool.spans) == 2 and all(s < e for s, e in pool.spans)
    assert 0 < pool.decode_seconds() <= pool.stats.seconds
    # a rerun finds every row on disk: nothing decoded, nothing appended
    before = (tmp_path / "ray" / "predictions.jsonl").read_bytes()
    run_generate(cfg(tiny_model_dir, tmp_path / "ray", backend="ray", ray_actors=2))
    assert (tmp_path / "ray" / "predictions.jsonl").read_bytes() == before


def _descendants(root: int) -> dict[int, str]:
    """``{pid: command line}`` of every process below ``root`` (this test's own cluster)."""
    parent, cmd = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                cmd[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = {}, {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in out}
        out.update({p: cmd[p] for p in frontier})
    return out


def test_a_replica_killed_mid_run_is_restarted_and_every_row_is_written_once(tmp_path, tiny_model_dir, cluster):
    out = tmp_path / "ray"
    killed: list[tuple[int, int]] = []   # (pid, rows on disk when killed)

    def kill_one_replica():
        preds = out / "predictions.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            done = len(read_jsonl(preds)) if preds.exists() else 0
            replicas = [p for p, c in _descendants(os.getpid()).items() if c.strip() == REPLICA]
            if done >= 1 and replicas:
                os.kill(replicas[0], signal.SIGKILL)
                killed.append((replicas[0], done))
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_one_replica, daemon=True)
    watcher.start()
    # one problem per shard and 48 tokens each, so the run is still going when the first row lands
    m = run_generate(cfg(tiny_model_dir, out, backend="ray", ray_actors=2, ray_shard_size=1, batch_size=1,
                         max_new_tokens=48))
    watcher.join(timeout=5)
    assert killed and killed[0][1] < N, "the replica was not killed mid-run"
    ids = [r["id"] for r in read_jsonl(out / "predictions.jsonl")]
    assert m["n"] == N and len(ids) == N and len(set(ids)) == N
    run_generate(cfg(tiny_model_dir, tmp_path / "local", batch_size=1, max_new_tokens=48))
    assert rows_of(out) == rows_of(tmp_path / "local")


def test_a_driver_killed_mid_run_leaves_rows_that_a_rerun_completes_once(tmp_path, tiny_model_dir, cluster):
    out = tmp_path / "ray"
    args = [sys.executable, "-m", "tokenskip.cli", "generate", "--model", tiny_model_dir, "--benchmark", "gsm8k",
            "--data", str(need_data(GSM8K_TEST)), "--limit", str(N), "--max-new-tokens", "48", "--batch-size", "1",
            "--dtype", "float32", "--threads", "1", "--out", str(out), "--backend", "ray", "--ray-actors", "2",
            "--ray-shard-size", "1"]
    env = os.environ | {"RAY_ADDRESS": cluster, "PYTHONPATH": str(REPO / "src")}   # joins the running cluster
    driver = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    preds, done = out / "predictions.jsonl", 0
    try:
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None:
            done = len(read_jsonl(preds)) if preds.exists() else 0
            if done >= 1:
                break
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(timeout=60)
    assert driver.returncode == -signal.SIGKILL and 1 <= done < N, f"driver not killed mid-run ({done} rows)"
    left = read_jsonl(preds)
    assert 1 <= len(left) < N and len({r["id"] for r in left}) == len(left)

    m = run_generate(cfg(tiny_model_dir, out, backend="ray", ray_actors=2, ray_shard_size=1, batch_size=1,
                         max_new_tokens=48))
    ids = [r["id"] for r in read_jsonl(preds)]
    assert m["n"] == N and len(ids) == N and len(set(ids)) == N
    run_generate(cfg(tiny_model_dir, tmp_path / "local", batch_size=1, max_new_tokens=48))
    assert rows_of(out) == rows_of(tmp_path / "local")


def test_self_information_scored_in_the_pool_gives_the_local_rows(tmp_path, tiny_model_dir, cluster):
    from tokenskip.stages.compress import CompressConfig, run_compress

    def compress(out, **kw):
        return run_compress(CompressConfig(out=str(out), cot_source="gold", benchmark="gsm8k",
                                           data=str(need_data(GSM8K_TEST)), limit=10, model=tiny_model_dir,
                                           ratios=[0.5, 0.7], batch_size=2, dtype="float32", threads=1, **kw))

    compress(tmp_path / "local")
    s = compress(tmp_path / "ray", backend="ray", ray_actors=2, ray_shard_size=4)   # 3 parts over 2 replicas
    for g in ("0.5", "0.7"):
        local = read_jsonl(tmp_path / "local" / f"ratio-{g}.jsonl")
        assert len(local) == 10 and read_jsonl(tmp_path / "ray" / f"ratio-{g}.jsonl") == local
    assert s["ratios"]["0.5"]["n"] == 10


def test_evaluate_runs_a_methods_own_decoding_inside_the_replicas(tmp_path, tiny_model_dir, cluster):
    """truncation with the forced answer line: two generate calls per chunk (ForcedAnswerEngine), pickled with
    the method and its config to each actor; the rows equal the single-process run's."""
    from tokenskip.stages.evaluate import EvaluateConfig, run_dir, run_evaluate

    def evaluate(out, **kw):
        return run_evaluate(EvaluateConfig(model=tiny_model_dir, benchmark="gsm8k", data=str(need_data(GSM8K_TEST)),
                                           limit=6, max_new_tokens=12, batch_size=1, out=str(out), dtype="float32",
                                           threads=1, method="truncation", ratios=[0.5], force_answer=True, **kw))

    evaluate(tmp_path / "local")
    ms = evaluate(tmp_path / "ray", backend="ray", ray_actors=2)
    assert [m["method"] for m in ms] == ["original", "truncation"]
    for method, ratio in (("original", None), ("truncation", 0.5)):
        local = rows_of(run_dir(tmp_path / "local", "gsm8k", method, ratio))
        assert len(local) == 6 and rows_of(run_dir(tmp_path / "ray", "gsm8k", method, ratio)) == local
