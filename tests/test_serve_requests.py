"""Issue 26 items 2-4 on the HF engine (tiny random model, real HTTP): a client that leaves is cancelled, stop
strings end decoding, and seed / logprobs / presence and frequency penalties are honoured in OpenAI's shapes."""

from __future__ import annotations

import functools
import json
import threading
import time
from types import SimpleNamespace

import pytest
import torch

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from conftest import make_tiny_llama  # noqa: E402
from test_serve import Running, free_port, questions  # noqa: E402
from tokenskip.engines import Capabilities, RequestOptions  # noqa: E402
from tokenskip.engines.hf_request import RowControls  # noqa: E402
from tokenskip.serving.app import ServeConfig, create_app  # noqa: E402
from tokenskip.serving.protocol import APIError, parse_chat  # noqa: E402

LONG = 300   # max_tokens of the requests that must end early (the random model rarely ends its turn)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, smol_tokenizer):
    tiny_dir = tmp_path_factory.mktemp("requests-tiny")
    make_tiny_llama(smol_tokenizer).save_pretrained(tiny_dir)
    smol_tokenizer.save_pretrained(tiny_dir)
    cfg = ServeConfig(model=str(tiny_dir), served_model_name="tiny", port=free_port(), threads=1, max_batch_size=8,
                      batch_wait_ms=20, default_max_tokens=16)
    s = Running(create_app(cfg), cfg.port)
    try:
        s.wait_ready()
        s.state = s.server.config.app.state.tokenskip
        yield s
    finally:
        s.stop()


@pytest.fixture()
def steps(srv, monkeypatch):
    """Counts the model's forward passes (one per decoded token, plus the prompt's) and slows each to 20 ms, so a
    request that is not stopped would run for seconds."""
    model = srv.state.engine.model
    real, calls = model.forward, []

    @functools.wraps(real)
    def slow(*a, **kw):
        calls.append(1)
        time.sleep(0.02)
        return real(*a, **kw)

    monkeypatch.setattr(model, "forward", slow)
    return calls


@pytest.fixture()
def generations(srv, monkeypatch):
    """Every :class:`~tokenskip.engines.Generation` the engine returns (their token ids)."""
    real, out = srv.state.engine.generate, []

    def spy(*a, **kw):
        gens = real(*a, **kw)
        out.extend(gens)
        return gens

    monkeypatch.setattr(srv.state.engine, "generate", spy)
    return out


def chat(content: str, max_tokens: int, **extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}


def post(srv, body: dict, path: str = "/v1/chat/completions") -> dict:
    r = httpx.post(srv.url + path, json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def settle(calls: list, quiet_s: float = 0.5, bound_s: float = 30.0) -> int:
    """The count once no forward pass has run for ``quiet_s`` (the engine went idle)."""
    t0, last, seen = time.monotonic(), time.monotonic(), len(calls)
    while time.monotonic() - t0 < bound_s:
        time.sleep(0.05)
        if len(calls) != seen:
            seen, last = len(calls), time.monotonic()
        elif time.monotonic() - last > quiet_s:
            return seen
    raise AssertionError("the engine kept decoding")


# ------------------------------------------------------------------------------------------- item 2: disconnects

def test_a_streamed_request_whose_client_leaves_stops_decoding(srv, steps):
    cancelled_before = httpx.get(srv.url + "/health").json()["cancelled"]
    chunks = 0
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=chat(questions(1)[0], LONG, stream=True),
                      timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                chunks += 1
                if chunks == 3:
                    break                      # leaving the block closes the connection mid-stream
    decoded = settle(steps)
    assert chunks == 3 and decoded < LONG // 3, f"{decoded} forward passes for a request abandoned after 3 chunks"
    assert httpx.get(srv.url + "/health").json()["cancelled"] == cancelled_before + 1
    assert post(srv, chat("What is 2 + 3?", 4))["usage"]["completion_tokens"] == 4   # the server goes on


def test_a_waiting_client_that_leaves_is_cancelled_queued_or_decoding(srv, steps, monkeypatch):
    # A decodes (streamed, held open); B waits for A's batch in the queue and gives up, C gives up while decoding
    seen = []
    real = srv.state.engine.generate
    monkeypatch.setattr(srv.state.engine, "generate",
                        lambda prompts, *a, **kw: seen.append(len(prompts)) or real(prompts, *a, **kw))
    release, got_text = threading.Event(), threading.Event()

    def run_a():
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=chat("A", 40, stream=True), timeout=60) as r:
            for line in r.iter_lines():
                if '"content": "' in line and not got_text.is_set():
                    got_text.set()
                    release.wait(30)
                    break

    a = threading.Thread(target=run_a)
    a.start()
    assert got_text.wait(30)
    with pytest.raises(httpx.ReadTimeout):   # B: queued behind A's batch; its client leaves after 0.3 s
        httpx.post(srv.url + "/v1/chat/completions", json=chat("B", LONG), timeout=0.3)
    release.set()
    a.join(30)
    settle(steps)
    assert seen == [1], f"B reached the engine after its client left: batches {seen}"
    steps.clear()
    with pytest.raises(httpx.ReadTimeout):   # C: decoding when its client leaves
        httpx.post(srv.url + "/v1/chat/completions", json=chat("C", LONG), timeout=1.0)
    assert settle(steps) < LONG // 3


