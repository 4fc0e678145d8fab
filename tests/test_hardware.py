"""dtype auto / threads auto: the decision from CPU flags (fake /proc/cpuinfo) and GPU support, explicit wins."""

from __future__ import annotations

import logging
import os

import pytest

from tokenskip.engines import hardware
from tokenskip.engines.hardware import (
    auto_dtype,
    cpu_flags,
    cpu_model_name,
    parse_threads,
    resolve_dtype,
    resolve_threads,
)

EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni
bogomips\t: 4900.00

processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme avx avx2
"""
XEON_AMX = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
COOPER_LAKE = """model name\t: Intel(R) Xeon(R) Gold 5320H
flags\t\t: avx2 avx512f avx512_bf16
"""
SKYLAKE = """model name\t: Intel(R) Xeon(R) Gold 6148
flags\t\t: avx2 avx512f avx512bw avx512_vnni
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16 sve
"""


@pytest.mark.parametrize("cpuinfo, dtype", [
    (EPYC_AVX2, "float32"),      # the build machine: bf16 emulated, ~20x slower
    (XEON_AMX, "bfloat16"),      # AMX + AVX512-BF16
    (COOPER_LAKE, "bfloat16"),   # AVX512-BF16 without AMX
    (SKYLAKE, "float32"),        # AVX-512 but no bf16 instructions
    (ARM, "float32"),            # no x86 bf16 flags: the safe choice
    ("", "float32"),             # no flags line at all
])
def test_cpu_dtype_from_fake_cpuinfo(cpuinfo, dtype):
    choice = auto_dtype("cpu", cpu_flags(cpuinfo))
    assert choice.dtype == dtype
    assert choice.requested == "auto" and choice.reason


def test_cpu_flags_and_model_name_parse_the_first_processor():
    assert {"avx2", "sha_ni"} <= cpu_flags(EPYC_AVX2) and "amx_bf16" not in cpu_flags(EPYC_AVX2)
    assert "amx_bf16" in cpu_flags(XEON_AMX)
    assert cpu_model_name(XEON_AMX).startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert cpu_model_name("") == "unknown CPU"
    assert cpu_flags(path="/nonexistent/cpuinfo") == set()


def test_reason_names_the_flags():
    assert "amx_bf16+avx512_bf16" in auto_dtype("cpu", cpu_flags(XEON_AMX)).reason
    assert "lacks" in auto_dtype("cpu", cpu_flags(EPYC_AVX2)).reason


def test_gpu_dtype():
    assert auto_dtype("cuda", cuda_bf16=True).dtype == "bfloat16"
    assert auto_dtype("cuda:1", cuda_bf16=False).dtype == "float16"
    # the CPU's flags do not matter on a GPU
    assert auto_dtype("cuda", cpu_flags(EPYC_AVX2), cuda_bf16=True).dtype == "bfloat16"
    assert auto_dtype("mps").dtype == "float32"


@pytest.mark.parametrize("explicit", ["float32", "bfloat16", "float16"])
def test_explicit_dtype_wins(explicit):
    for flags in (cpu_flags(EPYC_AVX2), cpu_flags(XEON_AMX)):
        choice = resolve_dtype(explicit, "cpu", flags)
        assert (choice.dtype, choice.reason, choice.requested) == (explicit, "explicit setting", explicit)
    assert resolve_dtype(None, "cpu", cpu_flags(XEON_AMX)).dtype == "bfloat16"
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("fp32", "cpu")


def test_choice_is_logged_once(caplog):
    hardware._logged.clear()
    with caplog.at_level(logging.INFO, logger="tokenskip.engines.hardware"):
        for _ in range(3):
            resolve_dtype("auto", "cpu", cpu_flags(XEON_AMX))
        resolve_dtype("auto", "cpu", cpu_flags(EPYC_AVX2))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("dtype bfloat16 on cpu (auto: CPU has amx_bf16")
    assert lines[1].startswith("dtype float32 on cpu (auto: CPU lacks")


def test_torch_dtype_resolves_auto_for_this_machine():
    import torch

    from tokenskip.engines.models import torch_dtype

    expected = getattr(torch, auto_dtype("cpu").dtype)
    assert torch_dtype("auto") is expected
    assert torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError):
        torch_dtype("half")


def test_threads(monkeypatch):
    assert parse_threads("auto") == "auto" and parse_threads("AUTO ") == "auto"
    assert parse_threads("2") == 2 and parse_threads(3) == 3 and parse_threads(None) is None
    for bad in ("0", -1, "two", 1.5):
        with pytest.raises(ValueError, match="threads"):
            parse_threads(bad)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert resolve_threads("auto") == 3
    assert resolve_threads(2) == 2
    monkeypatch.setenv("TOKENSKIP_THREADS", "auto")
    assert resolve_threads(None) == 3
    monkeypatch.setenv("TOKENSKIP_THREADS", "1")
    assert resolve_threads(None) == 1 and resolve_threads("auto") == 3
    monkeypatch.delenv("TOKENSKIP_THREADS")
    assert resolve_threads(None) is None


def test_config_accepts_threads_auto():
    from tokenskip.contract.config import dataclass_from_dict
    from tokenskip.generation.rollout import GenerationConfig

    cfg = dataclass_from_dict(GenerationConfig, {"model": "m", "threads": "auto"})
    assert cfg.threads == "auto"
    assert dataclass_from_dict(GenerationConfig, {"model": "m", "threads": "2"}).threads == 2
    with pytest.raises(ValueError, match="threads"):
        dataclass_from_dict(GenerationConfig, {"model": "m", "threads": "many"})


def test_generation_config_records_the_choice(monkeypatch):
    from tokenskip.generation.rollout import GenerationConfig

    monkeypatch.setattr(hardware, "cpu_flags", lambda *a, **k: cpu_flags(XEON_AMX))
    rec = GenerationConfig(model="m").dtype_record()
    assert rec["dtype"] == "bfloat16" and rec["dtype_requested"] == "auto" and "amx_bf16" in rec["dtype_reason"]
    assert GenerationConfig(model="m").backend_kwargs()["dtype"] == "bfloat16"
    explicit = GenerationConfig(model="m", dtype="float32")
    assert explicit.dtype_record() == {"dtype": "float32", "dtype_requested": "float32",
                                       "dtype_reason": "explicit setting"}
    assert explicit.backend_kwargs()["dtype"] == "float32"


def test_every_stage_that_runs_the_model_defaults_to_auto():
    """One dtype rule for every stage that loads the model to run it: `serve` once defaulted to float32 while
    `evaluate` picked bfloat16 on an AMX CPU, so the same request got different tokens from the two."""
    import dataclasses

    from tokenskip.finetune.train_config import TrainConfig
    from tokenskip.lab.merge import MergeConfig
    from tokenskip.lab.warmup import WarmupConfig
    from tokenskip.serving.app import ServeConfig
    from tokenskip.stages.compress import CompressConfig
    from tokenskip.stages.evaluate import EvaluateConfig
    from tokenskip.stages.generate import GenerateConfig

    def default(cls, name="dtype"):
        return next(f.default for f in dataclasses.fields(cls) if f.name == name)

    got = {c.__name__: default(c) for c in (GenerateConfig, EvaluateConfig, ServeConfig, CompressConfig,
                                            TrainConfig, WarmupConfig)}
    assert got == dict.fromkeys(got, "auto")
    assert "dtype" not in {f.name for f in dataclasses.fields(MergeConfig)}  # a recipe's dtype: auto never reaches it
    assert default(MergeConfig, "save_dtype") == "float32"    # the saved weights: exact merge unless asked otherwise
