"""tokenskip serve with a γ-calibrated adapter on the HF engine (tiny random model, float32, real HTTP): each request
is decoded at its γ's LoRA scale under the calibration's marker, requests at different γ in one batch each get their
own scale (peft's mixed adapter batches), a γ outside the calibrated range is a 400, and an uncalibrated adapter is
served exactly as before."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from conftest import make_tiny_llama, randomize_lora_b  # noqa: E402
from test_serve import Running, free_port, questions  # noqa: E402
from tokenskip.contract.layout import GAMMA_CALIBRATION  # noqa: E402
from tokenskip.engines.hf import HFBackend  # noqa: E402
from tokenskip.finetune.calibration import fit_calibration, scaled_adapter  # noqa: E402
from tokenskip.serving.app import ServeConfig, create_app  # noqa: E402
from tokenskip.serving.worker import ServerState  # noqa: E402
from tokenskip.task.prompt_format import PromptFormat  # noqa: E402

FMT = PromptFormat(system_prompt="Be brief.", marker_delimiter="[[G]]", ratios=(1.0, 0.5))
#: measured curve of the test calibration: γ 0.9 -> scale 0.25, γ 0.65 -> 0.75, γ 1.0 -> 0 (the target itself)
POINTS = [(0.0, 1.0, 0.5), (0.5, 0.8, 0.5), (1.0, 0.5, 0.5)]
CAP = 8


@pytest.fixture(scope="module")
def folders(tmp_path_factory, smol_tokenizer):
    """``(model dir, calibrated adapter, the same adapter uncalibrated, cache folder)``."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("serve-cal")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENSKIP_CACHE", str(root / "cache"))
        model = make_tiny_llama(smol_tokenizer)
        model.save_pretrained(root / "model")
        smol_tokenizer.save_pretrained(root / "model")
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        randomize_lora_b(peft_model, 0.5)
        peft_model.save_pretrained(root / "plain")
        FMT.save(root / "plain")
        shutil.copytree(root / "plain", root / "calibrated")
        fit_calibration(POINTS, marker_ratio=0.5).save(root / "calibrated")
        yield str(root / "model"), str(root / "calibrated"), str(root / "plain"), str(root / "cache")


@pytest.fixture(autouse=True)
def own_cache(folders, monkeypatch):
    """Scaled adapters go to a cache folder of the test (never the user's)."""
    monkeypatch.setenv("TOKENSKIP_CACHE", folders[3])


def serve(model_dir: str, adapter: str, **kw) -> Running:
    cfg = ServeConfig(model=model_dir, adapter=adapter, served_model_name="tiny", dtype="float32", threads=1,
                      port=free_port(), default_max_tokens=CAP, **kw)
    srv = Running(create_app(cfg), cfg.port)
    srv.wait_ready()
    srv.state = srv.server.config.app.state.tokenskip
    return srv


def spy(monkeypatch, engine) -> list[dict]:
    """The keyword arguments and prompts of every ``engine.generate`` call."""
    real, calls = engine.generate, []

    def wrapped(prompts, caps, **kw):
        calls.append({"prompts": list(prompts), **kw})
        return real(prompts, caps, **kw)

    monkeypatch.setattr(engine, "generate", wrapped)
    return calls


def alone(model_dir: str, adapter: str | None, prompt: str, merge: bool = True):
    """The generation of ``prompt`` decoded alone, by an engine of its own with ``adapter`` (merged)."""
    be = HFBackend(model_dir, dtype="float32", batch_size=1, adapter=adapter, merge_adapter=merge)
    try:
        return be.generate([prompt], CAP)[0]
    finally:
        be.close()


def post(srv, gamma, content: str, model: str = "calibrated") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": CAP,
            "compression_ratio": gamma, "return_prompt": True}
    return httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=300)


def test_requests_at_different_gamma_in_one_batch_each_get_their_scale(folders, monkeypatch):
    model_dir, adapter, _, _ = folders
    # three requests wait for one another (batch of 3), so they are decoded in one padded batch
    srv = serve(model_dir, adapter, max_batch_size=3, batch_wait_ms=30_000)
    try:
        calls = spy(monkeypatch, srv.state.engine)
        q = questions(1)[0]
        with ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(lambda g: post(srv, g, q).json(), (0.9, 0.65, 1.0)))
        msgs = [r["choices"][0]["message"] for r in replies]
        assert [(m["compression_ratio"], m["lora_scale"], m["marker_ratio"]) for m in msgs] == \
            [(0.9, 0.25, 0.5), (0.65, 0.75, 0.5), (1.0, 0.0, None)]
        # γ 0.9 and 0.65 are written as the calibration's marker; γ 1.0 (scale 0) is the plain prompt
        assert msgs[0]["prompt"] == msgs[1]["prompt"] != msgs[2]["prompt"]
        assert "[[G]]0.5[[G]]" in msgs[0]["prompt"] and "[[G]]" not in msgs[2]["prompt"]
        # one engine call, each prompt with its own adapter folder (None: the target itself)
        (call,) = calls
        folder = {0.25: str(scaled_adapter(adapter, 0.25)), 0.75: str(scaled_adapter(adapter, 0.75)), 0.0: None}
        assert sorted(call["adapters"], key=str) == sorted(folder.values(), key=str)
        # each reply is exactly what the adapter merged at its scale writes for that prompt alone (greedy, float32)
        for m, r in zip(msgs, replies):
            g = alone(model_dir, folder[m["lora_scale"]], m["prompt"])
            assert (m["content"], r["usage"]["completion_tokens"]) == (g.text, g.num_tokens)
        # the same prompt at two scales decodes differently: the scale is applied per row
        assert msgs[0]["content"] != msgs[1]["content"]
        assert httpx.get(srv.url + "/health").json()["max_batch_seen"] == 3
    finally:
        srv.stop()


