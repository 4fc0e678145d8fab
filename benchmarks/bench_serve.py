"""Load test of ``tokenskip serve`` (or any OpenAI-compatible server): N concurrent clients for T seconds, mixed
streamed / non-streamed requests, some clients leaving early; side by side with another server or offline evaluate.

Each client loops until the deadline, sending ``POST /v1/chat/completions`` (one GSM8K test question after
another, greedy, ``--max-tokens``, a fixed system turn so every server renders the same prompt). A share of the
requests streams (``--stream-share``, with ``stream_options.include_usage``), and a share is abandoned
(``--disconnect-share``: a streamed one after its first text chunk, a non-streamed one after
``--disconnect-after`` s) — the load of issue 26 item 2. Reported per server, for the requests that stay:
completed requests/s, output tokens/s (the server's ``usage.completion_tokens`` ÷ wall seconds), p50/p95/p99
latency, abandoned requests and errors. To a tokenskip server the requests also say ``"add_instruction": false``
(and ``compression_ratio`` only with ``--ratio``), so it decodes the same prompt as vLLM's own server.

``--url`` may be given several times: the same load runs against each server in turn (one table), e.g. ``tokenskip
serve --backend vllm`` next to vLLM's own server on the same model (issue 26 item 11)::

    .venv-vllm/bin/tokenskip serve --model M --backend vllm --port 8088 &
    .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --model M --port 8000 &
    .venv-vllm/bin/python benchmarks/bench_serve.py --url http://127.0.0.1:8088 --url http://127.0.0.1:8000 \\
        --clients 16 --seconds 45 --max-tokens 64 --stream-share 0.5 --disconnect-share 0.1

(start one server at a time on a small machine: both at once share its cores). With ``--offline`` the same
questions are then decoded offline by the HF backend (the engine ``tokenskip evaluate`` uses, batch
``--offline-batch-size``) and its requests/s and tokens/s are printed next to them.

Timings are wall-clock on whatever else the machine is running (the server and the clients share it).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from pathlib import Path

from tokenskip.contract.stats import percentile

SYSTEM = "You are a helpful assistant."


def load_questions(path: str, n: int) -> list[str]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r["question"] for r in rows[:n]]


def request_body(question: str, max_tokens: int, model: str | None, tokenskip: bool, ratio: float | None,
                 stream: bool) -> dict:
    """One chat request: the system turn and the question, greedy; tokenskip extensions only for a tokenskip server."""
    body = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0}
    if model:
        body["model"] = model
    if tokenskip:
        body["add_instruction"] = False
        if ratio is not None:
            body["compression_ratio"] = ratio
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def one_request(http, body: dict, leave_after: float | None) -> int | None:
    """Send ``body``; the completion tokens, or ``None`` when the client left on purpose (``leave_after``: streamed,
    after the first text chunk; not streamed, after that many seconds). Raises on an HTTP error status."""
    import httpx

    if not body.get("stream"):
        timeout = httpx.Timeout(http.timeout.read, read=leave_after) if leave_after is not None else http.timeout
        try:
            r = http.post("/v1/chat/completions", json=body, timeout=timeout)
        except httpx.ReadTimeout:
            if leave_after is not None:
                return None
            raise
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {r.text[:120]}")
        return r.json()["usage"]["completion_tokens"]
    n = None
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {r.read()[:120]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                n = chunk["usage"]["completion_tokens"]
            elif leave_after is not None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                return None   # leaving the block closes the connection mid-stream
    if n is None:
        raise RuntimeError("stream ended without a usage chunk")
    return n


def run_clients(url: str, questions: list[str], clients: int, seconds: float, max_tokens: int, model: str | None,
                max_requests: int, tokenskip: bool = True, ratio: float | None = None, stream_share: float = 0.0,
                disconnect_share: float = 0.0, disconnect_after: float = 0.5, seed: int = 0,
                leave_max_tokens: int | None = None) -> dict:
    """N client threads for ``seconds`` (and at most ``max_requests`` requests in all); returns the figures of the
    requests that stayed. Which requests stream or leave is drawn from ``seed`` (the same plan for every server).
    ``leave_max_tokens``: the ``max_tokens`` of the requests whose client leaves (default ``max_tokens``)."""
    import httpx

    lock = threading.Lock()
    lat, toks, errors, sent, left = [], [], [], [0], [0]
    deadline = time.monotonic() + seconds
    rng = random.Random(seed)
    plan = [(rng.random() < stream_share, rng.random() < disconnect_share) for _ in range(min(max_requests, 100000))]

    def client(cid: int) -> None:
        with httpx.Client(base_url=url, timeout=max(60.0, 4 * seconds)) as http:
            while time.monotonic() < deadline:
                with lock:
                    if sent[0] >= len(plan):
                        return
                    i = sent[0]
                    sent[0] += 1
                stream, leave = plan[i]
                cap = leave_max_tokens if leave and leave_max_tokens else max_tokens
                body = request_body(questions[i % len(questions)], cap, model, tokenskip, ratio, stream)
                t0 = time.perf_counter()
                try:
                    n = one_request(http, body, disconnect_after if leave else None)
                    dt = time.perf_counter() - t0
                    with lock:
                        if n is None:
                            left[0] += 1
                        else:
                            lat.append(dt)
                            toks.append(n)
                except (httpx.HTTPError, RuntimeError, ValueError, KeyError) as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"mode": f"{url} ({clients} clients)", "requests": len(lat), "abandoned": left[0], "errors": len(errors),
            "error_examples": errors[:3], "wall_s": wall, "requests_per_s": len(lat) / wall,
            "output_tokens_per_s": sum(toks) / wall, "p50_latency_s": percentile(lat, 50),
            "p95_latency_s": percentile(lat, 95), "p99_latency_s": percentile(lat, 99),
            "mean_output_tokens": statistics.mean(toks) if toks else None}


def run_offline(model: str, adapter: str | None, questions: list[str], max_tokens: int, ratio: float | None,
                batch_size: int, threads: int | None) -> dict:
    """The same questions decoded once by the HF backend (evaluate's engine), prompts from the inference core."""
    from tokenskip.engines import get_backend
    from tokenskip.engines.models import configure_threads
    from tokenskip.generation.inference import render_prompt
    from tokenskip.task.prompt_format import resolve_prompt_format

    configure_threads(threads)
    fmt = resolve_prompt_format(adapter)
    b = get_backend("hf", model=model, adapter=adapter, batch_size=batch_size, show_progress=False)
    prompts = [render_prompt(b.tokenizer, fmt, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                             ratio=ratio, instruction=False) for q in questions]
    t0 = time.perf_counter()
    gens = b.generate(prompts, max_tokens)
    wall = time.perf_counter() - t0
    b.close()
    return {"mode": f"offline evaluate engine (hf, batch {batch_size})", "requests": len(gens), "errors": 0,
            "abandoned": 0, "p99_latency_s": None, "wall_s": wall, "requests_per_s": len(gens) / wall,
            "output_tokens_per_s": sum(g.num_tokens for g in gens) / wall, "p50_latency_s": None,
            "p95_latency_s": None, "mean_output_tokens": statistics.mean(g.num_tokens for g in gens)}


def fmt_row(r: dict) -> str:
    def f(v, d=2):
        return "—" if v is None else f"{v:.{d}f}"
    return (f"| {r['mode']} | {r['requests']} | {f(r['requests_per_s'])} | {f(r['output_tokens_per_s'], 1)} "
            f"| {f(r['p50_latency_s'])} | {f(r['p95_latency_s'])} | {f(r['p99_latency_s'])} | {r['abandoned']} "
            f"| {r['errors']} |")


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


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", action="append", default=None,
                    help="server base URL (no /v1); repeat it to run the same load against each server in turn "
                         "(default http://127.0.0.1:8088)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the clients send requests")
    ap.add_argument("--max-requests", type=int, default=100000, help="stop after this many requests in all")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request")
    ap.add_argument("--ratio", type=float, default=None, help="compression_ratio γ sent to tokenskip servers "
                                                               "(default: none, γ 1 and no marker)")
    ap.add_argument("--stream-share", type=float, default=0.0, help="share of requests that stream (0..1)")
    ap.add_argument("--disconnect-share", type=float, default=0.0,
                    help="share of requests whose client leaves early (0..1): streamed after the first text chunk, "
                         "non-streamed after --disconnect-after s")
    ap.add_argument("--disconnect-after", type=float, default=0.5, help="seconds a leaving non-streamed client waits")
    ap.add_argument("--leave-max-tokens", type=int, default=None,
                    help="max_tokens of the requests whose client leaves (default --max-tokens): long requests a user "
                         "gives up on, whose decoding a server that does not cancel runs to the end")
    ap.add_argument("--seed", type=int, default=0, help="draws which requests stream and which leave")
    ap.add_argument("--model", default=None, help="model name sent (and, with --offline, the model to load)")
    ap.add_argument("--adapter", default=None, help="--offline: the adapter folder the server serves")
    ap.add_argument("--data", default="data/gsm8k/test.jsonl", help="JSONL with a 'question' field")
    ap.add_argument("--n", type=int, default=64, help="distinct questions")
    ap.add_argument("--offline", action="store_true", help="also decode the questions offline (HF backend)")
    ap.add_argument("--offline-batch-size", type=int, default=8, help="batch of the offline run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the offline run")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    args.url = args.url or ["http://127.0.0.1:8088"]
    for name in ("stream_share", "disconnect_share"):
        if not 0 <= getattr(args, name) <= 1:
            ap.error(f"--{name.replace('_', '-')} must be in [0, 1]")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import httpx

    questions = load_questions(args.data, args.n)
    rows, notes = [], []
    for url in args.url:
        health = server_health(httpx, url)
        if health.get("status") != "ready":
            raise SystemExit(f"server at {url} is not ready: {health}")
        model = args.model if args.model in health.get("models", []) else (health.get("models") or [None])[0]
        tokenskip = "backend" in health   # tokenskip's /health names its engine
        rows.append(run_clients(url, questions, args.clients, args.seconds, args.max_tokens, model, args.max_requests,
                                tokenskip, args.ratio, args.stream_share, args.disconnect_share,
                                args.disconnect_after, args.seed, args.leave_max_tokens))
        after = server_health(httpx, url)
        notes.append(f"{url}: model {model}, " + (f"tokenskip ({after.get('backend')}), batches up to "
                                                  f"{after.get('max_batch_seen', '?')}, cancelled "
                                                  f"{after.get('cancelled', '?')}" if tokenskip else "not tokenskip"))
    if args.offline:
        if not args.model:
            raise SystemExit("--offline needs --model")
        # as many questions as the first server completed (at least one batch), in the same order
        qs = [questions[i % len(questions)] for i in range(max(rows[0]["requests"], args.offline_batch_size))]
        rows.append(run_offline(args.model, args.adapter, qs, args.max_tokens, args.ratio, args.offline_batch_size,
                                args.threads))
    print(f"{args.clients} clients × {args.seconds:g} s, max_tokens {args.max_tokens}"
          f"{f' ({args.leave_max_tokens} for the leaving)' if args.leave_max_tokens else ''}, streamed "
          f"{args.stream_share:.0%}, leaving {args.disconnect_share:.0%}; " + "; ".join(notes))
    print("| Server | Requests | Requests/s | Output tokens/s | p50 latency (s) | p95 latency (s) | p99 latency (s) "
          "| Abandoned | Errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(fmt_row(r))
    for r in rows:
        if r.get("error_examples"):
            print(f"errors of {r['mode']}, e.g.:", r["error_examples"])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
