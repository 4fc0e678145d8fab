"""Scaling of ``backend: ray``: generated tokens/s with 1, 2, ... actors × 1 thread on the HF engine, side by side.

Each setting runs ``tokenskip generate`` through the Ray pool on the same problems (greedy, fresh output
folder), after one local cluster is up; tokens/s = generated tokens ÷ wall seconds of the stage (actor start-up
and model load included, as a user pays them). The figures are printed, and ``--json`` writes them.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_ray.py --actors 1 2 --limit 16 --max-new-tokens 64

Needs the ``distributed`` extra (``make distributed``). Say which CPU and how busy it was with the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="target model (alias, folder, .gguf)")
    p.add_argument("--data", default=str(REPO / "data" / "gsm8k" / "test.jsonl"), help="GSM8K-style JSONL")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="pool sizes to compare (1 thread each)")
    p.add_argument("--limit", type=int, default=16, help="problems per setting")
    p.add_argument("--max-new-tokens", type=int, default=64, help="cap on generated tokens per problem")
    p.add_argument("--batch-size", type=int, default=4, help="HF batch per replica")
    p.add_argument("--shard-size", type=int, default=None, help="problems per shard (default: limit / 4)")
    p.add_argument("--dtype", default="float32", help="model dtype")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if any(a < 1 for a in args.actors) or args.limit < 1:
        p.error("--actors and --limit must be >= 1")
    return args


def run_setting(args, actors: int, out: Path) -> dict:
    """One ``generate`` through a pool of ``actors`` replicas × 1 thread; its tokens and wall seconds."""
    from tokenskip.contract.io import read_jsonl
    from tokenskip.stages.generate import GenerateConfig, run_generate

    cfg = GenerateConfig(model=args.model, benchmark="gsm8k", data=args.data, limit=args.limit,
                         max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, dtype=args.dtype,
                         out=str(out), backend="ray", threads=1, ray_actors=actors, ray_cpus_per_actor=1,
                         ray_shard_size=args.shard_size or max(1, args.limit // 4))
    t0 = time.perf_counter()
    run_generate(cfg)
    wall = time.perf_counter() - t0
    tokens = sum(r["num_tokens"] for r in read_jsonl(out / "predictions.jsonl"))
    return {"actors": actors, "threads_per_actor": 1, "problems": args.limit, "tokens": tokens,
            "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 2)}


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    from tokenskip.engines.ray_pool import connect

    connect(None, num_cpus=max(args.actors))
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.actors:
                rows.append(run_setting(args, n, Path(tmp) / f"actors-{n}"))
    finally:
        ray.shutdown()
    base = rows[0]["tokens_per_s"]
    print(f"{'actors':>6} {'tokens':>7} {'wall s':>7} {'tokens/s':>9} {'speed-up':>8}")
    for r in rows:
        r["speedup"] = round(r["tokens_per_s"] / base, 2) if base else None
        print(f"{r['actors']:>6} {r['tokens']:>7} {r['wall_s']:>7.1f} {r['tokens_per_s']:>9.1f} {r['speedup']:>7.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
