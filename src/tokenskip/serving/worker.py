"""The engine side of ``tokenskip serve``: :class:`ServerState` loads the engine in a background thread (through
:func:`tokenskip.engines.get_backend`, like every stage) and runs the batching worker.

Requests (:class:`~tokenskip.serving.protocol.Job`) go through a bounded queue. For an engine that batches by
itself (capabilities ``concurrent``: vLLM's asynchronous engine, continuous batching; the ``--upstream`` proxy's
endpoint) the worker hands each request over at once, alone, from a thread pool: it joins the engine's running batch at
the next step and is answered as soon as *it* is done (grouping requests here only made the early finishers of a
group wait for its longest one, and ``batch_wait_ms`` delayed every request). Any other engine (HF: dynamic batching)
gets up to ``max_batch_size`` requests (waiting at most ``batch_wait_ms`` for more once one arrived), grouped by model
and sampling settings, each group decoded in one engine call, one after the other in the worker thread.

A calibrated adapter (``gamma_calibration.json`` in the adapter folder, read once at start-up:
:func:`served_calibration`) is served unmerged: each request to the adapter's model is decoded at its γ's LoRA scale
under the calibration's marker (the engine applies one adapter folder per prompt; :func:`calibration_refusal` says
which settings cannot).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import functools
import logging
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tokenskip.contract.layout import GAMMA_CALIBRATION, LENGTH_MODEL
from tokenskip.engines import PROXY_BACKEND, engine_spec, get_backend
from tokenskip.engines.hardware import resolve_threads
from tokenskip.engines.models import configure_threads
from tokenskip.finetune.calibration import GammaCalibration
from tokenskip.generation.inference import CalibratedGamma, answer, engine_extras
from tokenskip.generation.length_model import load_length_model
from tokenskip.serving.protocol import APIError, Job
from tokenskip.task.prompt_format import resolve_prompt_format

if TYPE_CHECKING:  # annotations only: the app module imports this one
    from tokenskip.serving.app import ServeConfig

logger = logging.getLogger(__name__)

#: γ -> control results kept per server (a request's γ is a float; budget mode's have 2 decimals)
CONTROL_CACHE = 256


def served_calibration(adapter: str | None) -> CalibratedGamma | None:
    """The γ calibration of ``adapter`` as the server applies it — its range and γ -> (scale, marker, scaled folder)
    (:meth:`GammaCalibration.control`, the mapping ``evaluate`` uses; each γ's result cached) — or ``None`` when the
    folder has none. Read once: a new calibration is served after a restart.

    Raises:
        DataError: a malformed ``gamma_calibration.json`` (names the file and field).
    """
    cal = GammaCalibration.load(adapter) if adapter else None
    if cal is None:
        return None
    low, high = cal.gamma_range()
    return CalibratedGamma(low, high, functools.lru_cache(maxsize=CONTROL_CACHE)(functools.partial(cal.control,
                                                                                                  adapter)))


def calibration_refusal(cfg: ServeConfig) -> str | None:
    """Why ``cfg`` cannot serve its adapter's γ calibration (the adapter merged, or proxied upstream), or ``None``.
    Serving it anyway would decode every γ with the unscaled adapter: not the model the calibration describes."""
    if not cfg.adapter or not (Path(cfg.adapter) / GAMMA_CALIBRATION).is_file():
        return None
    how = "--merge-adapter" if cfg.merge_adapter else "--upstream" if cfg.upstream else None
    if how is None:
        return None
    return (f"serve: adapter {cfg.adapter} has a γ calibration ({GAMMA_CALIBRATION}): each γ decodes with its own "
            f"LoRA scale, which {how} cannot apply; serve it with --backend hf or vllm, without {how} (or remove "
            f"the calibration file to serve the adapter as trained, each γ under its own marker)")


def adapter_switch(engine):
    """``disable_adapter`` of the engine's model when it runs its adapter unmerged (a peft model): the base
    model is then served too, under that context. ``None`` when the adapter is merged into the weights or
    applied by the engine itself."""
    return getattr(getattr(engine, "model", None), "disable_adapter", None)


class ServerState:
    """What the app serves: the engine (loaded in a background thread), names, format, length model, queue."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.status, self.error = "loading", None
        self.engine = self.fmt = self.length_model = None
        self.calibrated: CalibratedGamma | None = None   # the adapter's γ calibration, if any
        self.routes: dict = {}  # --upstream: one engine per upstream model (each sends its model's name)
        self.tokenizer = None  # the request side's own copy: the engine thread's tokenizer is not shared
        self.base_name = cfg.served_model_name or cfg.model
        self.adapter_name = (cfg.adapter_name or Path(cfg.adapter).name) if cfg.adapter else None
        self.models: list[str] = []
        self.sampling = True
        self.batches, self.max_batch_seen = 0, 0   # engine batches run, and the largest (shown on /health)
        self.cancelled = 0   # requests whose client left before their answer was complete (shown on /health)
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=cfg.max_queue)
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
        if self.engine.capabilities.concurrent:
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
        cfg = self.cfg
        configure_threads(cfg.threads)
        self.fmt = resolve_prompt_format(cfg.adapter, cfg.system_prompt, cfg.marker_delimiter).with_overrides(
            cot_format=cfg.cot_format, enable_thinking=cfg.enable_thinking)
        lm = cfg.length_model or (str(Path(cfg.adapter) / LENGTH_MODEL)
                                  if cfg.adapter and (Path(cfg.adapter) / LENGTH_MODEL).is_file() else None)
        self.length_model = load_length_model(lm) if lm else None
        refusal = calibration_refusal(cfg)
        if refusal:
            raise ValueError(refusal)
        self.calibrated = served_calibration(cfg.adapter)
        if cfg.upstream:
            self._connect_upstream()
        else:
            self._load_local()
        self.fmt = self.fmt.for_tokenizer(self.engine.tokenizer)   # think format and enable_thinking, once
        self.sampling = self.engine.capabilities.sampling
        if self.calibrated is not None and not self.engine.capabilities.adapters_per_prompt:
            raise ValueError(f"serve: adapter {cfg.adapter} has a γ calibration, but the {self.engine_name} engine as "
                             "started cannot decode with a LoRA scale per request (docs/serving.md)")
        if self.calibrated is not None:
            logger.info("γ calibration of %s: γ in [%.4g, %.4g] decoded at its own LoRA scale", cfg.adapter,
                        self.calibrated.low, self.calibrated.high)

    def calibration_for(self, model: str) -> CalibratedGamma | None:
        """The γ calibration that requests to ``model`` are decoded with: the adapter's, for the adapter's model."""
        return self.calibrated if model == self.adapter_name else None

    @property
    def engine_name(self) -> str:
        """The engine as the command line names it: ``--backend``, or ``upstream`` for the proxy."""
        return "upstream" if self.cfg.upstream else self.cfg.backend

    @property
    def max_batch(self) -> int:
        """Requests decoded together at most: ``max_batch_size``, or 1 with ``batch_invariant``."""
        return 1 if self.cfg.batch_invariant else self.cfg.max_batch_size

    def _load_local(self) -> None:
        """The engine of ``--backend`` with the weights (and the adapter) loaded here."""
        cfg = self.cfg
        kw = dict(model=cfg.model, dtype=cfg.dtype, device=cfg.device, batch_size=self.max_batch,
                  adapter=cfg.adapter, merge_adapter=cfg.merge_adapter, show_progress=False,
                  threads=resolve_threads(cfg.threads))
        # engine options given on the command line (the help names the engine that reads them)
        kw.update({k: v for k, v in (("enforce_eager", cfg.enforce_eager), ("max_model_len", cfg.max_model_len))
                   if v})
        if cfg.batch_invariant:   # the engine's own scheduler too (vLLM batches whatever is in flight)
            kw["max_num_seqs"] = 1
        if self.calibrated is not None:   # one adapter folder per LoRA scale in flight
            kw["max_loras"] = cfg.max_loras
        self.engine = get_backend(engine_spec(cfg.backend).served_as, **kw)
        if self.adapter_name and adapter_switch(self.engine) is None:  # adapter merged or always applied
            self.models = [self.adapter_name]
        else:
            self.models = [self.base_name] + ([self.adapter_name] if self.adapter_name else [])

    def _connect_upstream(self) -> None:
        """``--upstream``: the upstream's models, each served through an engine that sends its name."""
        cfg = self.cfg
        kw = dict(model=cfg.model, base_url=cfg.upstream, api_key_env=cfg.api_key_env,
                  max_in_flight=cfg.max_in_flight)
        self.engine = get_backend(PROXY_BACKEND, **kw, api_model="-")  # a name given: nothing asked yet
        self.models = self._upstream_models()
        self.routes = {m: get_backend(PROXY_BACKEND, **kw, api_model=m, tokenizer=self.engine.tokenizer)
                       for m in self.models}

    def _upstream_models(self) -> list[str]:
        while not self._stop.is_set():  # 503 until the upstream answers
            try:
                return [m.id for m in self.engine.client.models.list()]
            except Exception as e:  # noqa: BLE001 - any connection error: retry
                logger.warning("upstream %s not ready (%s); retrying in 2 s", self.cfg.upstream, e)
                self._stop.wait(2.0)
        raise RuntimeError("stopped before the upstream answered")

    # -- the worker
    def cancel(self, job: Job) -> None:
        """The client of ``job`` left before its answer was complete: stop working on it (counted once)."""
        if job.cancelled.is_set() or (job.future.done() and not job.future.cancelled()):
            return   # counted already, or answered
        job.cancel()
        self.cancelled += 1

    def submit(self, job: Job) -> concurrent.futures.Future:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise APIError(429, f"server busy: {self.cfg.max_queue} requests queued; retry later") from None
        return job.future

    def _next_batch(self) -> list[Job]:
        """Up to :attr:`max_batch` queued jobs, waiting ``batch_wait_ms`` for more once one arrived (not for an engine
        that batches by itself: it takes each job alone, so only what is already queued is taken); jobs whose client
        already left are dropped here (they never take a slot)."""
        try:
            first = self.jobs.get(timeout=0.2)
        except queue.Empty:
            return []
        wait_s = 0.0 if self._pool is not None else self.cfg.batch_wait_ms / 1000.0
        batch, deadline = [first], time.monotonic() + wait_s
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                batch.append(self.jobs.get(timeout=left) if left > 0 else self.jobs.get_nowait())
            except queue.Empty:
                break
        for j in batch:
            if j.cancelled.is_set():
                j.settle(error=APIError(499, "the client disconnected", code="client_closed_request"))
        return [j for j in batch if not j.cancelled.is_set()]

    def _work(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            if not batch:
                continue
            if self._pool is not None:   # an engine that batches by itself: each job alone, now
                self.batches += len(batch)
                self.max_batch_seen = max(self.max_batch_seen, 1)
                for j in batch:
                    self._pool.submit(self._run_group, [j])
                continue
            self.batches += 1
            self.max_batch_seen = max(self.max_batch_seen, len(batch))
            groups: dict[tuple, list[Job]] = {}
            for j in batch:
                groups.setdefault((j.kind, j.model, j.decoding.temperature, j.decoding.top_p), []).append(j)
            for jobs in groups.values():
                self._run_group(jobs)

    def _engine_for(self, model: str):
        """``(engine, context)`` for ``model``: upstream models have their own engine; the base model of an
        unmerged adapter runs with the adapter disabled."""
        eng = self.routes.get(model, self.engine)
        switch = adapter_switch(eng)
        if self.adapter_name and model == self.base_name and switch is not None:
            return eng, switch()
        return eng, contextlib.nullcontext()

    def _run_group(self, jobs: list[Job]) -> None:
        try:
            eng, ctx = self._engine_for(jobs[0].model)

            def cancelled(i: int) -> bool:
                return jobs[i].cancelled.is_set()

            with ctx:
                if jobs[0].kind == "chat":
                    streaming = [j.on_tokens for j in jobs]
                    hook = None
                    if any(streaming):
                        def hook(i, ids, streaming=streaming):
                            if streaming[i] is not None:
                                streaming[i](ids)
                    results = answer(eng, [j.query for j in jobs], self.fmt, self.length_model, on_tokens=hook,
                                     cancelled=cancelled, calibrated=self.calibration_for(jobs[0].model))
                else:
                    kw = ({"temperature": jobs[0].decoding.temperature, "top_p": jobs[0].decoding.top_p}
                          if jobs[0].decoding.temperature else {})
                    kw.update(engine_extras(eng, None, [j.decoding.options() for j in jobs], cancelled))
                    results = eng.generate([j.prompt for j in jobs], [j.decoding.max_tokens for j in jobs], **kw)
            for j, r in zip(jobs, results):
                j.settle(r)
        except Exception as e:  # noqa: BLE001 - reported to each request as a 500; the worker goes on
            logger.exception("engine failure on a batch of %d", len(jobs))
            for j in jobs:
                j.settle(error=e)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        while True:
            try:
                self.jobs.get_nowait().settle(error=APIError(503, "server shutting down"))
            except queue.Empty:
                break
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for engine in [*self.routes.values(), self.engine]:
            if engine is not None:
                engine.close()
