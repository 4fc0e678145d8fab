"""``tokenskip serve``: an OpenAI-compatible HTTP server for a model and its TokenSkip adapter.

Built on FastAPI + uvicorn. Endpoints:

* ``POST /v1/chat/completions`` — the standard body (``model``, ``messages``, ``max_tokens``,
  ``temperature``, ``top_p``, ``stop``, ``stream``, ``n`` = 1) plus two extensions: ``compression_ratio``
  (γ ∈ (0, 1]) or ``max_cot_tokens`` (a CoT budget N, :mod:`tokenskip.generation.length_model`). The prompt is built by
  :mod:`tokenskip.generation.inference` in the adapter's stored format (``prompt_format.json``): the same string
  ``tokenskip evaluate`` builds for that question and γ. The response is the standard one; ``usage`` adds
  ``cot_tokens`` and the message adds ``final_answer`` and ``compression_ratio`` (the γ used; chosen from the
  budget in budget mode). ``"return_prompt": true`` adds the prompt string to the message.
* ``POST /v1/completions`` — a raw prompt, no γ handling (what ``evaluate --backend openai`` sends).
* ``GET /v1/models`` (the base model's name and the adapter's), ``GET /health`` (200 when ready, 503 while
  loading or after a failed load).

``stream: true`` answers with server-sent events (``chat.completion.chunk`` objects, then ``[DONE]``). On the
HF and vLLM engines the text is sent token by token while the request decodes (text that could still be cut
by a stop string is held back until it cannot); ``--upstream`` sends it in token-sized pieces once decoding
is done. Joined, the chunks always equal the non-streamed text; the
last chunk carries ``finish_reason``, ``final_answer``, the γ used and ``usage``. An engine failure before
the first token is an ordinary JSON error (500); after it, an ``error`` event ends the stream.

Batching: requests go through a bounded queue; one worker thread takes up to ``--max-batch-size`` of them
(waiting at most ``--batch-wait-ms`` for more once one arrives) and groups them by model and sampling
settings. HF (dynamic batching): each group is decoded in one padded batch; requests arriving meanwhile
wait for the next one. ``--backend vllm`` (continuous batching): each group is handed at once, from a
thread pool, to vLLM's asynchronous engine (:mod:`tokenskip.engines.vllm_async`), whose scheduler adds
every request to the running batch at its next step; ``--upstream`` likewise sends each group at once.
``GET /health`` shows the largest group (``max_batch_seen``) and, on vLLM, the most requests in the engine
at once (``max_in_flight``). A full queue answers 429.

Errors are OpenAI-style JSON ``{"error": {"message", "type", "param", "code"}}``: 400 for an invalid body
(γ outside (0, 1], γ and a budget together, empty ``messages``, an unknown model, ``max_tokens`` < 1, ...),
404/405 for unknown routes, 429 when the queue is full, 503 while loading, 500 for an engine failure;
the server keeps serving after any of them.

Scale-out: ``--upstream URL`` loads no weights. It proxies to an existing OpenAI-compatible deployment
(``vllm serve BASE --enable-lora --lora-modules NAME=ADAPTER``): it builds the γ-marked prompt, sends it
to ``URL/completions`` and parses the answer; the models are the upstream's (``/v1/models``).
"""

import argparse
import asyncio
import concurrent.futures
import contextlib
import copy
import inspect
import json
import logging
import math
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tokenskip.contract.config import add_dataclass_args, dataclass_from_args
from tokenskip.generation.inference import Decoding, Query, answer, cut_at_stop, plan_ratio
from tokenskip.engines.models import DTYPES, WEIGHTS_DTYPE_HELP

