"""Decoding settings come from the model's generation config, the same for every backend (issue 13, item 1)."""

from __future__ import annotations

import json

from tokenskip.engines import get_backend
from tokenskip.engines.decoding import DecodingSettings, decoding_from_generation_config, read_decoding_settings


def _with_penalty(src, dst, penalty):
    import shutil

    shutil.copytree(src, dst)
    gc = json.loads((dst / "generation_config.json").read_text())
    gc["repetition_penalty"] = penalty
    (dst / "generation_config.json").write_text(json.dumps(gc))
    return dst


def test_settings_read_from_generation_config_and_mapped_for_both_engines(tiny_model_dir, tmp_path):
    d = _with_penalty(tiny_model_dir, tmp_path / "m", 1.05)  # Qwen2.5-Instruct's value
    s = read_decoding_settings(str(d))
    assert s == DecodingSettings(repetition_penalty=1.05, min_new_tokens=0)
    assert s.vllm_kwargs() == {"repetition_penalty": 1.05, "min_tokens": 0}
    assert s.hf_kwargs() == {"repetition_penalty": 1.05, "min_new_tokens": None}
    assert read_decoding_settings(str(tmp_path)) == DecodingSettings()  # no generation_config.json
    assert decoding_from_generation_config(None).repetition_penalty == 1.0


def test_hf_backend_applies_the_penalty_of_the_generation_config(tiny_model_dir, tmp_path, smol_tokenizer):
    from tokenskip.task.prompts import build_prompt

    prompts = [build_prompt(smol_tokenizer, q) for q in ("What is 2 + 3?", "Name three colours of a rainbow.")]
    plain = get_backend("hf", model=str(tiny_model_dir), batch_size=2, show_progress=False)
    pen = get_backend("hf", model=str(_with_penalty(tiny_model_dir, tmp_path / "p", 2.0)), batch_size=2,
                      show_progress=False)
    assert plain.decoding.repetition_penalty == 1.0 and pen.decoding.repetition_penalty == 2.0
    a, b = plain.generate(prompts, 24), pen.generate(prompts, 24)
    assert [x.token_ids for x in a] != [x.token_ids for x in b]
    # a repeated token is rarer under the penalty
    def repeats(gens):
        return sum(len(x.token_ids) - len(set(x.token_ids)) for x in gens)

    assert repeats(b) < repeats(a)
