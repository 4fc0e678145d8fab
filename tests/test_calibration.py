"""γ control by a calibrated LoRA scale: the scaled adapter, the γ → scale map, evaluate and ``tokenskip calibrate``."""

import json

import pytest
import torch

from conftest import GSM8K_TEST, need_data
from tokenskip.contract.io import DataError, read_json, read_jsonl
from tokenskip.contract.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, GAMMA_CALIBRATION, state_file
from tokenskip.contract.ratios import GammaControl
from tokenskip.finetune.calibration import GammaCalibration, fit_calibration, scaled_adapter, scaled_config


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Scaled adapters go to a cache folder of the test (never the user's)."""
    monkeypatch.setenv("TOKENSKIP_CACHE", str(tmp_path / "cache"))


def merged_q_proj(model_dir, adapter=None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.model.layers[0].self_attn.q_proj.weight.detach().clone()


# ---------------------------------------------------------------- the scaled adapter

def test_scaled_adapter_merges_to_the_interpolation(tiny_model_dir, adapter_dir, tmp_path):
    base, full = merged_q_proj(tiny_model_dir), merged_q_proj(tiny_model_dir, adapter_dir)
    assert (full - base).abs().max() > 1e-2  # the adapter changes the layer
    half = scaled_adapter(adapter_dir, 0.5)
    assert str(half).startswith(str(tmp_path / "cache" / "scaled-adapters"))
    assert read_json(half / ADAPTER_CONFIG)["lora_alpha"] == 4.0
    torch.testing.assert_close(merged_q_proj(tiny_model_dir, str(half)), base + 0.5 * (full - base),
                               atol=1e-5, rtol=0)
    zero = scaled_adapter(adapter_dir, 0.0)
    torch.testing.assert_close(merged_q_proj(tiny_model_dir, str(zero)), base, atol=1e-6, rtol=0)
    # cached (same folder for the same adapter and scale), weights shared, scale 1 is the adapter itself
    assert scaled_adapter(adapter_dir, 0.5) == half != scaled_adapter(adapter_dir, 0.25)
    assert (half / ADAPTER_WEIGHTS).read_bytes() == (tmp_path / "adapter" / ADAPTER_WEIGHTS).read_bytes()
    assert scaled_adapter(adapter_dir, 1.0) == tmp_path / "adapter"
    assert not list((tmp_path / "cache" / "scaled-adapters").glob(".*"))  # no temporary folder left


def test_scaled_config_scales_alpha_patterns_and_refuses_what_is_not_linear():
    cfg = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "alpha_pattern": {"q_proj": 32}, "use_rslora": True}
    out = scaled_config(cfg, 0.25)
    assert out["lora_alpha"] == 4 and out["alpha_pattern"] == {"q_proj": 8} and out["r"] == 8
    assert cfg["lora_alpha"] == 16  # the input is left alone
    with pytest.raises(ValueError, match="DoRA"):
        scaled_config({**cfg, "use_dora": True}, 0.5)
    with pytest.raises(ValueError, match="modules_to_save"):
        scaled_config({**cfg, "modules_to_save": ["lm_head"]}, 0.5)
    with pytest.raises(ValueError, match=">= 0"):
        scaled_config(cfg, -0.1)


# ---------------------------------------------------------------- the γ → scale map

def test_format_scale_names_scales_above_one():
    from tokenskip.finetune.calibration import format_scale

    assert [format_scale(s) for s in (0, 0.25, 1, 1.1, 1.23456)] == ["0.0", "0.25", "1.0", "1.1", "1.2346"]
    with pytest.raises(ValueError, match="finite number >= 0"):
        format_scale(-0.5)


def test_scale_for_inverts_the_measured_curve():
    cal = fit_calibration([(0.0, 1.0, 0.8), (0.5, 0.8, 0.8), (1.0, 0.5, 0.7)], marker_ratio=0.5)
    assert cal.scale_for(1.0) == 0.0
    assert cal.scale_for(0.8) == pytest.approx(0.5) and cal.scale_for(0.5) == pytest.approx(1.0)
    assert cal.scale_for(0.9) == pytest.approx(0.25)
    assert cal.scale_for(0.65) == pytest.approx(0.75)
    assert cal.scale_for(0.3) == 1.0  # below the measured range: the largest scale
    grid = [1.0, 0.95, 0.9, 0.8, 0.7, 0.65, 0.6, 0.5, 0.4]
    scales = [cal.scale_for(g) for g in grid]
    assert scales == sorted(scales)  # smaller γ, larger scale
    for bad in (0.0, 1.5, -0.2, True):
        with pytest.raises(ValueError, match="γ must be in"):
            cal.scale_for(bad)


def test_scale_for_pools_a_non_monotone_curve():
    # 0.95 at scale 0.5 is above 0.9 at 0.25: pooled to 0.925 at both
    cal = fit_calibration([(1.0, 0.6, 0.5), (0.0, 1.0, 0.5), (0.25, 0.9, 0.5), (0.5, 0.95, 0.5)], 0.5)
    assert cal.curve() == ([0.0, 0.25, 0.5, 1.0], pytest.approx([1.0, 0.925, 0.925, 0.6]))
    assert cal.scale_for(0.925) == pytest.approx(0.25)
    assert cal.scale_for(0.7) == pytest.approx(0.5 + (0.925 - 0.7) / (0.925 - 0.6) * 0.5)
    assert cal.scale_for(0.95) == pytest.approx(0.25 * (1.0 - 0.95) / (1.0 - 0.925))
    # a curve without scale 0: γ above its range -> its smallest scale
    assert fit_calibration([(0.5, 0.8, 1), (1.0, 0.5, 1)], 0.5).scale_for(0.9) == 0.5


def test_scale_for_keeps_the_target_at_gamma_one_when_small_scales_write_longer():
    # The think lab's validation curve: scales 0.5 and 0.7 wrote slightly LONGER CoTs than the target (ActRatio
    # 1.031, 1.001). Pooled with the target's 1.0 they lifted the anchor to 1.011 and γ 1.0 was decoded at scale
    # 0.70 (accuracy 70 % on validation against the target's 83.5 %); capped at 1.0, γ 1.0 is the target itself.
    pts = [(0.0, 1.0, 0.835), (0.5, 1.0307, 0.575), (0.7, 1.0009, 0.70), (0.8, 0.8694, 0.75), (0.9, 0.5973, 0.79),
           (1.0, 0.4896, 0.845), (1.1, 0.4851, 0.845)]
    cal = fit_calibration(pts, 0.5)
    assert cal.curve()[1][:4] == pytest.approx([1.0, 1.0, 1.0, 0.8694])
    assert cal.scale_for(1.0) == 0.0 and cal.gamma_range() == pytest.approx((0.4851, 1.0))
    # below 1.0 the flat stretch is left at its largest scale; the rest of the curve is unchanged
    assert cal.scale_for(0.95) == pytest.approx(0.7 + (1.0 - 0.95) / (1.0 - 0.8694) * 0.1)
    assert cal.scale_for(0.7) == pytest.approx(0.8 + (0.8694 - 0.7) / (0.8694 - 0.5973) * 0.1)
    assert cal.scale_for(0.5) == pytest.approx(0.9 + (0.5973 - 0.5) / (0.5973 - 0.4896) * 0.1)


def test_gamma_range_and_control(adapter_dir, tmp_path):
    cal = fit_calibration([(0.0, 1.0, 0.8), (0.5, 0.8, 0.8), (1.0, 0.5, 0.7), (1.1, 0.52, 0.6)], marker_ratio=0.5)
    assert cal.gamma_range() == (pytest.approx(0.51), 1.0)   # 0.5 and 0.52 pooled: the curve stays non-increasing
    assert fit_calibration([(0.5, 0.8, 1), (1.0, 0.5, 1)], 0.5).gamma_range() == (0.5, 0.8)   # no scale 0 measured
    assert fit_calibration([(0.0, 1.0, 1), (1.0, 1.2, 1)], 0.5).gamma_range() == (1.0, 1.0)   # capped at γ's limit
    plain = fit_calibration([(0.0, 1.0, 0.8), (0.5, 0.8, 0.8), (1.0, 0.5, 0.7)], marker_ratio=0.5)
    ctl = plain.control(adapter_dir, 0.9)
    assert (ctl.scale, ctl.marker_ratio, ctl.adapter) == (0.25, 0.5, str(scaled_adapter(adapter_dir, 0.25)))
    assert read_json(f"{ctl.adapter}/{ADAPTER_CONFIG}")["lora_alpha"] == 2.0   # 8 x 0.25
    assert plain.control(adapter_dir, 1.0) == GammaControl(0.0, None, None)   # the target itself, no marker
    assert plain.control(adapter_dir, 0.5).adapter == adapter_dir   # scale 1: the adapter itself
    # 4 decimals: the scale evaluate records and the folder's name
    assert plain.control(adapter_dir, 0.7).scale == round(plain.scale_for(0.7), 4) == 0.6667


def test_fit_calibration_checks_its_points():
    with pytest.raises(ValueError, match="two distinct scales"):
        fit_calibration([(0.5, 0.8, 0.5), (0.5, 0.7, 0.5)], 0.5)
    with pytest.raises(ValueError, match="marker_ratio"):
        fit_calibration([(0.0, 1.0, 0.5), (1.0, 0.5, 0.5)], 0.0)
    with pytest.raises(ValueError, match="ActRatio > 0"):
        fit_calibration([(0.0, 1.0, 0.5), (1.0, 0.0, 0.5)], 0.5)


def test_save_load_round_trip_and_malformed_files(tmp_path):
    assert GammaCalibration.load(tmp_path) is None
    cal = fit_calibration([(0.0, 1.0, 0.9), (1.0, 0.51, 0.85)], 0.5, split="validation", n=40, machine="test cpu")
    path = cal.save(tmp_path)
    assert path == tmp_path / GAMMA_CALIBRATION
    back = GammaCalibration.load(tmp_path)
    assert back == cal and back.scale_for(0.755) == pytest.approx(0.5)
    good = json.loads(path.read_text())
    for field, value in (("points", [[0.0, 1.0]]), ("points", "x"), ("marker_ratio", 2), ("n", "many"),
                         ("points", [[0.5, 0.8, 0.5], [0.5, 0.7, 0.5]])):
        path.write_text(json.dumps({**good, field: value}))
        with pytest.raises(DataError) as e:
            GammaCalibration.load(tmp_path)
        assert GAMMA_CALIBRATION in str(e.value) and field in str(e.value)


# ---------------------------------------------------------------- evaluate with a calibrated adapter

def eval_cfg(model, out, **kw):
    from tokenskip.stages.evaluate import EvaluateConfig

    base = dict(model=model, benchmark="gsm8k", data=str(need_data(GSM8K_TEST)), limit=3, max_new_tokens=8,
                batch_size=2, out=str(out))
    return EvaluateConfig(**{**base, **kw})


def test_evaluate_with_a_calibrated_adapter(tmp_path, tiny_model_dir, adapter_dir, monkeypatch):
    import tokenskip.stages.evaluate as ev
    from tokenskip.stages.evaluate import run_dir, run_evaluate

    run_evaluate(eval_cfg(tiny_model_dir, tmp_path))  # the Original run
    fit_calibration([(0.0, 1.0, 0.5), (0.5, 0.8, 0.5), (1.0, 0.5, 0.5)], 0.5).save(adapter_dir)
    loads, real_get = [], ev.get_backend
    monkeypatch.setattr(ev, "get_backend", lambda name, **kw: loads.append(kw.get("adapter")) or real_get(name, **kw))
    ms = run_evaluate(eval_cfg(tiny_model_dir, tmp_path, method="tokenskip", adapter=adapter_dir,
                               ratios=[0.9, 0.65, 1.0]))
    s25, s75 = scaled_adapter(adapter_dir, 0.25), scaled_adapter(adapter_dir, 0.75)
    assert loads == [str(s25), str(s75), None]  # one engine per scaled adapter; γ 1.0 = scale 0: the target
    assert read_json(s25 / ADAPTER_CONFIG)["lora_alpha"] == 2.0 and read_json(s75 / ADAPTER_CONFIG)["lora_alpha"] == 6.0
    rows = {g: read_jsonl(run_dir(tmp_path, "gsm8k", "tokenskip", g) / "predictions.jsonl") for g in (0.9, 0.65, 1.0)}
    orig = read_jsonl(run_dir(tmp_path, "gsm8k", "original") / "predictions.jsonl")
    for g, scale in ((0.9, 0.25), (0.65, 0.75)):
        assert all("<|eot_id|>0.5<|eot_id|>" in r["prompt"] for r in rows[g])  # the calibration's marker, not γ's
        fp = read_json(state_file(run_dir(tmp_path, "gsm8k", "tokenskip", g) / "predictions.jsonl"))["settings"]
        assert (fp["lora_scale"], fp["marker_ratio"]) == (scale, 0.5)
    # the two scales decode differently; scale 0 is the Original run exactly (plain prompt, no adapter)
    assert [r["output_token_ids"] for r in rows[0.9]] != [r["output_token_ids"] for r in rows[0.65]]
    assert [(r["prompt"], r["output_token_ids"]) for r in rows[1.0]] == \
        [(r["prompt"], r["output_token_ids"]) for r in orig]
    assert ms[2]["act_ratio"] == 1.0


def test_calibrated_metrics_record_the_scale(tmp_path, tiny_model_dir, adapter_dir):
    from tokenskip.stages.evaluate import run_dir, run_evaluate

    fit_calibration([(0.0, 1.0, 0.5), (0.5, 0.8, 0.5), (1.0, 0.5, 0.5)], 0.5).save(adapter_dir)
    (m,) = run_evaluate(eval_cfg(tiny_model_dir, tmp_path, method="tokenskip", adapter=adapter_dir, ratios=[0.9],
                                 limit=1))
    on_disk = read_json(run_dir(tmp_path, "gsm8k", "tokenskip", 0.9) / "metrics.json")
    assert (on_disk.get("lora_scale"), on_disk.get("marker_ratio")) == (0.25, 0.5)
    assert (m.get("lora_scale"), m.get("marker_ratio")) == (0.25, 0.5)


def test_an_uncalibrated_adapter_is_unchanged(tmp_path, tiny_model_dir, adapter_dir):
    from tokenskip.methods.tokenskip import TokenSkip, gamma_control

    assert gamma_control(adapter_dir, 0.5) is None
    cfg = eval_cfg(tiny_model_dir, tmp_path, method="tokenskip", adapter=adapter_dir)
    assert TokenSkip().adapter_for(cfg, 0.7) == adapter_dir


# ---------------------------------------------------------------- tokenskip calibrate

def test_calibrate_command_fits_and_stores_the_calibration(tmp_path, tiny_model_dir, adapter_dir):
    from tokenskip.cli import main
    from tokenskip.stages.evaluate import run_dir, run_evaluate

    run_evaluate(eval_cfg(tiny_model_dir, tmp_path / "ev", method="tokenskip", adapter=adapter_dir, ratios=[0.5],
                          max_new_tokens=16))
    out = tmp_path / "cal"
    assert main(["calibrate", "--model", tiny_model_dir, "--adapter", adapter_dir, "--benchmark", "gsm8k",
                 "--data", str(need_data(GSM8K_TEST)), "--limit", "3", "--max-new-tokens", "16", "--batch-size", "2",
                 "--scales", "0.5", "1.0", "1.25", "--marker-ratio", "0.5", "--out", str(out)]) == 0
    cal = GammaCalibration.load(adapter_dir)
    assert cal is not None and cal == GammaCalibration.load(out) and cal.n == 3 and cal.marker_ratio == 0.5
    assert [p[0] for p in cal.points] == [0.0, 0.5, 1.0, 1.25] and cal.points[0][1] == 1.0
    # a scale above 1 (an extrapolated delta) is measured and named like the others (it crashed as "γ 1.25")
    assert len(read_jsonl(out / "scale-1.25" / "predictions.jsonl")) == 3
    orig = {r["id"]: r["cot_tokens"] for r in read_jsonl(out / "original" / "predictions.jsonl")}
    one = read_jsonl(out / "scale-1.0" / "predictions.jsonl")
    assert cal.points[2][1] == pytest.approx(sum(r["cot_tokens"] for r in one) / sum(orig.values()))
    assert cal.points[2][2] == pytest.approx(sum(r["correct"] for r in one) / 3)
    # scale 1 under the 0.5 marker is the adapter as trained at γ 0.5: the same rows as evaluate's
    ev_rows = read_jsonl(run_dir(tmp_path / "ev", "gsm8k", "tokenskip", 0.5) / "predictions.jsonl")
    assert [(r["prompt"], r["output_token_ids"]) for r in one] == \
        [(r["prompt"], r["output_token_ids"]) for r in ev_rows]
