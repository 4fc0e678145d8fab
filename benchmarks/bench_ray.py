"""Scaling of ``backend: ray``: generated tokens/s with 1, 2, ... actors × 1 thread on the HF engine, side by side.

Each setting runs stage ``generate`` through the Ray pool on the same problems (greedy, fresh output folder, same
shards), after one local cluster is up. Two figures per setting:

- **decode tokens/s** = generated tokens ÷ the pool's decoding window (first shard's start to last shard's end
  in the replicas: :meth:`tokenskip.engines.ray_pool.RayBackend.decode_seconds`), i.e. the pool's throughput
  once its replicas are up — the issue's scaling target;
- **stage tokens/s** = generated tokens ÷ the stage's wall seconds, actor start-up and model loads included, as a
  user pays them on a run this short (on a full split they are paid once per stage).

It also checks that every setting wrote the same rows (greedy: the pool size must not change a token), and with
``--local`` that they equal the single-process run's (one more decode of the same problems, on 1 thread; with
the default shard size, since a shard of another size is batched otherwise).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_ray.py --actors 1 2 --limit 32 --max-new-tokens 64 --local

Needs the ``distributed`` extra (``make distributed``). Say which CPU and how busy it was with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="target model (alias, folder, .gguf)")
    p.add_argument("--data", default=str(REPO / "data" / "gsm8k" / "test.jsonl"), help="GSM8K-style JSONL")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="pool sizes to compare (1 thread each)")
    p.add_argument("--limit", type=int, default=32, help="problems per setting")
    p.add_argument("--max-new-tokens", type=int, default=64, help="cap on generated tokens per problem")
    p.add_argument("--batch-size", type=int, default=2, help="HF batch per replica")
    p.add_argument("--shard-size", type=int, default=None,
                   help="problems per shard (default: the HF engine's chunk, 4 × batch size, so that each shard is "
                        "decoded as the single-process run decodes its chunk and --local can compare the rows)")
    p.add_argument("--dtype", default="float32", help="model dtype")
    p.add_argument("--local", action="store_true", help="also decode in this process and compare the rows")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if any(a < 1 for a in args.actors) or args.limit < 1:
        p.error("--actors and --limit must be >= 1")
    return args


def config(args, out: Path, actors: int | None):
    """The generate settings of one setting: the Ray pool with ``actors`` replicas, or this process (``None``)."""
    from tokenskip.stages.generate import GenerateConfig

    pool = dict(backend="ray", ray_actors=actors, ray_cpus_per_actor=1, ray_shard_size=args.shard_size) \
        if actors else {}
    return GenerateConfig(model=args.model, benchmark="gsm8k", data=args.data, limit=args.limit,
                          max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, dtype=args.dtype,
                          out=str(out), threads=1, **pool)


def rows_of(out: Path) -> list[dict]:
    """The predictions rows without their timing field (everything else is decided by the model)."""
    from tokenskip.contract.io import read_jsonl

    return [{k: v for k, v in r.items() if k != "latency_s"} for r in read_jsonl(out / "predictions.jsonl")]


def run_setting(args, actors: int, out: Path) -> dict:
    """One ``generate`` through a pool of ``actors`` replicas × 1 thread: tokens, stage wall and decode window."""
    from tokenskip.engines import get_backend
    from tokenskip.stages.generate import run_generate

    cfg = config(args, out, actors)
    t0 = time.perf_counter()
    backend = get_backend("ray", **cfg.backend_kwargs())
    run_generate(cfg, backend)
    wall = time.perf_counter() - t0
    tokens = sum(r["num_tokens"] for r in rows_of(out))
    decode = backend.decode_seconds()
    return {"actors": actors, "threads_per_actor": 1, "problems": args.limit, "shards": len(backend.spans),
            "tokens": tokens, "stage_s": round(wall, 2), "decode_s": round(decode, 2),
            "stage_tokens_per_s": round(tokens / wall, 2), "decode_tokens_per_s": round(tokens / decode, 2)}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray

    from tokenskip.engines.ray_pool import connect

    connect(None, num_cpus=max(args.actors))
    rows, same = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.actors:
                rows.append(run_setting(args, n, Path(tmp) / f"actors-{n}"))
                same.append(rows_of(Path(tmp) / f"actors-{n}"))
            if args.local:
                from tokenskip.stages.generate import run_generate

                run_generate(config(args, Path(tmp) / "local", None))
                local = rows_of(Path(tmp) / "local")
    finally:
        ray.shutdown()
    print(f"{'actors':>6} {'shards':>6} {'tokens':>7} {'decode s':>8} {'tokens/s':>9} {'speed-up':>8}"
          f" {'stage s':>8} {'tokens/s':>9} {'speed-up':>8}")
    for r in rows:
        r["decode_speedup"] = round(r["decode_tokens_per_s"] / rows[0]["decode_tokens_per_s"], 2)
        r["stage_speedup"] = round(r["stage_tokens_per_s"] / rows[0]["stage_tokens_per_s"], 2)
        print(f"{r['actors']:>6} {r['shards']:>6} {r['tokens']:>7} {r['decode_s']:>8.1f} "
              f"{r['decode_tokens_per_s']:>9.1f} {r['decode_speedup']:>7.2f}x {r['stage_s']:>8.1f} "
              f"{r['stage_tokens_per_s']:>9.1f} {r['stage_speedup']:>7.2f}x")
    identical = all(s == same[0] for s in same)
    print(f"rows identical across pool sizes: {'yes' if identical else 'NO'}")
    summary = {"settings": rows, "rows_identical_across_pools": identical}
    if args.local:
        summary["rows_identical_to_single_process"] = local == same[0]
        print(f"rows identical to the single-process run: {'yes' if local == same[0] else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if identical and summary.get("rows_identical_to_single_process", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