# ------------------------------------------------------------------------------------------- item 3: stop strings

def test_a_stop_string_ends_decoding_where_it_appears(srv, steps, generations):
    q = questions(3)[2]
    full = post(srv, chat(q, 48))
    text = full["choices"][0]["message"]["content"]
    assert full["choices"][0]["finish_reason"] == "length" and full["usage"]["completion_tokens"] == 48
    word = text.split()[2]
    steps.clear()
    cut = post(srv, chat(q, 48, stop=[word]))
    decoded = settle(steps) - 1                      # the prompt's forward pass
    content = cut["choices"][0]["message"]["content"]
    assert content == text[:text.find(word)] and cut["choices"][0]["finish_reason"] == "stop"
    assert decoded < 16, f"decoded {decoded} tokens for a stop string within the first words (max_tokens 48)"
    # counted: the generated tokens whose text lies before the stop string (a token straddling it is not)
    g = generations[-1]
    assert cut["usage"]["completion_tokens"] == g.num_tokens <= srv.state.count_tokens(content)
    assert content.startswith(srv.state.tokenizer.decode(g.token_ids)) and g.num_tokens >= 1


def test_row_controls_stop_each_row_at_its_own_strings(smol_tokenizer):
    ids = smol_tokenizer("one two three four", add_special_tokens=False)["input_ids"]
    opts = [RequestOptions(stop=(" three",)), RequestOptions(stop=("nowhere",)), RequestOptions()]
    rc = RowControls(opts, [0, 1, 2], prompt_len=1, tokenizer=smol_tokenizer, cancelled=lambda i: i == 2)
    done = rc.stop(torch.tensor([[0] + ids] * 3))
    assert done.tolist() == [True, False, True] and rc.ended == [len(ids), None, len(ids)]
    assert rc.cancelled_rows == {2}


def test_a_batch_ends_when_its_long_rows_are_cancelled_and_the_short_ones_at_their_cap(smol_tokenizer):
    # The load of issue 26 item 2: short requests batched with a long one whose client left. The batch decodes to
    # its largest cap; before, a row at its own cap kept decoding (nothing ended it), so cancelling the long row
    # saved nothing and the short replies waited for all 200 steps. Now each row ends at its cap: the batch stops
    # once the cancelled row is ended.
    from tokenskip.engines.hf import HFBackend

    model = make_tiny_llama(smol_tokenizer, seed=3)
    model.generation_config.eos_token_id = None   # never ends a row by itself: only caps and the cancel do
    be = HFBackend(hf_model=model, hf_tokenizer=smol_tokenizer, batch_size=3)
    be.stop_ids = [len(smol_tokenizer) + 5]       # an id the model never emits
    forwards = []
    model.register_forward_hook(lambda *a: forwards.append(1))
    asked = {0: 0, 1: 0, 2: 0}

    def cancelled(i: int) -> bool:
        asked[i] += 1
        return i == 2 and asked[i] >= 6          # the long row's client leaves at its 6th step
    gens = be.generate(["one", "two", "three"], [3, 5, 200], cancelled=cancelled)
    assert [g.num_tokens for g in gens] == [3, 5, 6] and gens[2].finish_reason == "cancelled"
    assert [g.finish_reason for g in gens[:2]] == ["length", "length"]
    assert len(forwards) <= 8, f"{len(forwards)} forward passes for caps 3 and 5 and a row cancelled at step 6"
    # the same rows without the cancel run to the long cap; the short rows' text does not depend on it
    forwards.clear()
    long = be.generate(["one", "two", "three"], [3, 5, 20])
    assert len(forwards) >= 20 and [g.token_ids for g in long[:2]] == [g.token_ids for g in gens[:2]]


# ------------------------------------------------------------------------------------------- item 4: parameters

def test_seed_makes_sampling_reproducible_in_any_batch(srv):
    q = questions(2)[1]
    body = chat(q, 12, temperature=1.0, seed=7)
    texts = [post(srv, body)["choices"][0]["message"]["content"] for _ in range(2)]
    other = post(srv, {**body, "seed": 8})["choices"][0]["message"]["content"]
    unseeded = [post(srv, {**body, "seed": None})["choices"][0]["message"]["content"] for _ in range(2)]
    assert texts[0] == texts[1] and other != texts[0] and unseeded[0] != unseeded[1]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:   # sent with other sampled requests: still the same text
        together = list(pool.map(lambda b: post(srv, b), [body, chat(q, 12, temperature=1.0),
                                                          chat("other", 12, temperature=1.0), body]))
    assert [t["choices"][0]["message"]["content"] for t in (together[0], together[3])] == [texts[0]] * 2


