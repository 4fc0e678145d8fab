"""``tokenskip serve``: an OpenAI-compatible HTTP server for a model and its TokenSkip adapter.

Built on FastAPI + uvicorn. Endpoints:

* ``POST /v1/chat/completions`` — the standard body (``model``, ``messages``, ``max_tokens``,
  ``temperature``, ``top_p``, ``stop``, ``stream``, ``n`` = 1, and where the engine honours them ``seed``,
  ``logprobs``/``top_logprobs``, ``presence_penalty``/``frequency_penalty``) plus two extensions: ``compression_ratio``
  (γ ∈ (0, 1]) or ``max_cot_tokens`` (a CoT budget N, :mod:`tokenskip.generation.length_model`). The prompt is built by
  :mod:`tokenskip.generation.inference` in the adapter's stored format (``prompt_format.json``): the same string
  ``tokenskip evaluate`` builds for that question and γ. The response is the standard one; ``usage`` adds
  ``cot_tokens`` and the message adds ``final_answer`` and ``compression_ratio`` (the γ used; chosen from the
  budget in budget mode). ``"return_prompt": true`` adds the prompt string to the message. An adapter folder with a
  γ calibration (``gamma_calibration.json``, ``tokenskip calibrate``) is served as ``evaluate`` decodes it: each γ
  at its own LoRA scale under the calibration's marker (requests at different γ in one batch each get theirs),
  the message adds ``lora_scale`` and ``marker_ratio``, and a γ outside the calibrated range is a 400 naming it.
* ``POST /v1/completions`` — a raw prompt, no γ handling (what ``evaluate --backend openai`` sends).
* ``GET /v1/models`` (the base model's name and the adapter's), ``GET /health`` (200 when ready, 503 while
  loading or after a failed load).

``stream: true`` answers with server-sent events (``chat.completion.chunk`` objects, then ``[DONE]``). On the
HF and vLLM engines the text is sent token by token while the request decodes (text that could still be cut
by a stop string is held back until it cannot); ``--upstream`` sends it in token-sized pieces once decoding
is done. Joined, the chunks always equal the non-streamed text; the
last chunk carries ``finish_reason``, ``final_answer``, the γ used and ``usage``. An engine failure before
the first token is an ordinary JSON error (500); after it, an ``error`` event ends the stream.

Batching: requests go through a bounded queue to one worker thread. HF (dynamic batching): it takes up to
``--max-batch-size`` of them (waiting at most ``--batch-wait-ms`` for more once one arrives), groups them by model
and sampling settings and decodes each group in one padded batch; requests arriving meanwhile wait for the next
one. ``--backend vllm`` (continuous batching): each request is handed at once and alone, from a thread pool, to
vLLM's asynchronous engine (:mod:`tokenskip.engines.vllm_async`), whose scheduler adds it to the running batch at
its next step, and is answered as soon as it is done; ``--upstream`` likewise sends each request at once.
``GET /health`` shows the largest group (``max_batch_seen``; 1 on those two) and, on vLLM, the most requests in the
engine at once (``max_in_flight``). A full queue answers 429.

A client that disconnects (watched while its request waits and while it streams) has its job cancelled
(:func:`unless_gone`, :meth:`ServerState.cancel`): dropped from the queue, or stopped within a step by an engine that
can (``Capabilities.cancel``).

Errors are OpenAI-style JSON ``{"error": {"message", "type", "param", "code"}}``: 400 for an invalid body
(γ outside (0, 1], γ and a budget together, empty ``messages``, an unknown model, ``max_tokens`` < 1, ...),
404/405 for unknown routes, 429 when the queue is full, 503 while loading, 500 for an engine failure;
the server keeps serving after any of them.

Scale-out: ``--upstream URL`` loads no weights. It proxies to an existing OpenAI-compatible deployment
(``vllm serve BASE --enable-lora --lora-modules NAME=ADAPTER``): it builds the γ-marked prompt, sends it
to ``URL/completions`` and parses the answer; the models are the upstream's (``/v1/models``).

Modules: this one (settings, routes, CLI); :mod:`~tokenskip.serving.protocol` (bodies → jobs, errors,
response shapes); :mod:`~tokenskip.serving.worker` (the engine, built by :func:`tokenskip.engines.get_backend`,
and the batching worker); :mod:`~tokenskip.serving.streaming` (server-sent events).
"""

import argparse
import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tokenskip.contract.config import ModelSettings, add_dataclass_args, dataclass_from_args
from tokenskip.contract.console import quiet
from tokenskip.engines import SERVED_BACKENDS
from tokenskip.serving.protocol import APIError, Job, chat_response, completion_response, parse_chat, parse_completion
from tokenskip.serving.streaming import TokenStream, sse_events
from tokenskip.serving.worker import ServerState, calibration_refusal