logger = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """Settings of ``tokenskip serve``."""

    model: str = field(default="smollm2-135m-instruct", metadata={"help": "base model: alias, .gguf, folder or Hub id (with --upstream: its tokenizer)"})
    adapter: str | None = field(default=None, metadata={"help": "TokenSkip LoRA adapter folder (its prompt_format.json sets the prompt format)"})
    backend: str = field(default="hf", metadata={"help": "engine", "choices": ["hf", "vllm"]})
    upstream: str | None = field(default=None, metadata={"help": "proxy to this OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1 of 'vllm serve --enable-lora') instead of loading weights"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8088, metadata={"help": "TCP port"})
    served_model_name: str | None = field(default=None, metadata={"help": "name of the base model in the API (default: --model)"})
    adapter_name: str | None = field(default=None, metadata={"help": "name of the adapter in the API (default: the adapter folder's name)"})
    length_model: str | None = field(default=None, metadata={"help": "budget mode's length model (JSON of 'tokenskip fit-length', or original CoTs' predictions.jsonl; default: <adapter>/length_model.json)"})
    system_prompt: str | None = field(default=None, metadata={"help": "override the adapter's system turn"})
    marker_delimiter: str | None = field(default=None, metadata={"help": "override the adapter's γ marker delimiter"})
    max_batch_size: int = field(default=8, metadata={"help": "requests decoded together at most"})
    batch_wait_ms: float = field(default=10.0, metadata={"help": "how long a batch waits for more requests once one arrived (ms)"})
    max_queue: int = field(default=256, metadata={"help": "queued requests at most (more get 429)"})
    default_max_tokens: int = field(default=512, metadata={"help": "max_tokens when a request gives none"})
    merge_adapter: bool = field(default=False, metadata={"help": "merge the adapter into the weights (faster; then only the adapter is served)"})
    dtype: str = field(default="auto", metadata={"help": WEIGHTS_DTYPE_HELP, "choices": list(DTYPES)})
    device: str = field(default="cpu", metadata={"help": "torch device"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "--upstream: environment variable with the upstream API key"})
    max_in_flight: int = field(default=16, metadata={"help": "--upstream: requests in flight to the upstream at most"})
    enforce_eager: bool = field(default=False, metadata={"help": "--backend vllm: skip graph compilation (faster start-up)"})
    max_model_len: int | None = field(default=None, metadata={"help": "--backend vllm: context length cap in tokens"})
    log_level: str = field(default="info", metadata={"help": "uvicorn log level"})

    def validate(self) -> None:
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"serve: --backend must be hf or vllm, got {self.backend!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"serve: --port must be in 0..65535, got {self.port}")
        for name in ("max_batch_size", "max_queue", "default_max_tokens", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve: --{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"serve: --batch-wait-ms must be >= 0, got {self.batch_wait_ms}")
        if self.adapter and not Path(self.adapter).is_dir():
            raise FileNotFoundError(f"serve: adapter folder not found: {self.adapter}")
        if self.length_model and not Path(self.length_model).is_file():
            raise FileNotFoundError(f"serve: length model not found: {self.length_model}")


class APIError(Exception):
    """An error answered as OpenAI-style JSON with HTTP ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error",
                              503: "service_unavailable"}.get(status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ------------------------------------------------------------------------------------------- the engine side

@dataclass
class _Job:
    kind: str                      # "chat" (a Query) or "raw" (prompt + cap)
    model: str
    query: Query | None = None
    prompt: str | None = None
    decoding: Decoding = field(default_factory=Decoding)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    on_tokens: object = None       # streaming: called from the engine thread with each step's new token ids


class ServerState:
    """What the app serves: the engine (loaded in a background thread), names, format, length model, queue."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.status, self.error = "loading", None
        self.engine = self.fmt = self.length_model = None
        self.tokenizer = None  # the request side's own copy: the engine thread's tokenizer is not shared
        self.base_name = cfg.served_model_name or cfg.model
        self.adapter_name = (cfg.adapter_name or Path(cfg.adapter).name) if cfg.adapter else None
        self.models: list[str] = []
        self.sampling = True
        self.batches, self.max_batch_seen = 0, 0   # engine batches run, and the largest (shown on /health)
        self.jobs: queue.Queue[_Job] = queue.Queue(maxsize=cfg.max_queue)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    # -- loading
    def start(self) -> None:
        t = threading.Thread(target=self._load_then_work, name="tokenskip-engine", daemon=True)
        t.start()
        self._threads.append(t)

    def _load_then_work(self) -> None:
        try:
            self._load()
        except Exception as e:  # the server stays up and says why on /health and every request
            logger.exception("loading failed")
            self.status, self.error = "failed", f"{type(e).__name__}: {e}"
            return
        if self.cfg.upstream or getattr(self.engine, "concurrent", False):
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.cfg.max_queue,
                                                               thread_name_prefix="tokenskip-request")
        self.status = "ready"
        logger.info("ready: models %s", self.models)
        self._work()

    def _load(self) -> None:
        self._load_engine()
        # Rust tokenizers are not thread-safe (a padded batch call in the engine thread and a plain call here
        # at the same time return unpadded ids), so the event loop counts and splits with a copy.
        self.tokenizer = copy.deepcopy(self.engine.tokenizer)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` (request side, no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _load_engine(self) -> None:
        from tokenskip.generation.length_model import load_length_model
        from tokenskip.engines.models import configure_threads
        from tokenskip.task.prompt_format import resolve_prompt_format

        cfg = self.cfg
        configure_threads(cfg.threads)
        self.fmt = resolve_prompt_format(cfg.adapter, cfg.system_prompt, cfg.marker_delimiter)
        lm = cfg.length_model or (str(Path(cfg.adapter) / "length_model.json")
                                  if cfg.adapter and (Path(cfg.adapter) / "length_model.json").is_file() else None)
        self.length_model = load_length_model(lm) if lm else None
        if cfg.upstream:
            from tokenskip.engines.openai import OpenAIBackend

            self.engine = OpenAIBackend(model=cfg.model, base_url=cfg.upstream, api_key_env=cfg.api_key_env,
                                        max_in_flight=cfg.max_in_flight, api_model="-")
            while not self._stop.is_set():  # 503 until the upstream answers
                try:
                    self.models = [m.id for m in self.engine.client.models.list()]
                    return
                except Exception as e:  # noqa: BLE001 - any connection error: retry
                    logger.warning("upstream %s not ready (%s); retrying in 2 s", cfg.upstream, e)
                    self._stop.wait(2.0)
            raise RuntimeError("stopped before the upstream answered")
        kw = dict(model=cfg.model, dtype=cfg.dtype, device=cfg.device, batch_size=cfg.max_batch_size,
                  adapter=cfg.adapter, merge_adapter=cfg.merge_adapter, show_progress=False, threads=cfg.threads)
        if cfg.backend == "vllm":  # the asynchronous engine: continuous batching across requests
            from tokenskip.engines.vllm_async import AsyncVLLMBackend

            self.engine = AsyncVLLMBackend(**kw, enforce_eager=cfg.enforce_eager, max_model_len=cfg.max_model_len)
        else:
            from tokenskip.engines import get_backend

            self.engine = get_backend(cfg.backend, **kw)
        self.sampling = "temperature" in inspect.signature(self.engine.generate).parameters
        if self.adapter_name and (cfg.merge_adapter or cfg.backend == "vllm"):
            self.models = [self.adapter_name]
        else:
            self.models = [self.base_name] + ([self.adapter_name] if self.adapter_name else [])

    # -- the worker
    def submit(self, job: _Job) -> concurrent.futures.Future:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise APIError(429, f"server busy: {self.cfg.max_queue} requests queued; retry later") from None
        return job.future

    def _work(self) -> None:
        wait = self.cfg.batch_wait_ms / 1000.0
        while not self._stop.is_set():
            try:
                first = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            batch, deadline = [first], time.monotonic() + wait
            while len(batch) < self.cfg.max_batch_size:
                left = deadline - time.monotonic()
                try:
                    batch.append(self.jobs.get(timeout=left) if left > 0 else self.jobs.get_nowait())
                except queue.Empty:
                    break
            self.batches += 1
            self.max_batch_seen = max(self.max_batch_seen, len(batch))
            groups: dict[tuple, list[_Job]] = {}
            for j in batch:
                groups.setdefault((j.kind, j.model, j.decoding.temperature, j.decoding.top_p), []).append(j)
            for jobs in groups.values():
                if self._pool is not None:   # an engine that batches continuously: hand the group over now
                    self._pool.submit(self._run_group, jobs)
                else:
                    self._run_group(jobs)

    def _engine_for(self, model: str):
        """The engine for ``model``: upstream calls name it; the base model of an unmerged adapter runs with
        the adapter disabled."""
        eng = self.engine
        if self.cfg.upstream:
            class Routed:
                tokenizer, count_tokens, name, batch_size = eng.tokenizer, eng.count_tokens, eng.name, eng.batch_size

                def generate(self, prompts, caps, **kw):
                    return eng.generate(prompts, caps, api_model=model, **kw)
            return Routed(), contextlib.nullcontext()
        if self.adapter_name and model == self.base_name and hasattr(getattr(eng, "model", None), "disable_adapter"):
            return eng, eng.model.disable_adapter()
        return eng, contextlib.nullcontext()

    def _run_group(self, jobs: list[_Job]) -> None:
        try:
            eng, ctx = self._engine_for(jobs[0].model)
            with ctx:
                if jobs[0].kind == "chat":
                    streaming = [j.on_tokens for j in jobs]
                    hook = None
                    if any(streaming):
                        def hook(i, ids, streaming=streaming):
                            if streaming[i] is not None:
                                streaming[i](ids)
                    results = answer(eng, [j.query for j in jobs], self.fmt, self.length_model, on_tokens=hook)
                else:
                    kw = ({"temperature": jobs[0].decoding.temperature, "top_p": jobs[0].decoding.top_p}
                          if jobs[0].decoding.temperature else {})
                    results = eng.generate([j.prompt for j in jobs], [j.decoding.max_tokens for j in jobs], **kw)
            for j, r in zip(jobs, results):
                j.future.set_result(r)
        except Exception as e:  # noqa: BLE001 - reported to each request as a 500; the worker goes on
            logger.exception("engine failure on a batch of %d", len(jobs))
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        while True:
            try:
                self.jobs.get_nowait().future.set_exception(APIError(503, "server shutting down"))
            except queue.Empty:
                break
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self.engine is not None:
            self.engine.close()


# ------------------------------------------------------------------------------------------- request parsing

def _number(body: dict, name: str, default, lo: float, hi: float, lo_open: bool = False):
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or (v <= lo if lo_open else v < lo) or v > hi:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise APIError(400, f"'{name}' must be a number in {rng}, got {v!r}", name)
    return float(v)


def _int(body: dict, name: str, default: int | None, lo: int = 1) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise APIError(400, f"'{name}' must be an integer >= {lo}, got {v!r}", name)
    return v


def _stop(body: dict) -> tuple[str, ...]:
    s = body.get("stop")
    if s is None:
        return ()
    if isinstance(s, str):
        s = [s]
    if not isinstance(s, list) or len(s) > 4 or not all(isinstance(x, str) and x for x in s):
        raise APIError(400, "'stop' must be a non-empty string or a list of at most 4 of them", "stop")
    return tuple(s)


def _content(m, i: int) -> str:
    c = m.get("content")
    if isinstance(c, list):  # content parts: keep the text ones
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in c):
            raise APIError(400, f"messages[{i}].content: only text parts are supported", "messages")
        c = "".join(p["text"] for p in c)
    if not isinstance(c, str):
        raise APIError(400, f"messages[{i}].content must be a string", "messages")
    return c


def parse_chat(body, state: ServerState) -> tuple[_Job, bool, bool]:
    """``(job, stream, return_prompt)`` of a chat completions body.

    Raises:
        APIError: 400 with the offending field as ``param``.
    """
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = _model(body, state)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty list", "messages")
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
            raise APIError(400, f"messages[{i}].role must be one of system, user, assistant", "messages")
        role = "system" if m["role"] == "developer" else m["role"]
        messages.append({"role": role, "content": _content(m, i)})
    if not any(m["role"] == "user" for m in messages):
        raise APIError(400, "'messages' needs at least one user turn", "messages")
    if _int(body, "n", 1) != 1:
        raise APIError(400, "only n = 1 is supported", "n")
    max_tokens = _int(body, "max_tokens", None) or _int(body, "max_completion_tokens", None) \
        or state.cfg.default_max_tokens
    dec = Decoding(max_tokens=max_tokens, temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
                   top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True), stop=_stop(body))
    _check_sampling(dec, state)
    ratio = body.get("compression_ratio")
    if ratio is not None:
        ratio = _number(body, "compression_ratio", None, 0.0, 1.0, lo_open=True)
    budget = _int(body, "max_cot_tokens", None)
    if ratio is not None and budget is not None:
        raise APIError(400, "give 'compression_ratio' or 'max_cot_tokens', not both", "compression_ratio")
    if budget is not None and state.length_model is None:
        raise APIError(400, "'max_cot_tokens' needs a length model: start the server with --length-model",
                       "max_cot_tokens")
    for name in ("stream", "return_prompt"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise APIError(400, f"'{name}' must be a boolean", name)
    query = Query(messages=messages, ratio=ratio, max_cot_tokens=budget, decoding=dec)
    try:
        plan_ratio(query, state.fmt, state.length_model)
    except ValueError as e:
        raise APIError(400, str(e)) from None
    return _Job("chat", model, query=query, decoding=dec), bool(body.get("stream")), bool(body.get("return_prompt"))


def parse_completion(body, state: ServerState) -> _Job:
    """The job of a raw-prompt completions body (one prompt)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = _model(body, state)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise APIError(400, "'prompt' must be one non-empty string", "prompt")
    if _int(body, "n", 1) != 1:
        raise APIError(400, "only n = 1 is supported", "n")
    if body.get("stream"):
        raise APIError(400, "stream is not supported on /v1/completions", "stream")
    dec = Decoding(max_tokens=_int(body, "max_tokens", 16), temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
                   top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True), stop=_stop(body))
    _check_sampling(dec, state)
    return _Job("raw", model, prompt=prompt, decoding=dec)


def _model(body: dict, state: ServerState) -> str:
    model = body.get("model")
    if model is None:
        return state.models[0]
    if model not in state.models:
        raise APIError(400, f"model {model!r} is not served here; available: {state.models}", "model",
                       "model_not_found")
    return model


def _check_sampling(dec: Decoding, state: ServerState) -> None:
    if dec.temperature > 0 and not state.sampling:
        raise APIError(400, f"this server's {state.cfg.backend} engine decodes greedily only: use temperature 0",
                       "temperature")


# ------------------------------------------------------------------------------------------- responses

def _chat_response(job: _Job, a, state: ServerState, return_prompt: bool) -> dict:
    prompt_tokens = state.count_tokens(a.prompt)
    msg = {"role": "assistant", "content": a.text, "final_answer": a.final_answer, "compression_ratio": a.ratio}
    if a.max_cot_tokens is not None:
        msg["max_cot_tokens"] = a.max_cot_tokens
    if return_prompt:
        msg["prompt"] = a.prompt
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": job.model, "choices": [{"index": 0, "message": msg, "finish_reason": a.finish_reason,
                                             "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": a.output_tokens,
                      "total_tokens": prompt_tokens + a.output_tokens, "cot_tokens": a.cot_tokens}}


def text_pieces(tokenizer, text: str) -> list[str]:
    """``text`` split at its token boundaries (joined, the pieces are exactly ``text``)."""
    if not text:
        return []
    try:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        cuts = sorted({0, *(s for s, _ in offsets if 0 < s < len(text))})
    except (NotImplementedError, KeyError, TypeError):  # slow tokenizers: fixed-size pieces
        cuts = list(range(0, len(text), 8))
    return [text[a:b] for a, b in zip(cuts, cuts[1:] + [len(text)])]


def stream_safe(text: str, stops) -> str:
    """The part of a growing output ``text`` that can be sent now: cut before the first complete stop string,
    and without a trailing piece that could still become one (or an incomplete character, ``\ufffd``)."""
    cut = min([text.find(s) for s in stops if s and s in text], default=-1)
    if cut >= 0:
        return text[:cut]
    text = text.rstrip("\ufffd").rstrip()   # trailing spaces: a tokenizer's clean-up may still change them
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return text[:len(text) - hold] if hold else text


class _TokenStream:
    """The request side of one streamed answer: the engine thread pushes token ids, the event loop reads them."""

    def __init__(self, job: _Job, state: ServerState):
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.job, self.state = job, state
        job.on_tokens = lambda ids: self.loop.call_soon_threadsafe(self.events.put_nowait, list(ids))
        self.future = asyncio.wrap_future(state.submit(job))   # 429 is raised here, before any byte is sent
        self.ids: list[int] = []
        engine_stops = getattr(getattr(state.engine, "stop", None), "strings", ()) or ()
        self.stops = [*job.decoding.stop, *engine_stops]

    async def next_ids(self) -> list[int] | None:
        """The next token ids, or ``None`` once the answer is complete (its future is done)."""
        if not self.events.empty():
            return self.events.get_nowait()
        if self.future.done():
            return None
        get = asyncio.ensure_future(self.events.get())
        done, _ = await asyncio.wait({get, self.future}, return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            return get.result()
        get.cancel()
        return None

    def text(self) -> str:
        return stream_safe(self.state.tokenizer.decode(self.ids, skip_special_tokens=True), self.stops)


def _sse_chunk_writer(job: _Job):
    """``chunk(delta, finish=None, **extra)``: one ``chat.completion.chunk`` event of this request's stream."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": job.model}

    def chunk(delta: dict, finish=None, **extra) -> str:
        return "data: " + json.dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                                           "logprobs": None}], **extra}) + "\n\n"
    return chunk


def _sse_tail(job: _Job, a, state: ServerState, return_prompt: bool, sent: str, chunk):
    """The rest of the text (after ``sent``) in token-sized pieces, the closing chunk and ``[DONE]``."""
    full = _chat_response(job, a, state, return_prompt)
    if not a.text.startswith(sent):  # stream_safe holds back what could change; this would be a tokenizer quirk
        logger.warning("streamed text is not a prefix of the answer; sending the rest after the common part")
    common = len(os.path.commonprefix([a.text, sent]))
    rest = a.text[common:]
    for piece in text_pieces(state.tokenizer, rest):
        yield chunk({"content": piece})
    last = {k: v for k, v in full["choices"][0]["message"].items() if k not in ("role", "content")}
    yield chunk(last, a.finish_reason, usage=full["usage"])
    yield "data: [DONE]\n\n"


async def _sse_events(stream: _TokenStream, first: list[int] | None, return_prompt: bool):
    """Server-sent events of a streamed chat answer: text deltas as tokens arrive, then :func:`_sse_tail`."""
    job, state = stream.job, stream.state
    chunk = _sse_chunk_writer(job)
    yield chunk({"role": "assistant", "content": ""})
    sent, ids = "", first
    while ids is not None:
        stream.ids.extend(ids)
        text = stream.text()
        if len(text) > len(sent) and text.startswith(sent):
            yield chunk({"content": text[len(sent):]})
            sent = text
        ids = await stream.next_ids()
    try:
        a = stream.future.result()
    except Exception as e:  # noqa: BLE001 - after the first byte the status is sent: report in the stream
        err = e if isinstance(e, APIError) else APIError(500, f"engine failure: {type(e).__name__}: {e}")
        yield "data: " + json.dumps(err.body()) + "\n\n"
        yield "data: [DONE]\n\n"
        return
    for event in _sse_tail(job, a, state, return_prompt, sent, chunk):
        yield event


def create_app(cfg: ServeConfig, state: ServerState | None = None):
    """The FastAPI app for ``cfg`` (the engine loads in the background when the app starts)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    state = state or ServerState(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.start()
        yield
        await asyncio.to_thread(state.close)

    app = FastAPI(title="tokenskip", lifespan=lifespan)
    app.state.tokenskip = state

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        return JSONResponse(APIError(e.status_code, str(e.detail), code=str(e.status_code)).body(),
                            status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e):
        return JSONResponse(APIError(400, str(e)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _internal_error(request, e):
        logger.exception("unhandled error")
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}: {e}").body(), status_code=500)

    def ready() -> None:
        if state.status == "loading":
            raise APIError(503, "the model is loading; retry shortly", code="loading")
        if state.status == "failed":
            raise APIError(503, f"the model failed to load: {state.error}", code="load_failed")

    async def body_of(request: Request):
        try:
            return json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from None

    async def run_future(fut):
        try:
            return await fut
        except APIError:
            raise
        except ValueError as e:
            raise APIError(400, str(e)) from None

    async def run(job: _Job):
        return await run_future(asyncio.wrap_future(state.submit(job)))

    @app.get("/health")
    async def health():
        body = {"status": state.status, "models": state.models, "backend": "upstream" if cfg.upstream else cfg.backend,
                "queued": state.jobs.qsize(), "batches": state.batches, "max_batch_seen": state.max_batch_seen}
        if getattr(state.engine, "peak_in_flight", None) is not None:
            body["max_in_flight"] = state.engine.peak_in_flight
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    @app.get("/v1/models")
    async def models():
        ready()
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "tokenskip"}
                                           for m in state.models]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        ready()
        job, stream, return_prompt = parse_chat(await body_of(request), state)
        if not stream:
            return _chat_response(job, await run(job), state, return_prompt)
        ts = _TokenStream(job, state)
        first = await ts.next_ids()
        if first is None:  # done before any token was streamed: a failure is still an ordinary JSON error
            await run_future(ts.future)
        return StreamingResponse(_sse_events(ts, first, return_prompt), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        ready()
        job = parse_completion(await body_of(request), state)
        g = await run(job)
        text, finish = g.text, g.finish_reason
        cut = cut_at_stop(text, job.decoding.stop)
        if cut is not None:
            text, finish = cut, "stop"
        prompt_tokens = state.count_tokens(job.prompt)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": job.model, "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": g.num_tokens,
                          "total_tokens": prompt_tokens + g.num_tokens}}

    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, ServeConfig, skip=("log_level",))


def run_cli(args: argparse.Namespace) -> int:
    import uvicorn

    cfg = dataclass_from_args(ServeConfig, args)
    from tokenskip.contract.console import quiet

    cfg.log_level = "warning" if quiet() else getattr(args, "log_level", "INFO").lower()
    app = create_app(cfg)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
    return 0
