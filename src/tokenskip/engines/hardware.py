"""What the machine is good at: the ``auto`` dtype and ``auto`` thread count.

``dtype: auto`` picks the fastest dtype that keeps results sound on the device a run lands on:

* CUDA GPU: ``bfloat16`` when the GPU supports it (Ampere and newer), ``float16`` otherwise;
* CPU with AMX-BF16 or AVX512-BF16 (``amx_bf16`` / ``avx512_bf16`` in ``/proc/cpuinfo``): ``bfloat16``
  (measured on an AMX Xeon, SmolLM2-135M: HF ``generate`` ~2× and LoRA training ~1.8× float32);
* any other CPU (e.g. AVX2-only AMD EPYC): ``float32`` — bfloat16 is emulated there and was ~20×
  slower than float32 in this project's measurements.

An explicit dtype always wins. The choice is logged once per (device, choice) with its reason, and
the stages record ``dtype`` and ``dtype_reason`` in ``metrics.json`` / ``train_metrics.json``.

``threads: auto`` = the number of CPUs this process may run on (``os.sched_getaffinity``), not the
machine's core count. On a shared 2-core machine two processes that each use 2 threads collapse
(decoding fell to less than half its speed when another process held a core), so give each job
``threads: 1`` when two jobs share 2 cores.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tokenskip.contract.config import parse_threads

logger = logging.getLogger(__name__)

#: /proc/cpuinfo flags that make bfloat16 matmuls native (faster than float32) on x86 CPUs.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
#: Flags worth printing next to a benchmark (what decides the dtype and the kernels torch uses).
REPORTED_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "amx_fp16")
DTYPE_NAMES = ("float32", "bfloat16", "float16")

_logged: set[tuple] = set()


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved dtype (``float32``/``bfloat16``/``float16``) and why it was chosen (one line)."""

    dtype: str
    reason: str
    requested: str = "auto"


def cpu_flags(cpuinfo: str | None = None, path: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags (``flags`` line of the first processor in ``/proc/cpuinfo`` format).

    Args:
        cpuinfo: the file's text (tests pass fake contents); read from ``path`` when ``None``.
    Returns an empty set where there is no such file (macOS, Windows) or no flags line.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path(path).read_text(errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):  # x86 / ARM spelling
            return set(value.split())
    return set()


def cpu_model_name(cpuinfo: str | None = None, path: str | Path = "/proc/cpuinfo") -> str:
    """The ``model name`` of the first processor, or ``"unknown CPU"``."""
    if cpuinfo is None:
        try:
            cpuinfo = Path(path).read_text(errors="replace")
        except OSError:
            return "unknown CPU"
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name":
            return value.strip()
    return "unknown CPU"


def auto_dtype(device: str = "cpu", flags: set[str] | None = None, cuda_bf16: bool | None = None) -> DtypeChoice:
    """The dtype ``auto`` means on ``device`` (rules in the module docstring).

    Args:
        device: torch device string (``cpu``, ``cuda``, ``cuda:1``; ``auto`` = CUDA when available).
        flags: CPU flags (default: :func:`cpu_flags` of this machine).
        cuda_bf16: whether the GPU supports bfloat16 (default: ``torch.cuda.is_bf16_supported()``).
    """
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if cuda_bf16 is None:
            import torch

            cuda_bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        if cuda_bf16:
            return DtypeChoice("bfloat16", f"{device}: the GPU supports bfloat16")
        return DtypeChoice("float16", f"{device}: the GPU lacks bfloat16, float16 is its fast dtype")
    if device != "cpu":
        return DtypeChoice("float32", f"{device}: no dtype rule for this device, float32 is the safe choice")
    flags = cpu_flags() if flags is None else flags
    native = [f for f in BF16_CPU_FLAGS if f in flags]
    if native:
        return DtypeChoice("bfloat16", f"CPU has {'+'.join(native)} (native bfloat16 matmuls)")
    return DtypeChoice("float32", "CPU lacks amx_bf16/avx512_bf16: bfloat16 would be emulated (~20x slower "
                                  "than float32 on AVX2)")


def resolve_dtype(requested: str | None, device: str = "cpu", flags: set[str] | None = None,
                  cuda_bf16: bool | None = None, log: bool = True) -> DtypeChoice:
    """``requested`` (``auto``/``None`` or an explicit dtype name) -> a :class:`DtypeChoice`.

    An explicit ``float32``/``bfloat16``/``float16`` is kept as is (reason ``"explicit setting"``, not
    logged). An ``auto`` choice is logged at INFO once per process and (device, dtype, reason).

    Raises:
        ValueError: an unknown dtype name.
    """
    if requested in (None, "", "auto"):
        choice = auto_dtype(device, flags, cuda_bf16)
    elif requested in DTYPE_NAMES:
        choice = DtypeChoice(requested, "explicit setting", requested)
    else:
        raise ValueError(f"dtype must be one of {('auto',) + DTYPE_NAMES}, got {requested!r}")
    key = (device, choice)
    if log and choice.requested == "auto" and key not in _logged:
        _logged.add(key)
        logger.info("dtype %s on %s (%s: %s)", choice.dtype, device, choice.requested, choice.reason)
    return choice


def available_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count()`` where unsupported)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_threads(value) -> int | None:
    """The thread count a ``threads`` setting means.

    ``"auto"`` -> :func:`available_cpus`; an int -> itself; ``None`` -> ``$TOKENSKIP_THREADS`` (an int or
    ``auto``) when set, else ``None`` (leave torch's default).
    """
    value = parse_threads(value)
    if value is None:
        env = os.environ.get("TOKENSKIP_THREADS", "").strip()
        value = parse_threads(env) if env and env != "0" else None
    if value == "auto":
        return available_cpus()
    return value


def machine_summary(cpuinfo: str | None = None) -> dict:
    """What a benchmark prints about the machine: CPU model, the relevant flags, usable CPUs, GPU, auto dtype."""
    flags = cpu_flags(cpuinfo)
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    choice = auto_dtype("cpu", flags)
    return {"cpu": cpu_model_name(cpuinfo), "cpu_flags": [f for f in REPORTED_CPU_FLAGS if f in flags],
            "cpus_usable": available_cpus(), "cpus_total": os.cpu_count(), "gpu": gpu,
            "auto_dtype_cpu": choice.dtype, "auto_dtype_reason": choice.reason}
