"""The wire side of ``tokenskip serve``: request bodies parsed and checked into :class:`Job`\\ s, OpenAI-style
errors (:class:`APIError`) and the JSON response shapes of the chat and completions endpoints.

Nothing here touches the engine: a body becomes a job (or a 400 naming the offending field), and a finished
job's result becomes the response body.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tokenskip.generation.inference import Decoding, Query, cut_at_stop, plan_ratio

if TYPE_CHECKING:  # annotations only: the worker imports this module
    from tokenskip.serving.worker import ServerState


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


@dataclass
class Job:
    """One request for the engine worker (:class:`tokenskip.serving.worker.ServerState`)."""

    kind: str                      # "chat" (a Query) or "raw" (prompt + cap)
    model: str
    query: Query | None = None
    prompt: str | None = None
    decoding: Decoding = field(default_factory=Decoding)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    on_tokens: object = None       # streaming: called from the engine thread with each step's new token ids
    include_usage: bool = False    # streaming: a final chunk with the usage and no choices (stream_options)
    cancelled: threading.Event = field(default_factory=threading.Event)   # set when the client went away

    def cancel(self) -> None:
        """The client went away: the worker drops the job if it is still queued, the engine stops decoding it."""
        self.cancelled.set()

    def settle(self, result=None, error: BaseException | None = None) -> None:
        """Set the job's outcome, unless it is already set or the request side cancelled its future (the client
        left: an awaited future is cancelled with its task)."""
        try:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)
        except concurrent.futures.InvalidStateError:
            pass


# ------------------------------------------------------------------------------------------- request parsing

#: OpenAI parameters no engine here honours, with the values that ask for nothing (accepted): any other value is
#: a 400 naming the parameter, never silently ignored (docs/serving.md lists each parameter)
NOT_HONOURED: dict[str, tuple] = {
    "logit_bias": (None, {}), "response_format": (None, {"type": "text"}),
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "parallel_tool_calls": (None,), "audio": (None,), "modalities": (None, ["text"]), "prediction": (None,),
    "echo": (None, False), "best_of": (None, 1), "suffix": (None, ""),
}
#: the request parameter of each :class:`tokenskip.engines.RequestOptions` field an engine may not honour
OPTION_PARAMS = {"logprobs": "logprobs", "presence_penalty": "presence_penalty",
                 "frequency_penalty": "frequency_penalty", "seed": "seed"}


def _refuse_unhonoured(body: dict) -> None:
    """400 for a parameter no engine honours here (see :data:`NOT_HONOURED`)."""
    for name, neutral in NOT_HONOURED.items():
        if name in body and body[name] not in neutral:
            raise APIError(400, f"'{name}' is not supported by this server (docs/serving.md lists the OpenAI "
                                f"parameters it honours)", name, "unsupported_parameter")


def _refuse_for_engine(dec: Decoding, state: ServerState) -> None:
    """400 naming the parameter and the engine for a request option this server's engine does not honour at decode
    time (its capabilities' ``options``; stop strings are cut after decoding on any engine)."""
    honoured = state.engine.capabilities.options | {"stop"}
    for field_ in sorted(dec.options().asks() - honoured):
        name = OPTION_PARAMS[field_]
        why = " when sampling" if field_ == "seed" else ""
        raise APIError(400, f"'{name}' is not supported by this server's {state.engine_name} engine{why}", name,
                       "unsupported_parameter")


def _stream_options(body: dict) -> bool:
    """``stream_options.include_usage`` (only with ``stream: true``, as OpenAI's API)."""
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict) or not set(opts) <= {"include_usage"} \
            or not isinstance(opts.get("include_usage", False), bool):
        raise APIError(400, "'stream_options' must be an object {\"include_usage\": true|false}", "stream_options")
    if not body.get("stream"):
        raise APIError(400, "'stream_options' is only allowed with 'stream': true", "stream_options")
    return opts.get("include_usage", False)

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


