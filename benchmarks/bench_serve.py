"""Load test of ``tokenskip serve``: N concurrent clients for T seconds, side by side with offline evaluate.

Each client loops until the deadline, sending ``POST /v1/chat/completions`` (one GSM8K test question after
another, greedy, ``--max-tokens``, ``compression_ratio`` = ``--ratio``). Reported: completed requests/s,
output tokens/s (the server's ``usage.completion_tokens`` ÷ wall seconds), p50/p95 request latency and
errors. Then, with ``--offline``, the same questions at the same γ are decoded offline by the HF backend
(the engine ``tokenskip evaluate`` uses, batch ``--offline-batch-size``) and its requests/s and tokens/s are
printed next to them.

Against a running server::

    .venv/bin/tokenskip serve --model smollm2-135m-instruct --threads 1 --port 8088 &
    .venv/bin/python benchmarks/bench_serve.py --url http://127.0.0.1:8088 --clients 8 --seconds 60 \\
        --offline --model smollm2-135m-instruct --out runs/bench_serve.json

Timings are wall-clock on whatever else the machine is running (the server and the clients share it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

from tokenskip.contract.stats import percentile


def load_questions(path: str, n: int) -> list[str]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r["question"] for r in rows[:n]]


def run_clients(url: str, questions: list[str], clients: int, seconds: float, max_tokens: int, ratio: float,
                model: str | None, max_requests: int) -> dict:
    """N client threads for ``seconds`` (and at most ``max_requests`` requests in all); returns the figures."""
    import httpx

    lock = threading.Lock()
    lat, toks, errors, sent = [], [], [], [0]
    deadline = time.monotonic() + seconds

    def client(cid: int) -> None:
        with httpx.Client(base_url=url, timeout=max(60.0, 4 * seconds)) as http:
            while time.monotonic() < deadline:
                with lock:
                    if sent[0] >= max_requests:
                        return
                    i = sent[0]
                    sent[0] += 1
                body = {"messages": [{"role": "user", "content": questions[i % len(questions)]}],
                        "max_tokens": max_tokens, "temperature": 0, "compression_ratio": ratio}
                if model:
                    body["model"] = model
                t0 = time.perf_counter()
                try:
                    r = http.post("/v1/chat/completions", json=body)
                    dt = time.perf_counter() - t0
                    if r.status_code != 200:
                        with lock:
                            errors.append(f"{r.status_code}: {r.text[:120]}")
                        continue
                    n = r.json()["usage"]["completion_tokens"]
                    with lock:
                        lat.append(dt)
                        toks.append(n)
                except httpx.HTTPError as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"mode": f"serve ({clients} clients)", "requests": len(lat), "errors": len(errors),
            "error_examples": errors[:3], "wall_s": wall, "requests_per_s": len(lat) / wall,
            "output_tokens_per_s": sum(toks) / wall, "p50_latency_s": percentile(lat, 50),
            "p95_latency_s": percentile(lat, 95), "mean_output_tokens": statistics.mean(toks) if toks else None}


def run_offline(model: str, adapter: str | None, questions: list[str], max_tokens: int, ratio: float,
                batch_size: int, threads: int | None) -> dict:
    """The same questions decoded once by the HF backend (evaluate's engine), prompts from the inference core."""
    from tokenskip.engines import get_backend
    from tokenskip.engines.models import configure_threads
    from tokenskip.generation.inference import render_prompt
    from tokenskip.task.prompt_format import resolve_prompt_format

    configure_threads(threads)
    fmt = resolve_prompt_format(adapter)
    b = get_backend("hf", model=model, adapter=adapter, batch_size=batch_size, show_progress=False)
    prompts = [render_prompt(b.tokenizer, fmt, question=q, ratio=ratio) for q in questions]
    t0 = time.perf_counter()
    gens = b.generate(prompts, max_tokens)
    wall = time.perf_counter() - t0
    b.close()
    return {"mode": f"offline evaluate engine (hf, batch {batch_size})", "requests": len(gens), "errors": 0,
            "wall_s": wall, "requests_per_s": len(gens) / wall,
            "output_tokens_per_s": sum(g.num_tokens for g in gens) / wall, "p50_latency_s": None,
            "p95_latency_s": None, "mean_output_tokens": statistics.mean(g.num_tokens for g in gens)}


def fmt_row(r: dict) -> str:
    def f(v, d=2):
        return "—" if v is None else f"{v:.{d}f}"
    return (f"| {r['mode']} | {r['requests']} | {f(r['requests_per_s'])} | {f(r['output_tokens_per_s'], 1)} "
            f"| {f(r['p50_latency_s'])} | {f(r['p95_latency_s'])} | {r['errors']} |")


def server_health(httpx, url: str) -> dict:
    """The server's ``/health`` as a dict. tokenskip answers JSON (``status``, ``models``, ``max_batch_seen``);
    another OpenAI-compatible server (vLLM's own) answers 200 with an empty body: ready, its models from
    ``/v1/models``. Any other status means not ready."""
    r = httpx.get(url + "/health", timeout=10)
    if r.status_code != 200:
        return {"status": f"HTTP {r.status_code}"}
    try:
        body = r.json()
    except ValueError:   # an empty or non-JSON body
        body = {}
    if "status" not in body:
        models = httpx.get(url + "/v1/models", timeout=10).json().get("data", [])
        body = {"status": "ready", "models": [m["id"] for m in models], **body}
    return body


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8088", help="server base URL (no /v1)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the clients send requests")
    ap.add_argument("--max-requests", type=int, default=100000, help="stop after this many requests in all")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request")
    ap.add_argument("--ratio", type=float, default=1.0, help="compression_ratio γ of every request")
    ap.add_argument("--model", default=None, help="model name sent (and, with --offline, the model to load)")
    ap.add_argument("--adapter", default=None, help="--offline: the adapter folder the server serves")
    ap.add_argument("--data", default="data/gsm8k/test.jsonl", help="JSONL with a 'question' field")
    ap.add_argument("--n", type=int, default=64, help="distinct questions")
    ap.add_argument("--offline", action="store_true", help="also decode the questions offline (HF backend)")
    ap.add_argument("--offline-batch-size", type=int, default=8, help="batch of the offline run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the offline run")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    import httpx

    health = server_health(httpx, args.url)
    if health.get("status") != "ready":
        raise SystemExit(f"server at {args.url} is not ready: {health}")
    model = args.model if args.model in health.get("models", []) else None
    questions = load_questions(args.data, args.n)
    rows = [run_clients(args.url, questions, args.clients, args.seconds, args.max_tokens, args.ratio, model,
                        args.max_requests)]
    served = rows[0]["requests"]
    if args.offline:
        if not args.model:
            raise SystemExit("--offline needs --model")
        # as many questions as the server completed (at least one batch), in the same order
        qs = [questions[i % len(questions)] for i in range(max(served, args.offline_batch_size))]
        rows.append(run_offline(args.model, args.adapter, qs, args.max_tokens, args.ratio, args.offline_batch_size,
                                args.threads))
    print(f"{args.clients} clients × {args.seconds:g} s, max_tokens {args.max_tokens}, γ {args.ratio:g}; "
          f"server batches seen up to {server_health(httpx, args.url).get('max_batch_seen', '?')}")
    print("| Mode | Requests | Requests/s | Output tokens/s | p50 latency (s) | p95 latency (s) | Errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(fmt_row(r))
    if rows[0]["error_examples"]:
        print("errors, e.g.:", rows[0]["error_examples"])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
