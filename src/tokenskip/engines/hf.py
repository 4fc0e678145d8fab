"""Hugging Face transformers backend: batched greedy ``generate`` with left padding."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Sequence

from tokenskip.engines import BackendStats, Capabilities, Generation, RequestOptions, cut_at_stop
from tokenskip.engines.hf_request import RowControls
from tokenskip.task.prompts import StopRule, stop_rule

logger = logging.getLogger(__name__)

LATENCY_MODES = ("amortized", "single")


def model_stop_rule(model, tokenizer, extra=()) -> StopRule:
    """Stop rule of a loaded model: its generation config's EOS id(s), the tokenizer's EOS, the chat
    template's end of turn and ``extra`` strings (:func:`tokenskip.task.prompts.stop_rule`)."""
    return stop_rule(tokenizer, model.generation_config.eos_token_id, extra)


def stop_token_ids(model, tokenizer) -> list[int]:
    """Stop ids of a loaded model (see :func:`model_stop_rule`)."""
    return list(model_stop_rule(model, tokenizer).token_ids)


class HFBackend:
    """Greedy decoding with transformers ``generate``.

    Prompts are sorted by length and decoded in batches of ``batch_size`` (left padding), which keeps
    padding small; results come back in input order.

    Args:
        model: model name/path/alias (see :func:`tokenskip.engines.models.load_model`), or ``None`` when
            ``hf_model`` and ``hf_tokenizer`` are given (tests pass tiny in-memory models).
        dtype, device: see :func:`tokenskip.engines.models.load_model`.
        batch_size: prompts per ``generate`` call.
        adapter: LoRA adapter folder (peft) applied at load time.
        merge_adapter: merge the adapter into the weights (faster; same greedy outputs).
        latency_mode: ``amortized`` (batch wall time ÷ batch size; what the paper reports) or
            ``single`` (each prompt decoded alone: true per-request latency, slower overall).
        show_progress: tqdm bar over batches (off by default: the calling stage draws the one bar of its step).
        force_adapter: load an adapter trained on another base model (see
            :func:`tokenskip.engines.models.check_adapter`).
        stop: extra stop strings (``--stop``); decoding always stops at the generation config's EOS,
            the tokenizer's EOS and the chat template's end of turn.
        max_loras: with the adapter unmerged, other adapter folders that ``generate(..., adapters=...)`` keeps
            loaded at once (:class:`tokenskip.engines.hf_adapters.PeftAdapters`, least recently used evicted).
    """

    name = "hf"

    def __init__(self, model: str | None = None, dtype: str = "auto", device: str = "cpu", batch_size: int = 8,
                 adapter: str | None = None, merge_adapter: bool = True, latency_mode: str = "amortized",
                 hf_model=None, hf_tokenizer=None, show_progress: bool = False, stop: Sequence[str] = (),
                 force_adapter: bool = False, max_loras: int = 4, **_ignored):
        if latency_mode not in LATENCY_MODES:
            raise ValueError(f"latency_mode must be one of {LATENCY_MODES}, got {latency_mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if hf_model is not None:
            self.model, self.tokenizer = hf_model, hf_tokenizer
            self.tokenizer.padding_side = "left"
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        else:
            from tokenskip.engines.models import load_model

            self.model, self.tokenizer = load_model(model, dtype=dtype, device=device, adapter=adapter,
                                                    merge_adapter=merge_adapter, force_adapter=force_adapter)
        self.adapter = adapter
        self.adapters = _peft_adapters(self.model, adapter, max_loras)
        self.batch_size = 1 if latency_mode == "single" else batch_size
        self.latency_mode = latency_mode
        self.show_progress = show_progress
        self.stop = model_stop_rule(self.model, self.tokenizer, stop)
        self.stop_ids = list(self.stop.token_ids)
        from tokenskip.engines.decoding import decoding_from_generation_config

        # read once from the model's generation config; the vLLM backend applies the same settings
        self.decoding = decoding_from_generation_config(getattr(self.model, "generation_config", None))
        self.stats = BackendStats()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def capabilities(self) -> Capabilities:
        """One engine per adapter (loaded at construction), token streaming, sampling, every request option,
        cancellation; one caller at a time; adapters per prompt when its adapter is unmerged (a peft model)."""
        dtype = str(getattr(self.model, "dtype", "float32")).replace("torch.", "")
        return Capabilities(adapters_per_request=False, streaming=True, sampling=True, concurrent=False,
                            chunk_size=max(1, self.batch_size * 4), dtype=dtype,
                            options=frozenset(RequestOptions().__dataclass_fields__), cancel=True,
                            adapters_per_prompt=self.adapters is not None)

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter != self.adapter:
            raise ValueError(f"this HF backend was loaded with adapter {self.adapter!r}, not {adapter!r}; "
                             "load a new backend for another adapter")

    def generate(self, prompts: Sequence[str], max_new_tokens: int | Sequence[int],
                 adapter: str | None = None, temperature: float = 0.0, top_p: float = 1.0,
                 on_tokens: Callable[[int, list[int]], None] | None = None,
                 options: Sequence[RequestOptions] | None = None,
                 cancelled: Callable[[int], bool] | None = None,
                 adapters: Sequence[str | None] | None = None) -> list[Generation]:
        """Completions of ``prompts`` (see :class:`~tokenskip.engines.GenerationBackend`).

        ``temperature`` 0 (default) is greedy decoding; above 0 samples with that temperature and nucleus
        ``top_p`` (the served API's sampling settings; evaluation always decodes greedily).
        ``on_tokens(i, ids)``, when given, is called from this thread at every decoding step with the new token
        ids of prompt ``i`` (the server streams them): stop ids and tokens past the prompt's cap are not passed,
        so the ids passed for ``i`` are a prefix of its ``token_ids`` before stop strings are cut. An exception
        in the callback is logged and the callback is dropped for that prompt; decoding goes on.
        ``options[i]`` (:class:`~tokenskip.engines.RequestOptions`, all fields honoured) and ``cancelled(i)``
        (checked after every step; a cancelled prompt's row ends there, finish reason ``cancelled``) act per
        prompt (:class:`tokenskip.engines.hf_request.RowControls`). A sampled prompt with a ``seed`` is decoded in
        a batch of its own, from torch's generator seeded with it, so its text does not depend on its neighbours.
        ``adapters[i]``: the LoRA adapter folder prompt ``i`` decodes with (``None``: the base model), rows of
        different adapters in one batch (peft's ``adapter_names``; needs ``capabilities.adapters_per_prompt``).

        Raises:
            ValueError: caps, options or adapters that do not match the prompts in number, another adapter given as
                ``adapter``, or ``adapters`` on a model without an unmerged peft adapter.
        """
        self._check_adapter(adapter)
        n = len(prompts)
        caps = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(c) for c in max_new_tokens]
        if len(caps) != n:
            raise ValueError(f"{len(caps)} max_new_tokens values for {n} prompts")
        options = list(options) if options is not None else [RequestOptions()] * n
        if len(options) != n:
            raise ValueError(f"{len(options)} options for {n} prompts")
        names = self._adapter_names(adapters, n)
        enc_lens = [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        order = sorted(range(n), key=lambda i: (enc_lens[i], i))
        seeded = {i for i in order if temperature and temperature > 0 and options[i].seed is not None}
        rest = [i for i in order if i not in seeded]
        batches = [[i] for i in sorted(seeded)] + [rest[i:i + self.batch_size] for i in range(0, len(rest),
                                                                                          self.batch_size)]
        out: list[Generation | None] = [None] * n
        bar = None
        if self.show_progress and len(batches) > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="generate", unit="sample", leave=False)
        for idx in batches:
            self._decode_batch(prompts, idx, caps, out, (temperature, top_p), on_tokens, options, cancelled, names)
            if bar:
                bar.update(len(idx))
        if bar:
            bar.close()
        return out  # type: ignore[return-value]

    def _adapter_names(self, adapters: Sequence[str | None] | None, n: int) -> list[str] | None:
        """peft's adapter name of each prompt's folder (loaded when needed); ``None`` without ``adapters``."""
        if adapters is None:
            return None
        if self.adapters is None:
            raise ValueError("adapters per prompt need the HF backend's adapter loaded unmerged (merge_adapter=False)")
        if len(adapters) != n:
            raise ValueError(f"{len(adapters)} adapters for {n} prompts")
        return self.adapters.names(list(adapters))

    def _generate_kwargs(self, sampling: tuple[float, float], controls: RowControls) -> dict:
        """``generate`` keyword arguments for the sampling settings and the rows' controls."""
        temperature, top_p = sampling
        sample = bool(temperature and temperature > 0)
        kw = dict(do_sample=sample, temperature=None, top_p=None, top_k=None)
        if sample and not controls.needed():
            kw.update(temperature=float(temperature), top_p=float(top_p))
        elif controls.needed():   # the warpers come after our processor (penalties before temperature)
            if sample:
                kw.update(temperature=1.0, top_p=1.0)
            kw.update(logits_processor=controls.processors(temperature, top_p), stopping_criteria=controls.criteria())
        if self.stop.strings:
            kw.update(stop_strings=list(self.stop.strings), tokenizer=self.tokenizer)
        return kw

    def _decode_batch(self, prompts: Sequence[str], idx: list[int], caps: list[int], out: list,
                      sampling: tuple[float, float], on_tokens, options: list[RequestOptions], cancelled,
                      names: list[str] | None = None) -> None:
        """Decode the prompts ``idx`` as one padded batch to the largest of their caps and write each one's
        :class:`Generation` into ``out`` (cut at its own cap, its stop token and stop strings); ``names``: each
        prompt's peft adapter name (rows of different adapters in the batch)."""
        import torch

        cap = max(caps[i] for i in idx)
        if cap <= 0:
            for i in idx:
                out[i] = Generation("", 0, 0.0, "length", [])
            return
        device = next(self.model.parameters()).device
        enc = self.tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                             add_special_tokens=False).to(device)
        t0 = time.perf_counter()
        controls = RowControls([options[i] for i in idx], idx, enc["input_ids"].shape[1], self.tokenizer, cancelled,
                               caps=[caps[i] for i in idx])
        streamer = (_RowStreamer([caps[i] for i in idx], list(idx), self.stop_ids, on_tokens, controls)
                    if on_tokens is not None else None)
        seed = options[idx[0]].seed if len(idx) == 1 and sampling[0] and sampling[0] > 0 else None
        rows = {"adapter_names": [names[i] for i in idx]} if names is not None else {}
        with torch.inference_mode(), torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            seqs = self.model.generate(**enc, max_new_tokens=cap, num_beams=1, eos_token_id=self.stop_ids,
                                       pad_token_id=self.tokenizer.pad_token_id,
                                       **self._generate_kwargs(sampling, controls),
                                       **self.decoding.hf_kwargs(), **({"streamer": streamer} if streamer else {}),
                                       **rows)
        dt = time.perf_counter() - t0
        for r, (row, i) in enumerate(zip(seqs[:, enc["input_ids"].shape[1]:].tolist(), idx)):
            if controls.ended[r] is not None:   # the rest of the row is padding
                row = row[:controls.ended[r]]
            g = self._finish(row, caps[i], dt / len(idx), options[i].stop)
            if r in controls.cancelled_rows:
                g.finish_reason = "cancelled"
            if controls.logprobs[r] is not None:
                g.logprobs = controls.logprobs[r][:g.num_tokens]
            out[i] = g
            self.stats.tokens += g.num_tokens
        self.stats.seconds += dt

    def _finish(self, row: list[int], cap: int, latency: float, stop: Sequence[str] = ()) -> Generation:
        """One decoded row -> :class:`Generation`: up to the first stop id, at most ``cap`` tokens (greedy
        decoding is causal: cutting a longer run at this prompt's cap equals running to the cap), cut before
        the first stop string (the engine's and the request's ``stop``)."""
        ids, finish = [], "length"
        for t in row:
            if t in self.stop_ids:
                finish = "stop"
                break
            ids.append(t)
        if len(ids) > cap:
            ids, finish = ids[:cap], "length"
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, ids, hit = cut_at_stop(text, ids, [*self.stop.strings, *stop], self.tokenizer)
        return Generation(text, len(ids), latency, "stop" if hit else finish, ids)

    def close(self) -> None:
        self.model = None


