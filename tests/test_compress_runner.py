"""``tokenskip compress``: inputs, filters, output files, summary, resume."""

from __future__ import annotations

import json

import pytest

from tokenskip.cli import main
from tokenskip.contract.io import read_json, read_jsonl
from tokenskip.contract.stats import percentile
from tokenskip.stages.compress import CompressConfig, run_compress
from tokenskip.task.prompts import build_prompt

GSM_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many?",
     "answer": "Tom has 3 + 4 = <<3+4=7>>7 apples now.\nSo he has 7 apples in total.\n#### 7"},
    {"question": "A box holds 12 eggs. How many eggs in 5 boxes?",
     "answer": "Each box holds 12 eggs, and there are 5 boxes of them on the table.\n"
               "So there are 12 * 5 = <<12*5=60>>60 eggs in all the boxes together.\n#### 60"},
    {"question": "Sam reads 10 pages a day for 3 days. Pages?",
     "answer": "Sam reads ten pages every single day without fail, for three days in a row.\n"
               "In total that is 10 * 3 = <<10*3=30>>30 pages read.\n#### 30"},
]


@pytest.fixture()
def gsm_file(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in GSM_ROWS))
    return p


def test_gold_source_self_information(tmp_path, gsm_file, tiny_model_dir):
    out = tmp_path / "out"
    rc = main(["compress", "--cot-source", "gold", "--benchmark", "gsm8k", "--data", str(gsm_file),
               "--scorer", "self-information", "--model", tiny_model_dir, "--ratios", "0.9", "0.7", "0.5",
               "--batch-size", "2", "--out", str(out)])
    assert rc == 0
    src = read_jsonl(out / "source.jsonl")
    assert [r["id"] for r in src] == ["gsm8k/train/0", "gsm8k/train/1", "gsm8k/train/2"]
    assert src[0]["cot"] == "Tom has 3 + 4 = 7 apples now.\nSo he has 7 apples in total." and src[0]["answer"] == "7"
    summary = read_json(out / "summary.json")
    assert set(summary["ratios"]) == {"0.9", "0.7", "0.5"}
    for g in ("0.9", "0.7", "0.5"):
        rows = read_jsonl(out / f"ratio-{g}.jsonl")
        assert len(rows) == 3
        s = summary["ratios"][g]
        errs = [abs(r["achieved_ratio"] - float(g)) for r in rows]
        assert s["n"] == 3 and s["mean_abs_error"] == pytest.approx(sum(errs) / 3)
        assert s["p95_abs_error"] == pytest.approx(percentile(errs, 95))
        for r, o in zip(rows, src):
            assert r["ratio"] == float(g) and r["original_tokens"] == o["cot_tokens"]
            assert r["scorer"] == "self-information" and r["answer_numbers_kept"] is True
            assert set(r) >= {"id", "question", "answer", "cot", "kept_tokens", "achieved_ratio", "overshoot"}
    assert summary["scorer"] == "self-information" and summary["settings"]["protect"] is True
    from tokenskip.engines.hardware import auto_dtype  # the scorer ran in the machine's dtype, recorded with the reason

    assert summary["dtype"] == auto_dtype("cpu").dtype and summary["dtype_requested"] == "auto"
    assert summary["dtype_reason"] == auto_dtype("cpu").reason


def test_predictions_source_filters_and_resumes(tmp_path, smol_tokenizer):
    preds = tmp_path / "predictions.jsonl"
    long_cot = "word " * 600
    rows = [
        {"id": "a", "prompt": "P", "question": "Q a", "output": "...", "cot": "We add 2 + 2 = 4 quickly here.",
         "cot_tokens": 12, "pred": "4", "gold": "4", "correct": True},
        {"id": "b", "prompt": "P", "question": "Q b", "output": "...", "cot": "Wrong 1 + 1 = 3.",
         "cot_tokens": 8, "pred": "3", "gold": "2", "correct": False},
        {"id": "c", "prompt": "P", "question": "Q c", "output": "...", "cot": long_cot,
         "cot_tokens": 600, "pred": "1", "gold": "1", "correct": True},
        {"id": "d", "prompt": build_prompt(smol_tokenizer, "How much is 6 / 2?"), "output": "...", "cot": "Then 6 / 2 "
                                                                                                          "= 3 is the "
                                                                                                          "final value "
                                                                                                          "we want.",
         "cot_tokens": 14, "pred": "3", "gold": "3", "correct": True},
    ]
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = CompressConfig(out=str(tmp_path / "o"), predictions=str(preds), scorer="random", ratios=[0.6],
                         model="smollm2-135m-instruct")
    s1 = run_compress(cfg)
    src = read_jsonl(tmp_path / "o" / "source.jsonl")
    assert [r["id"] for r in src] == ["a", "d"]
    assert src[1]["question"] == "How much is 6 / 2?"  # no question field: cut out of the chat prompt
    first = read_jsonl(tmp_path / "o" / "ratio-0.6.jsonl")
    # rerun, under the old name of the same source: nothing rescored, nothing duplicated, same rows
    s2 = run_compress(CompressConfig(out=str(tmp_path / "o"), predictions=str(preds), scorer="random", ratios=[0.6],
                            model="smollm2-135m-instruct", cot_source="predictions"))
    assert not (tmp_path / "o" / "ratio-0.6.stale").exists()
    assert read_jsonl(tmp_path / "o" / "ratio-0.6.jsonl") == first
    assert s1["ratios"] == s2["ratios"] and s2["ratios"]["0.6"]["n"] == 2
    # a changed seed is a changed setting: the file starts over
    run_compress(CompressConfig(out=str(tmp_path / "o"), predictions=str(preds), scorer="random", ratios=[0.6], seed=1,
                       model="smollm2-135m-instruct"))
    assert (tmp_path / "o" / "ratio-0.6.stale").exists()
    assert len(read_jsonl(tmp_path / "o" / "ratio-0.6.jsonl")) == 2


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        CompressConfig(out="x", predictions="p.jsonl", ratios=[0.5, 1.2]).validate()
    with pytest.raises(ValueError, match="--predictions"):
        CompressConfig(out="x").validate()
    with pytest.raises(ValueError, match="--data"):
        CompressConfig(out="x", cot_source="gold").validate()
    with pytest.raises(ValueError, match="protect-kinds"):
        CompressConfig(out="x", predictions="p", protect_kinds=["digits"]).validate()
    assert main(["compress", "--predictions", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"),
                 "--ratios", "0"]) == 2


