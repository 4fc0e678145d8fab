"""vLLM backend helpers (fast, no vLLM needed); the agreement with transformers (slow, needs vLLM) is in
``tests/slow/test_vllm_agreement.py``."""

from __future__ import annotations

import json
import os

import pytest

from tokenskip.engines import get_backend
from tokenskip.engines.vllm import VLLM_LORA_RANKS, adapter_rank, vllm_lora_rank
from tokenskip.engines.vllm_platform import cpu_bind_spec, set_env_defaults

MODEL = "smollm2-135m-instruct"
N_GSM8K = 8
CAP = 24       # new tokens per prompt
AGREE = 20     # leading tokens that must match between engines
LORA_R = 8


# --- helpers (no vLLM needed) ---------------------------------------------------------------------

def test_cpu_bind_spec():
    assert cpu_bind_spec(cpus=[0, 1]) == "0-1"
    assert cpu_bind_spec(threads=1, cpus=[0, 1]) == "0"
    assert cpu_bind_spec(cpus=[3, 0, 1]) == "0,1,3"
    assert cpu_bind_spec(threads=2, cpus=[2, 3, 4, 7]) == "2-3"
    assert cpu_bind_spec(cpus=range(8), ranks=2) == "0-3|4-7"
    assert cpu_bind_spec(threads=1, cpus=[0, 1], ranks=1) == "0"
    with pytest.raises(ValueError, match="one per rank"):
        cpu_bind_spec(cpus=[0], ranks=2)
    with pytest.raises(ValueError, match="one per rank"):
        cpu_bind_spec(cpus=[])


def test_set_env_defaults_keeps_user_values(monkeypatch, tmp_path):
    keys = ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CACHE_ROOT")
    for k in keys:  # setenv first so monkeypatch restores the original state (even "unset") afterwards
        monkeypatch.setenv(k, "x")
        monkeypatch.delenv(k)
    monkeypatch.setenv("TOKENSKIP_CACHE", str(tmp_path))
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")
    done = set_env_defaults(threads=None, kv_cache_space_gb=None)
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0" and "VLLM_CPU_OMP_THREADS_BIND" not in done
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path / "vllm")
    set_env_defaults(kv_cache_space_gb=4.0)  # an explicit argument overrides the environment
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "4"
    for bad in (0, 0.5, 2.5):  # vLLM parses the variable with int()
        with pytest.raises(ValueError, match="whole number of GiB"):
            set_env_defaults(kv_cache_space_gb=bad)


def test_lora_rank_helpers(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 12, "lora_alpha": 24}))
    assert adapter_rank(str(tmp_path)) == 12
    assert vllm_lora_rank(12) == 16 and vllm_lora_rank(8) == 8 and vllm_lora_rank(1) == 1
    with pytest.raises(ValueError, match="exceeds"):
        vllm_lora_rank(VLLM_LORA_RANKS[-1] + 1)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        adapter_rank(str(tmp_path / "missing"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"lora_alpha": 24}))
    with pytest.raises(ValueError, match="'r'"):
        adapter_rank(str(tmp_path))


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("sglang")