def _messages(body: dict) -> list[dict]:
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
    return messages


def _decoding(body: dict, max_tokens: int, state: ServerState, logprobs: int | None = None) -> Decoding:
    """The request's decoding settings, checked; ``seed`` only counts when sampling (greedy does not use it)."""
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, f"'seed' must be an integer, got {seed!r}", "seed")
    dec = Decoding(max_tokens=max_tokens, temperature=temperature,
                   top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True), stop=_stop(body), logprobs=logprobs,
                   presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
                   frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
                   seed=seed if temperature > 0 else None)
    if dec.temperature > 0 and not state.sampling:
        raise APIError(400, f"this server's {state.cfg.backend} engine decodes greedily only: use temperature 0",
                       "temperature")
    _refuse_for_engine(dec, state)
    return dec


def _chat_logprobs(body: dict) -> int | None:
    """``logprobs`` (bool) and ``top_logprobs`` (0..20, only with ``logprobs``) of a chat body: ``None`` (off) or the
    number of alternatives per token."""
    lp, top = body.get("logprobs"), body.get("top_logprobs")
    if lp is not None and not isinstance(lp, bool):
        raise APIError(400, f"'logprobs' must be a boolean, got {lp!r}", "logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20):
        raise APIError(400, f"'top_logprobs' must be an integer in [0, 20], got {top!r}", "top_logprobs")
    if top and not lp:
        raise APIError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return (top or 0) if lp else None


def _completion_logprobs(body: dict) -> int | None:
    """``logprobs`` of a completions body (the legacy API: an integer 0..5, the alternatives per token)."""
    lp = body.get("logprobs")
    if lp is None:
        return None
    if isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= 5:
        raise APIError(400, f"'logprobs' must be an integer in [0, 5] on /v1/completions, got {lp!r}", "logprobs")
    return lp


def _model(body: dict, state: ServerState) -> str:
    model = body.get("model")
    if model is None:
        return state.models[0]
    if model not in state.models:
        raise APIError(400, f"model {model!r} is not served here; available: {state.models}", "model",
                       "model_not_found")
    return model


def parse_chat(body, state: ServerState) -> tuple[Job, bool, bool]:
    """``(job, stream, return_prompt)`` of a chat completions body.

    Raises:
        APIError: 400 with the offending field as ``param``.
    """
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = _model(body, state)
    messages = _messages(body)
    if _int(body, "n", 1) != 1:
        raise APIError(400, "only n = 1 is supported", "n")
    max_tokens = _int(body, "max_tokens", None) or _int(body, "max_completion_tokens", None) \
        or state.cfg.default_max_tokens
    _refuse_unhonoured(body)
    dec = _decoding(body, max_tokens, state, _chat_logprobs(body))
    ratio = body.get("compression_ratio")
    if ratio is not None:
        ratio = _number(body, "compression_ratio", None, 0.0, 1.0, lo_open=True)
    budget = _int(body, "max_cot_tokens", None)
    if ratio is not None and budget is not None:
        raise APIError(400, "give 'compression_ratio' or 'max_cot_tokens', not both", "compression_ratio")
    if budget is not None and state.length_model is None and state.fmt.cot_format != "think":
        raise APIError(400, "'max_cot_tokens' needs a length model: start the server with --length-model",
                       "max_cot_tokens")
    if budget is not None and dec.logprobs is not None:
        raise APIError(400, "'logprobs' cannot be combined with 'max_cot_tokens' (a forced answer line is not "
                            "sampled from the model's own continuation)", "logprobs")
    for name in ("stream", "return_prompt", "add_instruction"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise APIError(400, f"'{name}' must be a boolean", name)
    instruction = state.cfg.instruction if body.get("add_instruction") is None else body["add_instruction"]
    query = Query(messages=messages, ratio=ratio, max_cot_tokens=budget, decoding=dec, instruction=instruction)
    try:
        plan_ratio(query, state.fmt, state.length_model, state.calibration_for(model))
    except ValueError as e:
        raise APIError(400, str(e), "compression_ratio" if "compression_ratio" in str(e) else None) from None
    job = Job("chat", model, query=query, decoding=dec, include_usage=_stream_options(body))
    return job, bool(body.get("stream")), bool(body.get("return_prompt"))


def parse_completion(body, state: ServerState) -> Job:
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
    _refuse_unhonoured(body)
    dec = _decoding(body, _int(body, "max_tokens", 16), state, _completion_logprobs(body))
    return Job("raw", model, prompt=prompt, decoding=dec)


# ------------------------------------------------------------------------------------------- responses

def token_entry(tokenizer, token_id: int, logprob: float) -> dict:
    """One token of OpenAI's chat ``logprobs.content``: its text, log-probability and UTF-8 bytes."""
    text = tokenizer.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokenizer, logprobs) -> dict | None:
    """OpenAI's chat ``logprobs`` object (``{"content": [token entry + top_logprobs]}``) of
    :class:`~tokenskip.engines.TokenLogprob`\\ s, or ``None`` when none were asked."""
    if logprobs is None:
        return None
    return {"content": [{**token_entry(tokenizer, t.token_id, t.logprob),
                         "top_logprobs": [token_entry(tokenizer, k, v) for k, v in t.top]} for t in logprobs]}


def completion_logprobs(tokenizer, logprobs) -> dict | None:
    """The legacy completions ``logprobs`` object (``tokens``, ``token_logprobs``, ``top_logprobs``,
    ``text_offset`` in characters of the returned text), or ``None`` when none were asked."""
    if logprobs is None:
        return None
    tokens = [tokenizer.decode([t.token_id]) for t in logprobs]
    offsets = [sum(map(len, tokens[:i])) for i in range(len(tokens))]
    return {"tokens": tokens, "token_logprobs": [t.logprob for t in logprobs],
            "top_logprobs": [{tokenizer.decode([k]): v for k, v in t.top} for t in logprobs], "text_offset": offsets}


def chat_response(job: Job, a, state: ServerState, return_prompt: bool) -> dict:
    """The ``chat.completion`` body of answer ``a`` (:class:`tokenskip.generation.inference.Answer`)."""
    prompt_tokens = state.count_tokens(a.prompt)
    msg = {"role": "assistant", "content": a.text, "final_answer": a.final_answer, "compression_ratio": a.ratio}
    if a.lora_scale is not None:   # a calibrated adapter: the LoRA scale γ was decoded at, under this marker
        msg["lora_scale"], msg["marker_ratio"] = a.lora_scale, a.marker_ratio
    if a.max_cot_tokens is not None:
        msg["max_cot_tokens"] = a.max_cot_tokens
    if return_prompt:
        msg["prompt"] = a.prompt
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": job.model, "choices": [{"index": 0, "message": msg, "finish_reason": a.finish_reason,
                                             "logprobs": chat_logprobs(state.tokenizer, a.logprobs)}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": a.output_tokens,
                      "total_tokens": prompt_tokens + a.output_tokens, "cot_tokens": a.cot_tokens}}


def completion_response(job: Job, g, state: ServerState) -> dict:
    """The ``text_completion`` body of generation ``g`` (:class:`tokenskip.engines.Generation`), cut at the
    request's stop strings (where the engine did not stop at them)."""
    text, finish, n = g.text, g.finish_reason, g.num_tokens
    cut = cut_at_stop(text, job.decoding.stop)
    if cut is not None:
        text, finish, n = cut, "stop", min(n, state.count_tokens(cut))
    prompt_tokens = state.count_tokens(job.prompt)
    lps = completion_logprobs(state.tokenizer, g.logprobs[:n] if g.logprobs is not None else None)
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": job.model, "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": lps}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}}
