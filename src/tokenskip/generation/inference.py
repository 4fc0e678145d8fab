"""Inference core: (messages or question, γ or token budget, decoding settings) -> a typed :class:`Answer`.

``tokenskip evaluate`` (methods ``tokenskip`` and ``budget``) and ``tokenskip serve`` both build their
prompts and parse their answers here, so a served answer and an evaluated row of the same question and γ
come from the same prompt string.

Prompt: the chat template of the request's messages, where the **last user turn** becomes
``instruction + "\\n" + content + γ marker`` (the SFT format, :class:`tokenskip.task.prompt_format.PromptFormat`),
and the format's system turn is added when the request has none. A plain ``question`` is the one-turn
case, identical to ``tokenskip.task.prompts.build_prompt``.

γ: given (``ratio``), or chosen from a token budget N (``max_cot_tokens``) with a
:class:`tokenskip.generation.length_model.LengthModel`; with a budget, decoding is capped at N and a CoT still running
at N
gets the answer line forced (``FORCE_ANSWER``, at most ``answer_max_tokens`` more tokens), as in the
truncation baseline (paper §5). A think model's CoT cut inside its ``<think>`` block gets the block closed
first (``\n</think>`` + the answer line: "budget forcing"), so it never thinks more than N tokens and always
ends with an answer after ``</think>``; with a think format a budget needs no length model (γ 1, the cap alone).
Prior assistant turns lose their think blocks before the chat template sees them.

A calibrated adapter (:class:`CalibratedGamma`, built by the server from the adapter's ``gamma_calibration.json``):
γ is decoded under the calibration's marker with the adapter's LoRA delta scaled for γ (each query its own scale, one
engine call: ``adapters`` per prompt), an explicit γ outside the calibrated range is refused, and a budget's γ is
clipped to it.

Engines: any :class:`tokenskip.engines.GenerationBackend` (``hf``, ``vllm``, ``openai``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from tokenskip.contract.ratios import GammaControl
from tokenskip.engines import Generation, RequestOptions, tokens_within
from tokenskip.task.grading import extract_answer, split_output
from tokenskip.task.prompt_format import PromptFormat
from tokenskip.task.prompts import FORCE_ANSWER, ratio_marker, validate_ratio
from tokenskip.task.think import THINK_CLOSE, THINK_FORCE_CLOSE, block_state, drop_thinking, unanswered

#: Tokens allowed for a forced answer (evaluate's ``--answer-max-tokens`` default).
ANSWER_MAX_TOKENS = 24


@dataclass
class Decoding:
    """Decoding settings of one request.

    Attributes:
        max_tokens: cap on generated tokens (answer included).
        temperature: 0 = greedy (the paper's evaluation); > 0 samples (HF and OpenAI engines).
        top_p: nucleus sampling mass (used when ``temperature`` > 0).
        stop: strings that end the answer: decoding stops there on engines that honour them
            (:class:`~tokenskip.engines.Capabilities` ``options``), else the answer is cut after decoding; either way
            the finish reason becomes ``stop`` and only the tokens before the string are counted.
        logprobs, presence_penalty, frequency_penalty, seed: see :class:`tokenskip.engines.RequestOptions`.
    """

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None

    def options(self) -> RequestOptions:
        """The engine's per-request options of these settings."""
        return RequestOptions(stop=tuple(self.stop), logprobs=self.logprobs, presence_penalty=self.presence_penalty,
                              frequency_penalty=self.frequency_penalty, seed=self.seed)


@dataclass
class Query:
    """One request: ``messages`` (chat turns) or ``question``, and at most one of ``ratio`` / ``max_cot_tokens``."""

    messages: list[dict] | None = None
    question: str | None = None
    ratio: float | None = None
    max_cot_tokens: int | None = None
    decoding: Decoding = field(default_factory=Decoding)
    instruction: bool = True   # prepend the adapter's instruction line to the last user turn (its trained format)


@dataclass
class Answer:
    """A typed answer.

    Attributes:
        text: the whole generated text (CoT + answer line).
        cot: the CoT part (text before "The final answer is", or the think block's content;
            :func:`tokenskip.task.grading.split_output`).
        final_answer: extracted answer (last ``\\boxed{}`` or "answer is" phrase), ``None`` when absent.
        cot_tokens: tokens of ``cot`` in the model's tokenizer, at most ``output_tokens`` (the CoT is a prefix of
            the output; re-tokenizing its text can count one more token at the cut) and, for a think block, at most
            the tokens generated before ``</think>`` (so a budget N gives at most N).
        output_tokens: generated tokens (stop token excluded; forced answer tokens included).
        finish_reason: ``stop`` (end of turn or a stop string) or ``length`` (hit ``max_tokens``).
        latency_s: seconds of engine time for this answer (amortised over its batch).
        ratio: the γ used (1.0 when none was asked); budget: the γ chosen from the budget.
        prompt: the exact prompt string sent to the engine.
        max_cot_tokens: the budget, if any.
        token_ids: generated token ids (as reported by the engine).
        think_closed: think outputs only: whether the block was closed (``None``: a plain output).
        logprobs: one :class:`~tokenskip.engines.TokenLogprob` per returned token when asked (``None`` otherwise).
        lora_scale / marker_ratio: a calibrated adapter only (:class:`CalibratedGamma`): the LoRA scale ``ratio`` was
            decoded with and the γ of the prompt's marker (``None``: no marker, at scale 0); ``None`` otherwise.
    """

    text: str
    cot: str
    final_answer: str | None
    cot_tokens: int
    output_tokens: int
    finish_reason: str
    latency_s: float
    ratio: float
    prompt: str
    max_cot_tokens: int | None = None
    token_ids: list[int] = field(default_factory=list)
    think_closed: bool | None = None
    logprobs: list | None = None
    lora_scale: float | None = None
    marker_ratio: float | None = None


@dataclass(frozen=True)
class CalibratedGamma:
    """γ reached by a calibrated LoRA scale (:mod:`tokenskip.finetune.calibration`), as queries apply it.

    Attributes:
        low, high: the γ range the calibration covers (``GammaCalibration.gamma_range``): an explicit γ outside it
            is refused (:func:`plan_ratio`), a budget's γ is clipped to it.
        control: γ -> :class:`~tokenskip.contract.ratios.GammaControl` (scale, marker, scaled adapter folder;
            ``GammaCalibration.control``, the mapping ``evaluate`` uses).
    """

    low: float
    high: float
    control: Callable[[float], GammaControl]


def question_of(messages: Sequence[dict]) -> str:
    """Content of the last user turn (what the γ marker and the length model apply to).

    Raises:
        ValueError: no messages, a turn without a string ``role``/``content``, or no user turn.
    """
    if not messages:
        raise ValueError("messages must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be an object with string 'role' and 'content'")
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        raise ValueError("messages has no user turn")
    return users[-1]["content"]


def render_prompt(tokenizer, fmt: PromptFormat, messages: Sequence[dict] | None = None,
                  question: str | None = None, ratio: float | None = None, instruction: bool = True) -> str:
    """The prompt string for ``messages`` (or one ``question``) at γ = ``ratio`` (module docstring).

    ``instruction=False`` leaves the client's last user turn as sent (a harness with its own few-shot format):
    only the γ marker (when ``ratio`` is given) and the adapter's system turn are added.

    Raises:
        ValueError: both/neither of messages and question, bad messages, γ outside (0, 1], or a tokenizer
            without a chat template.
    """
    if (messages is None) == (question is None):
        raise ValueError("give exactly one of messages or question")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template")
    if question is not None:
        msgs = fmt.messages(question, ratio)
    else:
        question_of(messages)
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        msgs = [{"role": m["role"], "content": drop_thinking(m["content"]) if m["role"] == "assistant"
                 else m["content"]} for m in messages]
        content = msgs[last_user]["content"]
        if instruction:
            content = f"{fmt.instruction}\n{content}"
        if ratio is not None:
            content += ratio_marker(ratio, fmt.marker_delimiter)
        msgs[last_user]["content"] = content
        if fmt.system_prompt and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": fmt.system_prompt})
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def plan_ratio(query: Query, fmt: PromptFormat, length_model=None, calibrated: CalibratedGamma | None = None) -> float:
    """The γ of a query: its ``ratio``, or the budget's γ from ``length_model``, or 1.0 (also for a budget without
    a length model when ``fmt.cot_format`` is ``think``: the budget is then enforced by closing the block alone).

    The adapter's range is its trained γ (``fmt.ratios``), or with ``calibrated`` the calibrated range
    (``[low, high]``; a budget's γ, rounded to 2 decimals, is clipped to ``[low rounded up, high]``).

    Raises:
        ValueError: both γ and a budget, γ outside (0, 1] or outside the adapter's range (below the smallest γ of
            ``fmt.ratios``, or outside the calibrated range: a request is refused, not clipped, so the γ asked for is
            the γ decoded), a budget < 1, or a budget without a length model.
    """
    if query.ratio is not None and query.max_cot_tokens is not None:
        raise ValueError("give compression_ratio or max_cot_tokens, not both")
    if query.max_cot_tokens is not None:
        if isinstance(query.max_cot_tokens, bool) or not isinstance(query.max_cot_tokens, int) \
                or query.max_cot_tokens < 1:
            raise ValueError(f"max_cot_tokens must be an integer >= 1, got {query.max_cot_tokens!r}")
        if length_model is None and fmt.cot_format == "think":
            return 1.0
        if length_model is None:
            raise ValueError("max_cot_tokens needs a length model (serve/evaluate --length-model)")
        q = query.question if query.question is not None else question_of(query.messages or [])
        if calibrated is not None:   # 2 decimals (ratio_for's rounding) that stay inside the range
            return length_model.ratio_for(q, query.max_cot_tokens, min(math.ceil(round(calibrated.low * 100, 6)) / 100,
                                                                        calibrated.high), calibrated.high)
        return length_model.ratio_for(q, query.max_cot_tokens, fmt.min_ratio, max(fmt.ratios))
    if query.ratio is None:
        return 1.0
    ratio = validate_ratio(query.ratio)
    if calibrated is not None and not calibrated.low <= ratio <= calibrated.high:
        raise ValueError(f"compression_ratio {query.ratio!r} is outside the adapter's calibrated range "
                         f"[{calibrated.low:.4g}, {calibrated.high:.4g}] (its gamma_calibration.json)")
    if calibrated is None and ratio < fmt.min_ratio:   # e.g. 1e-7: below every γ learned (its marker would read "0.0")
        raise ValueError(f"compression_ratio {query.ratio!r} is below the adapter's trained range "
                         f"[{fmt.min_ratio}, 1.0] (its prompt_format.json ratios)")
    return ratio


def generate_capped(engine, prompts: Sequence[str], caps: Sequence[int], cot_caps: Sequence[int | None],
                    answer_max_tokens: int = ANSWER_MAX_TOKENS, on_tokens=None, limit_total: bool = False,
                    options: Sequence[RequestOptions] | None = None, cancelled=None,
                    adapters: Sequence[str | None] | None = None, **sampling) -> list[Generation]:
    """Generations of ``prompts``; where ``cot_caps[i]`` is set, decode at most that many tokens and, if the
    turn did not end, force the answer line (:data:`FORCE_ANSWER` + at most ``answer_max_tokens`` tokens),
    after closing the think block first when the cut fell inside one (:func:`forced_opener`). A think turn that
    ended with no answer after its block (:func:`tokenskip.task.think.unanswered`: the model closed the block and
    stopped at once, or stopped inside it) gets the answer line forced too, so a budgeted think turn always ends
    with an answer after ``</think>``.

    ``caps`` bound the rest. A forced answer adds its tokens to ``num_tokens`` and its time to ``latency_s``;
    ``token_ids`` keep the first pass's ids only (greedy: the prefix of the uncapped run). Extra keyword arguments
    (``temperature``, ``top_p``) go to the engine only when sampling (greedy engines such as vLLM's need none).
    ``on_tokens(i, ids)`` is handed to the first pass of an engine that streams (``engine.capabilities.streaming``);
    others ignore it. ``options`` (per prompt) and ``cancelled(i)`` go to an engine that declares them
    (``capabilities.options`` / ``cancel``); a cancelled first pass gets no forced answer. ``adapters`` (one LoRA
    adapter folder per prompt, ``None``: the base model) go to both passes (:func:`engine_extras`).

    ``limit_total`` (the server: ``caps`` are the requests' ``max_tokens``): ``caps[i]`` bounds the whole reply,
    forced answer line included (its prefix counted in ``num_tokens``); the answer is forced only where the CoT
    budget, not ``max_tokens``, ended the first pass, gets at most what ``max_tokens`` leaves, and stops after the
    boxed answer's closing brace. Without it (evaluate's budget and truncation methods) the caps are CoT caps and
    the answer line comes on top, as the paper's baselines run.
    """
    kw = dict(sampling) if sampling.get("temperature") else {}
    first_kw = dict(kw, **engine_extras(engine, on_tokens, options, cancelled, adapters))
    first_caps = [min(c, b) if b is not None else c for c, b in zip(caps, cot_caps)]
    first = engine.generate(list(prompts), first_caps, **first_kw)
    opener = {i: forced_opener(prompts[i], g.text) for i, g in enumerate(first)}
    prefix = {i: engine.count_tokens(o) if limit_total else 0 for i, o in opener.items()}
    # forced where the budget cut the CoT (served: the budget, not max_tokens), and where a think turn ended with
    # no answer after its block (closed and stopped at once, or stopped inside it) while room is left
    allow = {i: answer_max_tokens if not limit_total else min(answer_max_tokens, caps[i] - g.num_tokens - prefix[i])
             for i, g in enumerate(first) if cot_caps[i] is not None and g.finish_reason != "cancelled"
             and (g.finish_reason != "stop" and (not limit_total or cot_caps[i] < caps[i])
                  or unanswered(prompts[i], g.text))}
    need = [i for i, n in allow.items() if n > 0]
    if not need:
        return first
    if cancelled is not None and engine.capabilities.cancel:
        kw["cancelled"] = lambda k: cancelled(need[k])
    if adapters is not None:   # the forced answer line comes from the same weights as its CoT
        kw["adapters"] = [adapters[i] for i in need]
    forced = engine.generate([prompts[i] + first[i].text + opener[i] for i in need], [allow[i] for i in need], **kw)
    out = list(first)
    for i, f in zip(need, forced):
        g, answer, n = first[i], f.text, f.num_tokens
        if limit_total and "}" in answer:   # the reply ends with the boxed answer, not what the model adds after it
            end = answer.index("}") + 1
            answer = answer[:end + 1] if answer[end:end + 1] == "$" else answer[:end]
            n = min(n, engine.count_tokens(answer))
        text = g.text + opener[i] + answer + ("" if "}" in answer else "}")
        # token_ids stay the CoT's own (decoded) ids: the forced line was not generated after them
        out[i] = Generation(text, g.num_tokens + prefix[i] + n, g.latency_s + f.latency_s, g.finish_reason,
                            list(g.token_ids))
    return out


def forced_opener(prompt: str, text: str) -> str:
    """What is written after a CoT cut by its budget: :data:`FORCE_ANSWER`, preceded by ``\\n</think>`` when the
    cut fell inside a think block (opened by the generation prompt or by the model:
    :func:`tokenskip.task.think.block_state`), so a think model's thinking ends at the budget and its answer
    follows the block (budget forcing)."""
    return (THINK_FORCE_CLOSE if block_state(prompt, text) == "open" else "") + FORCE_ANSWER


def engine_extras(engine, on_tokens, options, cancelled, adapters=None) -> dict:
    """The keyword arguments of a first pass that ``engine`` declares it takes: ``on_tokens`` (streaming),
    ``options`` (any field the engine honours is asked; fields it does not honour are the caller's to refuse or to
    apply after decoding), ``cancelled`` and ``adapters`` (one LoRA adapter folder per prompt).

    Raises:
        ValueError: ``adapters`` for an engine without ``capabilities.adapters_per_prompt`` (decoding them all with
            one adapter would be another model than the one asked for).
    """
    kw: dict = {}
    if on_tokens is None and options is None and cancelled is None and adapters is None:
        return kw
    caps = engine.capabilities
    if adapters is not None:
        if not caps.adapters_per_prompt:
            raise ValueError(f"the {engine.name} engine cannot decode with an adapter per prompt")
        kw["adapters"] = list(adapters)
    if on_tokens is not None and caps.streaming:
        kw["on_tokens"] = on_tokens
    if options is not None and any(o.asks() & caps.options for o in options):
        kw["options"] = list(options)
    if cancelled is not None and caps.cancel:
        kw["cancelled"] = cancelled
    return kw


class ForcedAnswerEngine:
    """An engine whose ``generate(prompts, caps)`` treats each cap as a CoT cap and forces the answer line
    after a cut CoT (see :func:`generate_capped`); evaluate's budget and truncation methods run their rows
    through it."""

    def __init__(self, inner, answer_max_tokens: int = ANSWER_MAX_TOKENS):
        self.inner, self.answer_max_tokens = inner, answer_max_tokens
        # vLLM's engines batch by themselves and have no batch_size (the budget method crashed on them)
        self.tokenizer, self.name = inner.tokenizer, inner.name
        self.batch_size = getattr(inner, "batch_size", None)
        self.count_tokens = inner.count_tokens
        self.capabilities = inner.capabilities

    def generate(self, prompts, max_new_tokens, adapter=None) -> list[Generation]:
        caps = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        return generate_capped(self.inner, prompts, caps, caps, self.answer_max_tokens)


def cut_at_stop(text: str, stop: Sequence[str]) -> str | None:
    """``text`` up to the first occurrence of any ``stop`` string, or ``None`` when none occurs."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[:min(cuts)] if cuts else None


def _tokens_before(engine, g: Generation, text: str) -> int:
    """Tokens of ``g`` that lie within ``text`` (a prefix of ``g.text``): counted on the generated ids when they
    decode to ``g.text`` (the longest prefix of ids whose text ends within ``text``), else re-counted from the
    text; never more than ``g.num_tokens``."""
    ids, tok = list(g.token_ids), engine.tokenizer
    if ids and tok is not None and tok.decode(ids, skip_special_tokens=True) == g.text:
        return tokens_within(ids, len(text), tok)
    return min(engine.count_tokens(text), g.num_tokens)


def _think_tokens(engine, g: Generation, text: str) -> int:
    """Tokens of ``g`` generated before the ``</think>`` of ``text``, counted on the generated ids where their text
    is a prefix of ``text`` (budget forcing keeps only the thinking pass's ids), else re-counted from the text."""
    ids, tok = list(g.token_ids), engine.tokenizer
    close = text.find(THINK_CLOSE)
    if ids and tok is not None and text.startswith(tok.decode(ids, skip_special_tokens=True)):
        return tokens_within(ids, close, tok)
    return engine.count_tokens(text[:close])


def answer(engine, queries: Sequence[Query], fmt: PromptFormat | None = None, length_model=None,
           answer_max_tokens: int = ANSWER_MAX_TOKENS, on_tokens=None, cancelled=None,
           calibrated: CalibratedGamma | None = None) -> list[Answer]:
    """Answer a batch of queries with one engine call (two with forced answers), in order.

    ``on_tokens(i, ids)``: called with query ``i``'s new token ids while decoding, when the engine streams
    (:func:`generate_capped`). ``cancelled(i)``: query ``i``'s client left (an engine that can stops decoding it).
    Each query's :meth:`Decoding.options` go to the engine; its stop strings are applied here as well, for engines
    that do not stop at them. ``calibrated``: the engine's adapter reaches γ by a calibrated LoRA scale; each query
    is decoded with its γ's scaled adapter and marker (:func:`route_queries`).

    All queries of a batch must share ``temperature`` and ``top_p`` (the server groups them so).

    Raises:
        ValueError: an invalid query (see :func:`render_prompt`, :func:`plan_ratio`) or mixed sampling settings.
    """
    fmt = fmt or PromptFormat()
    if not queries:
        return []
    samp = {(q.decoding.temperature, q.decoding.top_p) for q in queries}
    if len(samp) > 1:
        raise ValueError("one batch must share temperature and top_p")
    ratios, controls, prompts = route_queries(engine.tokenizer, queries, fmt, length_model, calibrated)
    temperature, top_p = next(iter(samp))
    t0 = time.perf_counter()
    gens = generate_capped(engine, prompts, [q.decoding.max_tokens for q in queries],
                           [q.max_cot_tokens for q in queries], answer_max_tokens, on_tokens=on_tokens,
                           limit_total=True, options=[q.decoding.options() for q in queries], cancelled=cancelled,
                           adapters=None if calibrated is None else [c.adapter for c in controls],
                           temperature=temperature, top_p=top_p)
    wall = time.perf_counter() - t0
    out = []
    for q, r, c, p, g in zip(queries, ratios, controls, prompts, gens):
        text, finish, n = g.text, g.finish_reason, g.num_tokens
        cut = cut_at_stop(text, q.decoding.stop)
        if cut is not None:   # a request's stop string: the reply and its token count end where it begins
            text, finish, n = cut, "stop", _tokens_before(engine, g, cut)
        parts = split_output(text, fmt.cot_format)
        final = extract_answer(parts.answer, "math") if parts.think_closed is not False else None
        cot_n = min(engine.count_tokens(parts.cot), n)
        if parts.think_closed:   # the stripped block re-tokenized can count more than were generated in it
            cot_n = min(cot_n, _think_tokens(engine, g, text))
        out.append(Answer(text=text, cot=parts.cot, final_answer=final,
                          cot_tokens=cot_n, output_tokens=n,
                          finish_reason=finish,
                          latency_s=g.latency_s or wall / len(queries), ratio=r, prompt=p,
                          max_cot_tokens=q.max_cot_tokens, token_ids=list(g.token_ids),
                          think_closed=parts.think_closed,
                          logprobs=g.logprobs[:n] if g.logprobs is not None else None,
                          lora_scale=c.scale if c else None, marker_ratio=c.marker_ratio if c else None))
    return out


def route_queries(tokenizer, queries: Sequence[Query], fmt: PromptFormat, length_model=None,
                  calibrated: CalibratedGamma | None = None) -> tuple[list[float], list, list[str]]:
    """``(γ, control, prompt)`` of each query: its γ (:func:`plan_ratio`); with ``calibrated`` its
    :class:`~tokenskip.contract.ratios.GammaControl` (else ``None``); and its prompt, with the marker of γ, or of the
    control's marker γ (none at scale 0).

    Raises:
        ValueError: see :func:`plan_ratio` and :func:`render_prompt`.
    """
    ratios = [plan_ratio(q, fmt, length_model, calibrated) for q in queries]
    controls = [None if calibrated is None else calibrated.control(r) for r in ratios]
    prompts = [render_prompt(tokenizer, fmt, q.messages, q.question, r if c is None else c.marker_ratio,
                             q.instruction) for q, r, c in zip(queries, ratios, controls)]
    return ratios, controls, prompts
