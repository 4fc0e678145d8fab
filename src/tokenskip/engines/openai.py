"""OpenAI-compatible HTTP backend (``--backend openai``): any server with ``/v1/completions``.

Sends the same chat-templated prompt strings as the local engines to ``POST {base_url}/completions``
(``tokenskip serve``, ``vllm serve``, ...), so evaluating an endpoint writes the same rows and metrics as
evaluating locally. ``add_special_tokens: false`` is sent too (vLLM's extension), so the server adds no
second BOS to a prompt that already holds the template's.

* ``max_in_flight`` requests at a time (a thread pool); each sample's ``latency_s`` is its request's wall
  time (true per-request latency under that concurrency);
* ``num_tokens`` = the server's ``usage.completion_tokens``; ``token_ids`` = the text re-encoded with the
  local tokenizer (servers do not return ids);
* the model name sent is ``api_model``, else the adapter folder's name, else the first id of ``/v1/models``;
* the API key is read from the environment variable ``api_key_env`` (default ``OPENAI_API_KEY``; none
  needed for a local server).

The tokenizer of ``model`` is loaded locally (prompts and CoT token counts need it).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from tokenskip.engines import BackendStats, Capabilities, Generation

logger = logging.getLogger(__name__)


class OpenAIBackend:
    """Completions from an OpenAI-compatible endpoint (module docstring).

    Args:
        model: the model's tokenizer source (alias, folder or Hub id), as for the local engines.
        base_url: e.g. ``http://127.0.0.1:8088/v1``.
        api_model: model name sent in requests.
        api_key_env: environment variable holding the API key.
        max_in_flight: requests in flight at once.
        adapter: adapter folder; its name is the default ``api_model`` (vLLM's ``--lora-modules NAME=PATH``).
        timeout_s: per-request timeout (seconds).
        tokenizer: a tokenizer object (tests), instead of loading ``model``'s.
        stop: extra stop strings sent with every request (``--stop``).

    Raises:
        ValueError: no ``base_url``, ``max_in_flight`` < 1.
    """

    name = "openai"

    def __init__(self, model: str | None = None, base_url: str | None = None, api_model: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", max_in_flight: int = 8, adapter: str | None = None,
                 timeout_s: float = 600.0, tokenizer=None, batch_size: int = 8, stop: tuple[str, ...] = (),
                 **_ignored):
        from openai import OpenAI

        if not base_url:
            raise ValueError("--backend openai needs --base-url (e.g. http://127.0.0.1:8088/v1)")
        if max_in_flight < 1:
            raise ValueError(f"--max-in-flight must be >= 1, got {max_in_flight}")
        if tokenizer is None:
            from tokenskip.engines.models import load_tokenizer

            tokenizer = load_tokenizer(model)
        self.tokenizer = tokenizer
        self.batch_size = max(batch_size, max_in_flight)
        self.max_in_flight = max_in_flight
        key = os.environ.get(api_key_env or "", "") or "none"
        self.client = OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=2)
        self.api_model = api_model or (Path(adapter).name if adapter else None) or self._first_model()
        self.adapter = adapter
        self.stop = list(stop)
        self.stats = BackendStats()
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="openai-backend")

    def _first_model(self) -> str:
        models = list(self.client.models.list())
        if not models:
            raise ValueError("the endpoint lists no model: pass --api-model")
        return models[0].id

    @property
    def capabilities(self) -> Capabilities:
        """A remote endpoint: requests in flight at once, sampling, no token streaming to the caller."""
        return Capabilities(adapters_per_request=False, streaming=False, sampling=True, concurrent=True,
                            chunk_size=max(1, self.batch_size * 4), dtype="remote")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _one(self, prompt: str, cap: int, temperature: float, top_p: float, model: str) -> Generation:
        if cap <= 0:
            return Generation("", 0, 0.0, "length", [])
        t0 = time.perf_counter()
        r = self.client.completions.create(model=model, prompt=prompt, max_tokens=int(cap),
                                           temperature=temperature, top_p=top_p,
                                           stop=self.stop or None, extra_body={"add_special_tokens": False})
        dt = time.perf_counter() - t0
        choice = r.choices[0]
        n = r.usage.completion_tokens if r.usage is not None else None
        finish = "length" if choice.finish_reason == "length" else "stop"
        return Generation(choice.text or "", -1 if n is None else int(n), dt, finish, [])

    def generate(self, prompts: Sequence[str], max_new_tokens: int | Sequence[int], adapter: str | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, api_model: str | None = None) -> list[Generation]:
        """Completions of ``prompts`` (at most ``max_in_flight`` requests at once), in order; ``api_model``
        overrides the model name for this call. ``adapter`` is ignored (the endpoint's model name selects it)."""
        n = len(prompts)
        model = api_model or self.api_model
        caps = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(c) for c in max_new_tokens]
        if len(caps) != n:
            raise ValueError(f"{len(caps)} max_new_tokens values for {n} prompts")
        t0 = time.perf_counter()
        out = list(self._pool.map(lambda pc: self._one(pc[0], pc[1], temperature, top_p, model), zip(prompts, caps)))
        for g in out:  # re-encoded here, in the caller's thread: a fast tokenizer is not safe to share across threads
            g.token_ids = self.tokenizer(g.text, add_special_tokens=False)["input_ids"] if g.text else []
            if g.num_tokens < 0:
                g.num_tokens = len(g.token_ids)
        self.stats.seconds += time.perf_counter() - t0
        self.stats.tokens += sum(g.num_tokens for g in out)
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()
