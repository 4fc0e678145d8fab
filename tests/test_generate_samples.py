"""generate --samples N --temperature T: N sampled CoTs per problem, resumable, seeded; build-sft keeps a
problem's samples on one side of the split and drops repeated CoTs."""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import GSM8K_TEST, need_data
from test_sft import make_compressed
from tokenskip.contract.io import read_json, read_jsonl
from tokenskip.contract.records import problem_id, sample_id
from tokenskip.generation.rollout import GenerationConfig
from tokenskip.stages.build_sft import SFTDataConfig, run_build_sft
from tokenskip.stages.generate import GenerateConfig, run_generate


def gen_cfg(model, out, **kw):
    base = dict(model=model, benchmark="gsm8k", data=str(need_data(GSM8K_TEST)), limit=2, max_new_tokens=8,
                batch_size=4, out=str(out), dtype="float32", threads=1)
    return GenerateConfig(**(base | kw))


def test_sample_ids_round_trip():
    assert sample_id("gsm8k/train/7", 2) == "gsm8k/train/7#s2"
    assert problem_id("gsm8k/train/7#s2") == "gsm8k/train/7"
    assert problem_id("gsm8k/train/7") == "gsm8k/train/7"
    assert problem_id("q#self") == "q#self" and problem_id("q#s") == "q#s"   # not a sample suffix


def test_sampled_generation_writes_n_rows_per_problem_and_resumes(tmp_path, tiny_model_dir):
    m = run_generate(gen_cfg(tiny_model_dir, tmp_path / "a", samples=3, temperature=1.0, seed=5))
    rows = read_jsonl(tmp_path / "a" / "predictions.jsonl")
    assert m["n"] == 6 and len(rows) == 6
    plain = [r["id"] for r in read_jsonl(_greedy(tmp_path, tiny_model_dir))]
    assert [r["id"] for r in rows] == [sample_id(p, k) for p in plain for k in range(3)]
    by_problem = {p: [r for r in rows if problem_id(r["id"]) == p] for p in plain}
    for p, rs in by_problem.items():
        assert len({r["prompt"] for r in rs}) == 1           # one prompt, sampled three times
    # a random 2-layer model at temperature 1 over 8 tokens: the samples differ
    assert any(len({tuple(r["output_token_ids"]) for r in rs}) > 1 for rs in by_problem.values())
    settings = read_json(tmp_path / "a" / "metrics.json")["settings"]
    assert (settings["samples"], settings["temperature"], settings["seed"]) == (3, 1.0, 5)

    # rerun: nothing regenerated, nothing duplicated
    before = (tmp_path / "a" / "predictions.jsonl").read_bytes()
    run_generate(gen_cfg(tiny_model_dir, tmp_path / "a", samples=3, temperature=1.0, seed=5))
    assert (tmp_path / "a" / "predictions.jsonl").read_bytes() == before
    # the same seed gives the same samples in a fresh folder; another seed other samples
    run_generate(gen_cfg(tiny_model_dir, tmp_path / "b", samples=3, temperature=1.0, seed=5))
    again = read_jsonl(tmp_path / "b" / "predictions.jsonl")
    assert [r["output_token_ids"] for r in again] == [r["output_token_ids"] for r in rows]
    run_generate(gen_cfg(tiny_model_dir, tmp_path / "c", samples=3, temperature=1.0, seed=6))
    other = read_jsonl(tmp_path / "c" / "predictions.jsonl")
    assert [r["output_token_ids"] for r in other] != [r["output_token_ids"] for r in rows]


def _greedy(tmp_path, model):
    out = tmp_path / "greedy"
    m = run_generate(GenerationConfig(model=model, benchmark="gsm8k", data=str(need_data(GSM8K_TEST)), limit=2,
                                      max_new_tokens=8, out=str(out), dtype="float32", threads=1))
    assert m["n"] == 2 and m["settings"]["samples"] == 1
    return out / "predictions.jsonl"


@pytest.mark.parametrize("kw, match", [
    (dict(samples=2), "--temperature 0 would write 2 copies"),
    (dict(samples=0, temperature=0.7), "--samples must be >= 1"),
    (dict(temperature=-0.1), "--temperature must be >= 0"),
    (dict(temperature=0.7, top_p=0.0), r"--top-p must be in \(0, 1\]"),
])
def test_bad_sampling_settings_are_clear_errors(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        gen_cfg("smollm2-135m-instruct", tmp_path, **kw).validate()


def test_build_sft_keeps_a_problems_samples_together_and_drops_repeats(tmp_path, smol_tokenizer):
    ids, cots = [], []
    for q in range(12):
        for k in range(3):
            ids.append(sample_id(f"q{q}", k))
            # sample 2 repeats sample 0 word for word (up to whitespace): one row is enough
            cots.append(f"Step {q} first. Then  {q} + {q} = {2 * q}." if k in (0, 2) else f"Add {q} twice: {2 * q}.")
    make_compressed(tmp_path / "c", ids=ids, cots=[c.replace("  ", " ") if i % 3 == 2 else c
                                                   for i, c in enumerate(cots)])
    stats = run_build_sft(SFTDataConfig(compressed=str(tmp_path / "c"), out=str(tmp_path / "sft"),
                                    validation_share=0.25), tokenizer=smol_tokenizer)
    train = read_jsonl(tmp_path / "sft" / "train.jsonl")
    val = read_jsonl(tmp_path / "sft" / "validation.jsonl")
    assert stats["n"]["total"] == 24                       # 12 problems × 2 distinct CoTs
    assert Counter(problem_id(r["id"]) for r in train + val) == {f"q{q}": 2 for q in range(12)}
    assert not any(r["id"].endswith("#s2") for r in train + val)
    # the validation split holds whole problems: both CoTs of a problem on the same side
    assert {problem_id(r["id"]) for r in train}.isdisjoint({problem_id(r["id"]) for r in val})
    assert len({problem_id(r["id"]) for r in val}) == 3