logger = logging.getLogger(__name__)


@dataclass
class ServeConfig(ModelSettings):
    """Settings of ``tokenskip serve``."""

    model: str = field(default="smollm2-135m-instruct", metadata={"help": "base model: alias, .gguf, folder or Hub id "
                                                                          "(with --upstream: its tokenizer)"})
    adapter: str | None = field(default=None, metadata={"help": "TokenSkip LoRA adapter folder (its prompt_format.json "
                                                                "sets the prompt format)"})
    backend: str = field(default="hf", metadata={"help": "engine", "choices": list(SERVED_BACKENDS)})
    upstream: str | None = field(default=None, metadata={"help": "proxy to this OpenAI-compatible base URL (e.g. "
                                                                 "http://127.0.0.1:8000/v1 of 'vllm serve "
                                                                 "--enable-lora') instead of loading weights"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8088, metadata={"help": "TCP port"})
    served_model_name: str | None = field(default=None, metadata={"help": "name of the base model in the API (default: "
                                                                          "--model)"})
    adapter_name: str | None = field(default=None, metadata={"help": "name of the adapter in the API (default: the "
                                                                     "adapter folder's name)"})
    length_model: str | None = field(default=None, metadata={"help": "budget mode's length model (JSON of 'tokenskip "
                                                                     "fit-length', or original CoTs' "
                                                                     "predictions.jsonl; default: "
                                                                     "<adapter>/length_model.json)"})
    system_prompt: str | None = field(default=None, metadata={"help": "override the adapter's system turn"})
    marker_delimiter: str | None = field(default=None, metadata={"help": "override the adapter's γ marker delimiter"})
    cot_format: str | None = field(default=None, metadata={
        "help": "override the adapter's CoT format: think (reasoning models: max_cot_tokens closes the <think> block "
                "at N, no length model needed), plain, auto (from the chat template)",
        "choices": ["auto", "plain", "think"]})
    enable_thinking: bool | None = field(default=None, metadata={
        "help": "the chat template's enable_thinking (Qwen3 style); default: the adapter's, else the template's"})
    max_batch_size: int = field(default=8, metadata={"help": "HF: requests decoded together at most (vLLM and "
                                                                 "--upstream take each request alone: they batch "
                                                                 "by themselves)"})
    batch_invariant: bool = field(default=False, metadata={
        "help": "decode every request alone (HF: batches of 1; vLLM: one sequence at a time), so a greedy reply "
                "does not depend on what else is in flight (with bfloat16 weights batched matmuls round "
                "differently); costs throughput: requests wait their turn (docs/serving.md)"})
    batch_wait_ms: float = field(default=10.0, metadata={"help": "HF: how long a batch waits for more requests once "
                                                                 "one arrived (ms)"})
    max_queue: int = field(default=256, metadata={"help": "queued requests at most (more get 429)"})
    default_max_tokens: int = field(default=512, metadata={"help": "max_tokens when a request gives none"})
    merge_adapter: bool = field(default=False, metadata={"help": "merge the adapter into the weights (faster; then "
                                                                 "only the adapter is served; not with a γ-calibrated "
                                                                 "adapter)"})
    max_loras: int = field(default=4, metadata={
        "help": "a γ-calibrated adapter: LoRA scales (one adapter copy each) loaded at once — HF: kept besides the "
                "adapter's own, least recently used evicted; vLLM: adapters in one engine step (max_loras)"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "--upstream: environment variable with the "
                                                                         "upstream API key"})
    max_in_flight: int = field(default=16, metadata={"help": "--upstream: requests in flight to the upstream at most, "
                                                             "per served model"})
    enforce_eager: bool = field(default=False, metadata={"help": "--backend vllm: skip graph compilation (faster "
                                                                 "start-up)"})
    max_model_len: int | None = field(default=None, metadata={"help": "--backend vllm: context length cap in tokens"})
    log_level: str = field(default="info", metadata={"help": "uvicorn log level"})

    instruction: bool = field(default=True, metadata={
        "help": "prepend the adapter's trained instruction line to each request's last user turn (the TokenSkip "
                "format); --no-instruction for clients that send their own prompt format (e.g. a harness's few-shot "
                "prompts); a request's \"add_instruction\" overrides it"})
    def validate(self) -> None:
        if self.backend not in SERVED_BACKENDS:
            raise ValueError(f"serve: --backend must be {' or '.join(SERVED_BACKENDS)}, got {self.backend!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"serve: --port must be in 0..65535, got {self.port}")
        for name in ("max_batch_size", "max_queue", "default_max_tokens", "max_in_flight", "max_loras"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve: --{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"serve: --batch-wait-ms must be >= 0, got {self.batch_wait_ms}")
        if self.adapter and not Path(self.adapter).is_dir():
            raise FileNotFoundError(f"serve: adapter folder not found: {self.adapter}")
        if self.length_model and not Path(self.length_model).is_file():
            raise FileNotFoundError(f"serve: length model not found: {self.length_model}")
        refusal = calibration_refusal(self)
        if refusal:
            raise ValueError(refusal)


# ------------------------------------------------------------------------------------------- the app
# FastAPI is imported inside the functions below: ``tokenskip serve --help`` works without the serve extra.
# (No ``from __future__ import annotations`` here: FastAPI reads the routes' ``Request`` annotations.)

def create_app(cfg: ServeConfig, state: ServerState | None = None):
    """The FastAPI app for ``cfg`` (the engine loads in the background when the app starts)."""
    from fastapi import FastAPI

    state = state or ServerState(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.start()
        yield
        await asyncio.to_thread(state.close)

    app = FastAPI(title="tokenskip", lifespan=lifespan)
    app.state.tokenskip = state
    _add_error_handlers(app)
    _add_info_routes(app, state)
    _add_completion_routes(app, state)
    return app


def _add_error_handlers(app) -> None:
    """Every error as OpenAI-style JSON (:class:`APIError`'s body)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

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


def _ready(state: ServerState) -> None:
    """Raise 503 unless the engine is loaded."""
    if state.status == "loading":
        raise APIError(503, "the model is loading; retry shortly", code="loading")
    if state.status == "failed":
        raise APIError(503, f"the model failed to load: {state.error}", code="load_failed")


async def _body_of(request):
    """The request's JSON body; 400 for one that is not JSON or nests deeper than the parser's recursion limit
    (``[[[…]]]`` 1,000 deep: Python's parser raises ``RecursionError``, which would otherwise be a 500)."""
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise APIError(400, "the request body nests too deeply to parse") from None


async def _run_future(fut):
    """The result of a job's future; a ``ValueError`` of the engine side is the request's fault (400)."""
    try:
        return await fut
    except APIError:
        raise
    except ValueError as e:
        raise APIError(400, str(e)) from None


async def _client_gone(request) -> None:
    """Return once the client has disconnected: the body is read, so the next ASGI message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request, job: Job, state: ServerState, awaitable):
    """The result of ``awaitable``, unless the client disconnects first: then the job is cancelled (dropped from the
    queue, or its decoding stopped within a step by engines that can, ``Capabilities.cancel``) and a 499 raised
    (nobody reads it). A handler cancelled meanwhile cancels the job too."""
    task = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        state.cancel(job)   # before the task: cancelling it cancels the job's future
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task not in done:
        state.cancel(job)
        task.cancel()
        raise APIError(499, "the client disconnected", code="client_closed_request")
    return task.result()


async def _run(request, state: ServerState, job: Job):
    return await unless_gone(request, job, state, _run_future(asyncio.wrap_future(state.submit(job))))


def _add_info_routes(app, state: ServerState) -> None:
    """``GET /health`` and ``GET /v1/models``."""
    from fastapi.responses import JSONResponse

    cfg = state.cfg

    @app.get("/health")
    async def health():
        body = {"status": state.status, "models": state.models, "backend": "upstream" if cfg.upstream else cfg.backend,
                "queued": state.jobs.qsize(), "batches": state.batches, "max_batch_seen": state.max_batch_seen,
                "cancelled": state.cancelled}
        if getattr(state.engine, "peak_in_flight", None) is not None:
            body["max_in_flight"] = state.engine.peak_in_flight
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    @app.get("/v1/models")
    async def models():
        _ready(state)
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "tokenskip"}
                                           for m in state.models]}


def _add_completion_routes(app, state: ServerState) -> None:
    """``POST /v1/chat/completions`` (streamed or not) and ``POST /v1/completions``."""
    from fastapi import Request
    from fastapi.responses import StreamingResponse

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        _ready(state)
        job, stream, return_prompt = parse_chat(await _body_of(request), state)
        if not stream:
            return chat_response(job, await _run(request, state, job), state, return_prompt)
        ts = TokenStream(job, state)
        first = await unless_gone(request, job, state, ts.next_ids())
        if first is None:  # done before any token was streamed: a failure is still an ordinary JSON error
            await _run_future(ts.future)
        return StreamingResponse(sse_events(ts, first, return_prompt), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        _ready(state)
        job = parse_completion(await _body_of(request), state)
        return completion_response(job, await _run(request, state, job), state)


# ------------------------------------------------------------------------------------------- the CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, ServeConfig, skip=("log_level",))


def run_cli(args: argparse.Namespace) -> int:
    import uvicorn

    cfg = dataclass_from_args(ServeConfig, args)
    cfg.log_level = "warning" if quiet() else getattr(args, "log_level", "INFO").lower()
    app = create_app(cfg)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
    return 0
