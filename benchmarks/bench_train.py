"""LoRA training throughput, peak memory and loss: float32 vs dtype auto, padded vs padding-free, one run.

Every configuration trains a fresh LoRA adapter (the demo recipe's settings: rank 8, alpha 16, all
linear layers, lr 3e-4, batch 8 in one forward pass, cosine schedule, group_by_length) on the same
SFT rows — the first ``--n`` GSM8K train questions with their reference CoT as completion (γ = 1.0) —
for one epoch (``--n`` / 8 steps), each in its own child process so that its peak resident memory
(``ru_maxrss``: model, optimizer and activations included) is its own. It prints the machine's CPU
model and flags, then one table with tokens/s, the ratio to the first configuration, peak RSS and the
losses, measured side by side.

Configurations are ``LAYOUT:DTYPE[:MICRO]``: ``padded`` (each batch padded to its longest row, the
demo's former ``group_by_length`` run) or ``packed`` (padding-free: one row per forward pass with
restarting position ids); DTYPE ``float32``, ``auto`` (bf16 autocast on AMX/AVX512-BF16 CPUs, float32
elsewhere) or ``bfloat16`` (forced autocast); MICRO = sequences per forward pass (default: the whole
batch of 8; 2 = four accumulated passes per step, same effective batch and loss, ~1/4 of the
activation memory). A configuration that resolves to one already measured (``auto`` on an
AVX2-only CPU is ``float32``) is reported from that run instead of training again.

Tokens/s counts every prompt and completion token of the rows trained on (not padding) ÷ the wall
time of ``trainer.train`` (model loading excluded). On a shared CPU the absolute figures are noisy:
compare the rows of one run. Example (the README's table)::

    HF_HUB_OFFLINE=1 TOKENSKIP_CACHE=.cache .venv/bin/python benchmarks/bench_train.py --n 80 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "data" / "gsm8k" / "train.jsonl"
DEFAULT_CONFIGS = ("padded:float32:8", "padded:auto:8", "packed:float32:8", "packed:auto:2")
LAYOUTS = ("padded", "packed")
DTYPES = ("float32", "auto", "bfloat16")


def parse_config(spec: str, batch_size: int = 8) -> dict:
    """``LAYOUT:DTYPE[:MICRO]`` -> ``{"layout", "dtype", "micro"}``; ``ValueError`` names the bad part.

    MICRO = sequences per forward pass (default: the whole batch); the rest is gradient accumulation.
    """
    parts = spec.split(":")
    ok = len(parts) in (2, 3) and parts[0] in LAYOUTS and parts[1] in DTYPES
    micro = parts[2] if len(parts) == 3 else str(batch_size)
    if not ok or not micro.isdigit() or int(micro) < 1 or batch_size % int(micro):
        raise ValueError(f"config {spec!r}: expected LAYOUT:DTYPE[:MICRO] with LAYOUT in {LAYOUTS}, DTYPE in "
                         f"{DTYPES} and MICRO dividing the batch size {batch_size}")
    return {"layout": parts[0], "dtype": parts[1], "micro": int(micro)}


def train_config(spec: dict, data_dir: str, out_dir: str, args) -> "object":
    """The :class:`tokenskip.stages.train.TrainConfig` of one configuration (demo recipe settings)."""
    from tokenskip.finetune.train_config import TrainConfig

    return TrainConfig(
        model=args.model, data=data_dir, out=out_dir, epochs=1, lr=3e-4, lora_r=8, lora_alpha=16,
        batch_size=args.batch_size, per_device_batch_size=spec["micro"], grad_accum=args.batch_size // spec["micro"],
        logging_steps=1,
        group_by_length=True, save_steps=10**6, eval=False, resume="never", threads=args.threads,
        padding_free=spec["layout"] == "packed",
        dtype="float32" if spec["dtype"] == "bfloat16" else spec["dtype"], bf16=spec["dtype"] == "bfloat16")


def write_sft_rows(model: str, data: str, n: int, folder: Path) -> int:
    """Write ``folder/train.jsonl`` (``n`` rows, γ = 1.0, reference CoTs); returns their total tokens."""
    from tokenskip.contract.io import write_jsonl_atomic
    from tokenskip.engines.models import load_tokenizer
    from tokenskip.finetune.sft import Trajectory, make_record
    from tokenskip.finetune.sft_rows import tokenize_example
    from tokenskip.stages.train import end_of_turn
    from tokenskip.task.data import load_problems

    tok = load_tokenizer(model, padding_side="right")
    rows = [make_record(tok, Trajectory(p.id, p.id, p.question, p.answer, {1.0: p.solution}), 1.0)
            for p in load_problems("gsm8k", data, limit=n)]
    write_jsonl_atomic(folder / "train.jsonl", rows)
    eot = end_of_turn(tok)
    return sum(len(tokenize_example(tok, r["prompt"], r["completion"], eot, 2048)["input_ids"]) for r in rows)


def child(spec_json: str) -> int:
    """Train one configuration in this process and print its result as one JSON line."""
    job = json.loads(spec_json)
    from tokenskip.contract.io import read_jsonl
    from tokenskip.finetune.lora import train

    args = argparse.Namespace(**job["args"])
    cfg = train_config(job["spec"], job["data_dir"], job["out_dir"], args)
    m = train(cfg)
    losses = [r["loss"] for r in read_jsonl(Path(job["out_dir"]) / "loss_log.jsonl")]
    print("RESULT " + json.dumps({**m, "losses": losses}), flush=True)
    return 0


def run_child(spec: dict, data_dir: str, out_dir: str, args) -> dict:
    job = {"spec": spec, "data_dir": data_dir, "out_dir": out_dir, "args": vars(args)}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True,
                          env=os.environ.copy())
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{spec}: training failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def resolved_key(spec: dict) -> tuple:
    """What a configuration really runs: (layout, compute dtype) after resolving ``auto`` on this machine."""
    from tokenskip.engines.hardware import auto_dtype

    dtype = auto_dtype("cpu").dtype if spec["dtype"] == "auto" else spec["dtype"]
    return spec["layout"], dtype, spec["micro"]


def table(rows: list[dict], total_tokens: int) -> str:
    """Markdown table, ratios against the first row."""
    ref = rows[0]
    lines = ["| config (layout:dtype:micro-batch) | dtype (resolved) | steps | seconds | tokens/s | × first | peak RSS "
             "(MiB) | "
             "first / last logged loss | mean train loss |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r["metrics"]
        tps = total_tokens / m["train_runtime_s"]
        ref_tps = total_tokens / ref["metrics"]["train_runtime_s"]
        same = f" (= {r['same_as']})" if r.get("same_as") else ""
        lines.append(f"| {r['config']} | {m['dtype']}{same} | {m['global_step']} | {m['train_runtime_s']:.0f} | "
                     f"{tps:.1f} | {tps / ref_tps:.2f} | {m['peak_rss_mb']:.0f} | "
                     f"{m['losses'][0]:.3f} / {m['losses'][-1]:.3f} | {m['train_loss']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Configurations: LAYOUT:DTYPE[:MICRO], LAYOUT padded|packed, "
                                       "DTYPE float32|auto|bfloat16, MICRO sequences per forward pass")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model alias, folder or GGUF file")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="GSM8K train JSONL file")
    p.add_argument("--n", type=int, default=80, help="SFT rows (first N train questions); steps = N / batch size")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step, one forward pass (demo: 8)")
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                   help="LAYOUT:DTYPE entries; the first is the ratio reference (default: %(default)s)")
    p.add_argument("--threads", default="1", help="torch threads per run: N or auto (default 1)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child)
    specs = [parse_config(c, args.batch_size) for c in args.configs]

    from tokenskip.engines.hardware import machine_summary

    machine = machine_summary()
    print(f"machine: {machine['cpu']}; CPU flags: {' '.join(machine['cpu_flags']) or '-'}; "
          f"CPUs usable {machine['cpus_usable']} of {machine['cpus_total']}; GPU: {machine['gpu'] or 'none'}")
    print(f"dtype auto on this CPU: {machine['auto_dtype_cpu']} ({machine['auto_dtype_reason']})", flush=True)
    rows, done = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_train.") as tmp:
        data_dir = Path(tmp) / "sft"
        total_tokens = write_sft_rows(args.model, args.data, args.n, data_dir)
        for i, spec in enumerate(specs):
            name = f"{spec['layout']}:{spec['dtype']}:{spec['micro']}"
            key = resolved_key(spec)
            if key in done:
                rows.append({"config": name, "metrics": done[key]["metrics"], "same_as": done[key]["config"]})
                print(f"{name}: same run as {done[key]['config']} on this machine", flush=True)
                continue
            m = run_child(spec, str(data_dir), str(Path(tmp) / f"run{i}"), args)
            rows.append({"config": name, "metrics": m})
            done[key] = rows[-1]
            print(f"{name}: {total_tokens / m['train_runtime_s']:.1f} tokens/s, peak RSS {m['peak_rss_mb']:.0f} MiB, "
                  f"mean loss {m['train_loss']:.4f}", flush=True)
            if args.out:  # after every run, so a killed benchmark keeps what it measured
                from tokenskip.contract.io import write_json_atomic

                write_json_atomic(args.out, {"machine": machine, "settings": vars(args),
                                             "total_tokens": total_tokens, "rows": rows})
    print()
    print(f"{args.n} GSM8K train rows ({total_tokens} tokens), batch {args.batch_size}, 1 epoch, "
          f"threads {args.threads}, model {args.model}; machine: {machine['cpu']} "
          f"[{' '.join(machine['cpu_flags'])}]")
    print(table(rows, total_tokens))
    print()
    for r in rows:
        if not r.get("same_as"):
            print(f"loss per step, {r['config']}: {' '.join(f'{x:.4f}' for x in r['metrics']['losses'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
