"""Streamed chat answers of ``tokenskip serve``: server-sent ``chat.completion.chunk`` events.

The engine thread pushes each decoding step's token ids (:class:`TokenStream`); the event loop decodes what
it has, sends the part no stop string can still cut (:func:`stream_safe`), and once the answer is done sends
the rest in token-sized pieces (:func:`text_pieces`), a closing chunk with ``finish_reason``, the γ used and
``usage``, then ``[DONE]``. Joined, the chunks equal the non-streamed text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from typing import TYPE_CHECKING

from tokenskip.serving.protocol import APIError, Job, chat_response

if TYPE_CHECKING:
    from tokenskip.serving.worker import ServerState

logger = logging.getLogger(__name__)


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


class TokenStream:
    """The request side of one streamed answer: the engine thread pushes token ids, the event loop reads them."""

    def __init__(self, job: Job, state: ServerState):
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
        try:
            done, _ = await asyncio.wait({get, self.future}, return_when=asyncio.FIRST_COMPLETED)
        finally:   # also when the client left and this wait was cancelled
            if not get.done():
                get.cancel()
        return get.result() if get in done else None

    def text(self) -> str:
        return stream_safe(self.state.tokenizer.decode(self.ids, skip_special_tokens=True), self.stops)


def _sse_chunk_writer(job: Job):
    """``chunk(delta, finish=None, **extra)``: one ``chat.completion.chunk`` event of this request's stream."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": job.model}

    def chunk(delta: dict, finish=None, **extra) -> str:
        return "data: " + json.dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                                           "logprobs": None}], **extra}) + "\n\n"
    return chunk


def _sse_tail(job: Job, a, state: ServerState, return_prompt: bool, sent: str, chunk):
    """The rest of the text (after ``sent``) in token-sized pieces, the closing chunk and ``[DONE]``."""
    full = chat_response(job, a, state, return_prompt)
    if not a.text.startswith(sent):  # stream_safe holds back what could change; this would be a tokenizer quirk
        logger.warning("streamed text is not a prefix of the answer; sending the rest after the common part")
    common = len(os.path.commonprefix([a.text, sent]))
    rest = a.text[common:]
    for piece in text_pieces(state.tokenizer, rest):
        yield chunk({"content": piece})
    last = {k: v for k, v in full["choices"][0]["message"].items() if k not in ("role", "content")}
    yield chunk(last, a.finish_reason)
    if job.include_usage:   # OpenAI's stream shape: the usage in a last chunk whose choices are empty
        yield "data: " + json.dumps({**json.loads(chunk({})[6:]), "choices": [], "usage": full["usage"]}) + "\n\n"
    yield "data: [DONE]\n\n"


async def sse_events(stream: TokenStream, first: list[int] | None, return_prompt: bool):
    """Server-sent events of a streamed chat answer: text deltas as tokens arrive, then :func:`_sse_tail`. A client
    that disconnects ends the generator (Starlette cancels it, or a send fails): its job is cancelled then."""
    try:
        async for event in _events(stream, first, return_prompt):
            yield event
    finally:
        stream.state.cancel(stream.job)   # no-op once the answer is complete


async def _events(stream: TokenStream, first: list[int] | None, return_prompt: bool):
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