def test_gamma_outside_the_calibrated_range_is_a_400_and_the_uncalibrated_adapter_is_unchanged(folders,
                                                                                                 monkeypatch):
    model_dir, adapter, plain, _ = folders
    srv = serve(model_dir, adapter, max_batch_size=2, batch_wait_ms=5)
    try:
        r = post(srv, 0.45, "What is 2 + 3?")
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "compression_ratio" and "calibrated range [0.5, 1]" in err["message"]
        ok = post(srv, 0.5, "What is 2 + 3?")   # the range's edge: scale 1, the adapter as trained
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["lora_scale"] == 1.0
    finally:
        srv.stop()
    # the same adapter without gamma_calibration.json: γ's own marker on the unscaled adapter, as before
    assert not (Path(plain) / GAMMA_CALIBRATION).exists()
    srv = serve(model_dir, plain, max_batch_size=2, batch_wait_ms=5)
    try:
        calls = spy(monkeypatch, srv.state.engine)
        r = post(srv, 0.5, "What is 2 + 3?", model="plain").json()
        msg = r["choices"][0]["message"]
        assert "[[G]]0.5[[G]]" in msg["prompt"] and "lora_scale" not in msg and "marker_ratio" not in msg
        assert "adapters" not in calls[0]
        g = alone(model_dir, plain, msg["prompt"], merge=False)
        assert (msg["content"], r["usage"]["completion_tokens"]) == (g.text, g.num_tokens)
        assert post(srv, 0.45, "What is 2 + 3?", model="plain").status_code == 400   # below its trained range
    finally:
        srv.stop()


def test_settings_that_cannot_apply_the_scales_are_refused_at_start_up(folders):
    model_dir, adapter, plain, _ = folders
    for kw, flag in (({"merge_adapter": True}, "--merge-adapter"), ({"upstream": "http://127.0.0.1:9/v1"},
                                                                     "--upstream")):
        cfg = ServeConfig(model=model_dir, adapter=adapter, **kw)
        with pytest.raises(ValueError, match=f"γ calibration.*{flag}"):
            cfg.validate()
        with pytest.raises(ValueError, match=f"cannot apply; serve it with --backend hf or vllm, without {flag}"):
            ServerState(cfg)._load_engine()   # the server started without validate() fails before loading
        ServeConfig(model=model_dir, adapter=plain, **kw).validate()   # an uncalibrated adapter: as before


def test_hf_engine_keeps_a_bounded_set_of_scaled_adapters(folders):
    model_dir, adapter, _, _ = folders
    be = HFBackend(model_dir, dtype="float32", adapter=adapter, merge_adapter=False, max_loras=2)
    try:
        assert be.capabilities.adapters_per_prompt
        s = {k: str(scaled_adapter(adapter, k)) for k in (0.25, 0.5, 0.75)}
        assert be.adapters.names([s[0.25], adapter, None]) == ["lora1", "default", "__base__"]
        assert be.adapters.names([s[0.5]]) == ["lora2"]
        assert be.adapters.names([s[0.75], s[0.5]]) == ["lora3", "lora2"]   # 0.25 (least recently used) evicted
        assert set(be.model.peft_config) == {"default", "lora2", "lora3"}
        assert be.adapters.names([s[0.25]]) == ["lora4"]                    # loaded again when asked again
        assert set(be.model.peft_config) == {"default", "lora2", "lora4"}
        with pytest.raises(ValueError, match="2 adapters for 1 prompts"):
            be.generate(["x"], 2, adapters=[None, None])
    finally:
        be.close()
    merged = HFBackend(model_dir, dtype="float32", adapter=adapter, merge_adapter=True)
    assert not merged.capabilities.adapters_per_prompt
    with pytest.raises(ValueError, match="unmerged"):
        merged.generate(["x"], 2, adapters=[None])