def _reference_logprobs(srv, prompt: str, ids: list[int]) -> torch.Tensor:
    """log-softmax of the model's logits at each generated position, computed in one forward pass."""
    eng = srv.state.engine
    p = eng.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = eng.model(torch.cat([p, torch.tensor([ids])], dim=1)).logits[0, p.shape[1] - 1:-1]
    return torch.log_softmax(logits.float(), dim=-1)


def test_logprobs_and_top_logprobs_in_the_chat_shape(srv, generations):
    r = post(srv, chat(questions(1)[0], 8, logprobs=True, top_logprobs=3, return_prompt=True))
    choice = r["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == r["usage"]["completion_tokens"] == 8
    assert "".join(t["token"] for t in content) == choice["message"]["content"]
    ids = generations[0].token_ids
    ref = _reference_logprobs(srv, choice["message"]["prompt"], ids)
    for k, t in enumerate(content):
        assert t["logprob"] == pytest.approx(float(ref[k, ids[k]]), abs=1e-4)
        assert t["bytes"] == list(t["token"].encode("utf-8")) and len(t["top_logprobs"]) == 3
        assert t["top_logprobs"][0]["token"] == t["token"]          # greedy: the likeliest token was chosen
        assert [a["logprob"] for a in t["top_logprobs"]] == sorted((a["logprob"] for a in t["top_logprobs"]),
                                                                   reverse=True)
    assert post(srv, chat("hi", 4))["choices"][0]["logprobs"] is None   # none unless asked
    legacy = post(srv, {"model": "tiny", "prompt": "Hello", "max_tokens": 5, "logprobs": 2}, "/v1/completions")
    lp = legacy["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 5
    assert "".join(lp["tokens"]) == legacy["choices"][0]["text"] and all(len(d) == 2 for d in lp["top_logprobs"])


def test_presence_and_frequency_penalties_follow_openais_definition(srv, generations):
    rc = RowControls([RequestOptions(presence_penalty=0.5, frequency_penalty=1.0), RequestOptions()], [0, 1],
                     prompt_len=2, tokenizer=None)
    out = rc.process(torch.tensor([[9, 9, 5, 5, 7], [9, 9, 5, 5, 7]]), torch.zeros(2, 10))
    assert out[0, 5] == -(2 * 1.0 + 0.5) and out[0, 7] == -(1.0 + 0.5) and out[0, 9] == 0   # prompt ids: none
    assert torch.equal(out[1], torch.zeros(10))
    # served, greedy: every token is the argmax of the penalised logits (checked step by step with the model);
    # negative penalties (OpenAI allows down to -2) reward repeats, which this random model otherwise never makes
    r = post(srv, chat(questions(1)[0], 10, frequency_penalty=-1.5, presence_penalty=-0.5, return_prompt=True))
    plain = post(srv, chat(questions(1)[0], 10))
    text = r["choices"][0]["message"]["content"]
    ids = generations[0].token_ids
    assert len(ids) == 10
    ref = _reference_logprobs(srv, r["choices"][0]["message"]["prompt"], ids)
    for k in range(len(ids)):
        counts = torch.bincount(torch.tensor(ids[:k], dtype=torch.long), minlength=ref.shape[1]).float()
        assert int((ref[k] + 1.5 * counts + 0.5 * (counts > 0)).argmax()) == ids[k]
    plain_ids = generations[1].token_ids
    assert len(set(ids)) < len(ids) and len(set(plain_ids)) == len(plain_ids)
    assert text != plain["choices"][0]["message"]["content"]


def test_a_parameter_the_engine_cannot_honour_is_a_400_naming_it_and_the_engine(srv):
    state = SimpleNamespace(**{k: getattr(srv.state, k) for k in ("cfg", "models", "fmt", "length_model")},
                            sampling=True, engine_name="vllm", calibration_for=lambda model: None,
                            engine=SimpleNamespace(capabilities=Capabilities(options=frozenset({"stop", "logprobs"}))))
    parse_chat(chat("hi", 4, temperature=0, seed=7), state)            # greedy: the seed changes nothing
    for extra, param in (({"temperature": 1.0, "seed": 7}, "seed"), ({"presence_penalty": 1}, "presence_penalty")):
        with pytest.raises(APIError) as e:
            parse_chat(chat("hi", 4, **extra), state)
        assert e.value.status == 400 and e.value.param == param and "vllm engine" in e.value.message


# ------------------------------------------------------------------------------------------- the load test

def test_bench_serve_mixed_load_with_leaving_clients(srv):
    from test_bench_scripts import load

    bs = load("bench_serve")
    import random

    rng = random.Random(3)
    plan = [(rng.random() < 0.5, rng.random() < 0.4) for _ in range(10)]
    r = bs.run_clients(srv.url, questions(4), clients=3, seconds=60, max_tokens=6, model="tiny", max_requests=10,
                       stream_share=0.5, disconnect_share=0.4, disconnect_after=0.05, seed=3)
    assert r["errors"] == 0, r["error_examples"]
    assert r["requests"] + r["abandoned"] == 10 and r["abandoned"] >= sum(s and leave for s, leave in plan)
    assert r["mean_output_tokens"] == 6 and r["p99_latency_s"] >= r["p50_latency_s"] > 0   # streamed usage counted
