"""The serving worker's scheduling for an engine that batches by itself (``Capabilities.concurrent``: vLLM's
asynchronous engine, the ``--upstream`` proxy): each request goes to the engine alone and at once, and is answered as
soon as it is done (issue 26 item 11: grouping requests made the early finishers wait for the group's longest)."""

from __future__ import annotations

import threading
import time

import pytest

from tokenskip.engines import Capabilities, Generation
from tokenskip.serving.app import ServeConfig
from tokenskip.serving.protocol import parse_chat
from tokenskip.serving.worker import ServerState
from tokenskip.task.prompt_format import PromptFormat

STEP_S = 0.02   # seconds per decoded token of the paced engine


class PacedEngine:
    """A thread-safe engine that declares ``concurrent`` (as vLLM's ``AsyncLLM`` backend does): each call decodes its
    prompts side by side at :data:`STEP_S` per token, each prompt up to its cap (the random words of a fixed text),
    and returns when the longest is done. Records the prompts per call."""

    capabilities = Capabilities(concurrent=True, sampling=True)
    name = "paced"

    def __init__(self, tokenizer):
        self.tokenizer, self.calls, self._lock = tokenizer, [], threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompts, max_new_tokens, adapter=None, **_):
        caps = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        with self._lock:
            self.calls.append(len(prompts))
        time.sleep(STEP_S * max(caps))
        ids = self.tokenizer(" one" * max(caps), add_special_tokens=False)["input_ids"]
        return [Generation(self.tokenizer.decode(ids[:c]), c, STEP_S * c, "length", ids[:c]) for c in caps]

    def close(self) -> None:
        pass


@pytest.fixture()
def state(smol_tokenizer, monkeypatch):
    """A started :class:`ServerState` on the paced engine, with a long batch wait (2 s) that an HF server would spend
    gathering a batch."""
    cfg = ServeConfig(model="paced", max_batch_size=8, batch_wait_ms=2000)
    s = ServerState(cfg)
    engine = PacedEngine(smol_tokenizer)

    def load(self=s):
        self.engine, self.fmt, self.models, self.sampling = engine, PromptFormat(), ["paced"], True

    monkeypatch.setattr(s, "_load_engine", load)
    s.start()
    for _ in range(100):
        if s.status == "ready":
            break
        time.sleep(0.05)
    assert s.status == "ready", s.error
    yield s
    s.close()


def job(state, max_tokens: int):
    body = {"messages": [{"role": "user", "content": "What is 2 + 3?"}], "max_tokens": max_tokens}
    return parse_chat(body, state)[0]


def test_a_short_request_is_answered_without_waiting_for_the_long_one_sent_with_it(state):
    long_, short = job(state, 100), job(state, 2)   # 2 s and 0.04 s of decoding
    t0 = time.monotonic()
    fl, fs = state.submit(long_), state.submit(short)
    a = fs.result(timeout=10)
    t_short = time.monotonic() - t0
    assert not fl.done()
    assert a.output_tokens == 2 and fl.result(timeout=10).output_tokens == 100
    # neither the 2 s batch wait nor the long request's 2 s of decoding (margin for a busy machine)
    assert t_short < 1.0
    assert state.engine.calls == [1, 1] and state.max_batch_seen == 1 and state.batches == 2
