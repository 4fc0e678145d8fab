"""vLLM's platform side: environment defaults set before ``vllm`` is imported (CPU thread binding, KV
cache size, cache root), whether vLLM runs on its CPU build, and the merged-adapter folders served there.
See :mod:`tokenskip.engines.vllm` for the environment variables and why each default was chosen."""

from __future__ import annotations

import logging
import os
from typing import Sequence

logger = logging.getLogger(__name__)

#: Default GiB of CPU KV cache (measured enough for 32 concurrent GSM8K requests on the 135M model).
DEFAULT_KVCACHE_GB = 2


def _id_list(cpus: list[int]) -> str:
    """``[0]`` -> ``"0"``, ``[0, 1, 2]`` -> ``"0-2"``, ``[0, 1, 3]`` -> ``"0,1,3"`` (forms vLLM parses)."""
    if len(cpus) > 1 and cpus == list(range(cpus[0], cpus[-1] + 1)):
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(str(c) for c in cpus)


def cpu_bind_spec(threads: int | None = None, cpus: Sequence[int] | None = None, ranks: int = 1) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` value binding to ``cpus`` (default: this process's affinity).

    Args:
        threads: use only the first ``threads`` CPUs (``None``/0: all of them).
        cpus: CPU ids to choose from (tests pass these; default ``os.sched_getaffinity(0)``).
        ranks: tensor-parallel workers; the CPUs are split into that many equal consecutive groups,
            joined by ``|`` (vLLM requires exactly one group per local rank).

    Returns:
        e.g. ``"0-1"``, ``"0"``, ``"0,1,3"``, or ``"0-3|4-7"`` for 2 ranks.

    Raises:
        ValueError: fewer CPUs than ranks.
    """
    if cpus is None:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cpus = sorted(cpus)
    if threads:
        cpus = cpus[:threads]
    if len(cpus) < max(ranks, 1):
        raise ValueError(f"{len(cpus)} CPUs to bind vLLM's OpenMP threads to, need at least one per rank ({ranks})")
    per = len(cpus) // ranks
    return "|".join(_id_list(cpus[r * per:(r + 1) * per]) for r in range(ranks))


def set_env_defaults(threads: int | None = None, kv_cache_space_gb: float | None = None,
                     tensor_parallel_size: int = 1) -> dict[str, str]:
    """Set the vLLM environment defaults listed in the module docstring; returns what was set.

    Values already in the environment win, except ``VLLM_CPU_KVCACHE_SPACE`` when
    ``kv_cache_space_gb`` is given explicitly (whole GiB; ``ValueError`` otherwise). Must run before the engine starts
    (the engine's child
    process inherits the environment).
    """
    from tokenskip.engines.models import cache_dir

    threads = threads or int(os.environ.get("TOKENSKIP_THREADS", "0") or 0) or None
    wanted = {
        "VLLM_CPU_OMP_THREADS_BIND": cpu_bind_spec(threads, ranks=tensor_parallel_size),
        "VLLM_CPU_KVCACHE_SPACE": str(DEFAULT_KVCACHE_GB),
        "VLLM_CACHE_ROOT": str(cache_dir() / "vllm"),
    }
    done = {}
    for key, value in wanted.items():
        if key not in os.environ:
            os.environ[key] = done[key] = value
    if kv_cache_space_gb is not None:
        # vLLM's CPU platform parses this variable with int(): whole GiB only
        if kv_cache_space_gb != int(kv_cache_space_gb) or kv_cache_space_gb < 1:
            raise ValueError(f"kv_cache_space_gb must be a whole number of GiB >= 1 "
                             f"(vLLM reads VLLM_CPU_KVCACHE_SPACE as an integer), got {kv_cache_space_gb}")
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = done["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_cache_space_gb))
    return done


def on_cpu_platform() -> bool:
    """Whether vLLM runs on its CPU platform (vllm-cpu) here."""
    try:
        from vllm.platforms import current_platform
    except ImportError:  # pragma: no cover - depends on the environment
        return False
    return bool(current_platform.is_cpu())


def merged_model_dir(model: str, adapter: str) -> str:
    """A full model folder of ``adapter`` merged into ``model``, made once and cached.

    The folder is ``cache_dir()/merged/<hash of the adapter's weights and config>`` (written by
    :func:`tokenskip.engines.merge.merge_adapter`, atomically), so a retrained adapter gets a new folder.
    """
    import hashlib

    from tokenskip.contract.layout import MODEL_CONFIG, adapter_hash, find_adapter
    from tokenskip.engines.merge import merge_adapter
    from tokenskip.engines.models import cache_dir

    folder = find_adapter(adapter)
    key = hashlib.sha256(f"{model}|{adapter_hash(folder)}".encode()).hexdigest()[:16]
    out = cache_dir() / "merged" / key
    if not (out / MODEL_CONFIG).is_file():
        logger.info("merging %s into %s for vLLM on CPU -> %s", folder, model, out)
        merge_adapter(model, folder, out, record={"model": model, "adapter": str(folder)})
    return str(out)