def test_predictions_questions_joined_from_data(tmp_path, gsm_file):
    preds = tmp_path / "predictions.jsonl"
    rows = [{"id": "gsm8k/train/1", "prompt": "templated", "output": "...", "cot": "12 * 5 = 60 eggs.",
             "cot_tokens": 9, "pred": "60", "gold": "60", "correct": True}]
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_compress(CompressConfig(out=str(tmp_path / "o"), predictions=str(preds), data=str(gsm_file), scorer="random",
                       ratios=[0.5]))
    assert read_jsonl(tmp_path / "o" / "source.jsonl")[0]["question"] == GSM_ROWS[1]["question"]
    rows[0]["id"] = "nope"
    preds.write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match=r"predictions.jsonl, line 1: field 'id'"):
        run_compress(CompressConfig(out=str(tmp_path / "o2"), predictions=str(preds), data=str(gsm_file),
                                    scorer="random",
                           ratios=[0.5]))
    preds.write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match="field 'question'"):
        run_compress(CompressConfig(out=str(tmp_path / "o3"), predictions=str(preds), scorer="random", ratios=[0.5]))


def test_no_cot_survives_the_filter_is_a_one_line_error(tmp_path, capsys):
    # the exact input: a model that got every training question wrong
    preds = tmp_path / "none.jsonl"
    preds.write_text('{"id":"a","question":"q","cot":"x","correct":false}\n')
    out = tmp_path / "c"
    rc = main(["compress", "--predictions", str(preds), "--scorer", "random", "--ratios", "0.5", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "no CoT left to compress: read 1 row(s); dropped 1 with 'correct' not true" in err[0] and "'a'" in err[0]
    assert not out.exists()  # nothing written, so no summary.json with NaN in it


def test_every_drop_reason_is_counted(tmp_path):
    preds = tmp_path / "p.jsonl"
    rows = [{"id": "w1", "question": "q", "cot": "x", "correct": False},
            {"id": "w2", "question": "q", "cot": "x", "correct": None},
            {"id": "long", "question": "q", "cot": "word " * 50, "cot_tokens": 50, "correct": True},
            {"id": "empty", "question": "q", "cot": "  ", "correct": True}]
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError) as e:
        run_compress(CompressConfig(out=str(tmp_path / "o"), predictions=str(preds), scorer="random", ratios=[0.5],
                           max_cot_tokens=20))
    msg = str(e.value)
    assert "read 4 row(s)" in msg
    assert "2 with 'correct' not true" in msg and "'w1', 'w2'" in msg
    assert "1 with a CoT over --max-cot-tokens 20 tokens (ids 'long')" in msg
    assert "1 with an empty CoT (ids 'empty')" in msg


def test_empty_question_in_predictions_is_rejected(tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"id":"a","question":"q","cot":"2 + 2 = 4","correct":true}\n'
                     '{"id":"b","question":" ","cot":"2 + 2 = 4","correct":true}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl, line 2: field 'question': empty"):
        run_compress(CompressConfig(out=str(tmp_path / "o"), predictions=str(preds), scorer="random", ratios=[0.5]))


def test_summary_of_no_rows_is_null_not_nan():
    from tokenskip.compress.stats import summarize

    s = summarize({0.5: []})["0.5"]
    assert s["n"] == 0 and s["mean_achieved_ratio"] is None and s["p95_abs_error"] is None
    assert json.loads(json.dumps(s, allow_nan=False)) == s