def _peft_adapters(model, adapter: str | None, max_loras: int):
    """Per-prompt adapters of ``model`` when it is a peft model (its adapter unmerged), else ``None``."""
    peft = sys.modules.get("peft")   # not imported: the model cannot be a peft model (and the import costs seconds)
    if peft is None or not isinstance(model, peft.PeftModel):
        return None
    from tokenskip.engines.hf_adapters import PeftAdapters

    return PeftAdapters(model, adapter, max_loras)


class _RowStreamer:
    """A transformers streamer (``put``/``end``) that hands each row's new token to ``on_tokens(index, [id])``.

    ``generate`` first puts the prompt ids (2-D), then one 1-D tensor of new ids per decoding step; rows that
    ended (stop id) or reached their own cap get nothing more.
    """

    def __init__(self, caps: list[int], index: list[int], stop_ids: list[int], on_tokens, controls=None):
        self.caps, self.index, self.stop, self.on_tokens = caps, index, set(stop_ids), on_tokens
        self.controls = controls   # rows it ended (a stop string, a cancel) get only padding after
        self.count = [0] * len(caps)
        self.done = [c <= 0 for c in caps]

    def put(self, value) -> None:
        if value.dim() != 1:   # the prompt
            return
        for r, t in enumerate(value.tolist()):
            if self.done[r] or (self.controls is not None and self.controls.done(r)):
                continue
            if t in self.stop:
                self.done[r] = True
                continue
            self.count[r] += 1
            self.done[r] = self.count[r] >= self.caps[r]
            try:
                self.on_tokens(self.index[r], [t])
            except Exception:  # noqa: BLE001 - a broken consumer must not stop the batch
                logger.exception("on_tokens callback failed for prompt %d; not called again", self.index[r])
                self.done[r] = True

    def end(self) -> None:
        pass
