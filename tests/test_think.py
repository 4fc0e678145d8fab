"""Reasoning (think) models: the <think> CoT format, reasoning chat templates, SFT targets and masks, budget forcing.

Fixture tokenizers: the SmolLM2 tokenizer with ``<think>``/``</think>`` added and templates written in
tests/conftest.py that behave like DeepSeek-R1-Distill's and Qwen3's."""

from __future__ import annotations

import json

import pytest

from conftest import QWEN3_STYLE_TEMPLATE, R1_STYLE_TEMPLATE, make_tiny_llama, stops_at_once, think_tokenizer
from tokenskip.contract.records import Problem, RunMetrics
from tokenskip.engines import Generation
from tokenskip.finetune.sft import Trajectory, make_record
from tokenskip.finetune.sft_rows import tokenize_example
from tokenskip.generation.inference import (
    FORCE_ANSWER,
    Decoding,
    ForcedAnswerEngine,
    Query,
    answer,
    forced_opener,
    generate_capped,
    render_prompt,
)
from tokenskip.generation.rollout import grade_row, summarize
from tokenskip.task.grading import CotSplit, grade, split_cot, split_output
from tokenskip.task.prompt_format import PromptFormat, load_prompt_format
from tokenskip.task.prompts import INSTRUCTION, build_prompt, end_of_turn, stop_rule
from tokenskip.task.think import (
    block_state,
    drop_thinking,
    pin_enable_thinking,
    resolve_cot_format,
    template_think_mode,
    think_completion,
    unanswered,
)

THINK_OUT = "<think>\nStep 1: 6 * 7 = 42.\nStep 2: minus 35 is 7.\n</think>\n\nThe final answer is: $\\boxed{7}$"


@pytest.fixture(scope="module")
def r1_tok(smol_tokenizer):
    return think_tokenizer(smol_tokenizer, R1_STYLE_TEMPLATE)


@pytest.fixture()
def q3_tok(smol_tokenizer):   # per test: pin_enable_thinking changes it
    return think_tokenizer(smol_tokenizer, QWEN3_STYLE_TEMPLATE)


# ------------------------------------------------------------------------------------------- split and grade

def test_a_think_output_splits_into_block_and_answer():
    want = CotSplit("Step 1: 6 * 7 = 42.\nStep 2: minus 35 is 7.", "The final answer is: $\\boxed{7}$", True)
    assert split_output(THINK_OUT) == want == split_output(THINK_OUT, "think")
    # R1 style: the prompt opened the block, the output starts inside it
    assert split_output("Step 1.\n</think>\n\n42", "think") == CotSplit("Step 1.", "42", True)
    assert split_output("Step 1.\n</think>\n\n42") == CotSplit("Step 1.", "42", True)   # auto: the </think> shows it
    # never closed: all CoT, no answer
    assert split_output("<think>\nStep 1: 6 * 7", "auto") == CotSplit("Step 1: 6 * 7", "", False)
    assert split_output("Step 1: 6 * 7", "think") == CotSplit("Step 1: 6 * 7", "", False)
    # a plain output keeps the reference split, and plain ignores tags
    assert split_output("a b\n\nThe final answer is: 3") == CotSplit("a b", "a b\n\nThe final answer is: 3", None)
    assert split_cot(THINK_OUT, "plain") == THINK_OUT.split("\n\nThe final answer is:")[0]
    with pytest.raises(ValueError, match="cot_format"):
        split_output("x", "thinking")


def test_grading_reads_only_the_answer_and_an_open_block_is_wrong():
    g = grade("<think>5 apples and 9 pears make 14</think>\nSo 7 are left.", "7", "gsm8k")
    assert (g.answer, g.correct, g.think_closed, g.cot) == ("7", True, True, "5 apples and 9 pears make 14")
    # the last number of the whole text would be 7 too; the reasoning's 14 is never read as the answer
    assert grade("<think>it is 7</think>\nThe answer is 14.", "7", "gsm8k").answer == "14"
    unclosed = "<think>\nso the result is \\boxed{7}"
    g = grade(unclosed, "7", "gsm8k")
    assert (g.answer, g.correct, g.think_closed) == (None, False, False)
    assert grade(unclosed, "7", "gsm8k", cot_format="plain").correct          # the plain format would take it
    assert grade("\\boxed{7}", "7", "gsm8k", cot_format="think").think_closed is False   # R1: never closed


def test_rows_carry_the_flag_and_metrics_count_unclosed_blocks(smol_tokenizer):
    def count(text):
        return len(smol_tokenizer(text, add_special_tokens=False)["input_ids"])

    p = Problem("p1", "q", "7")
    rows = [grade_row(p, "P", Generation(t, 30, 0.1, f), "gsm8k", count, "think")
            for t, f in ((THINK_OUT, "stop"), ("Step 1: 6 * 7 = 42", "length"))]
    assert [r["think_closed"] for r in rows] == [True, False] and [r["correct"] for r in rows] == [True, False]
    assert rows[0]["cot"] == "Step 1: 6 * 7 = 42.\nStep 2: minus 35 is 7." and rows[0]["pred"] == "7"
    assert rows[0]["cot_tokens"] == count(rows[0]["cot"]) < count(THINK_OUT)      # think tokens only
    m = RunMetrics.from_json(summarize(rows)).to_json()
    assert m["think_unclosed"] == 1 and m["accuracy"] == 0.5
    plain = grade_row(p, "P", Generation("7\n\nThe final answer is: 7", 9, 0.1, "stop"), "gsm8k", count)
    assert "think_closed" not in plain and "think_unclosed" not in RunMetrics.from_json(summarize([plain])).to_json()


# ------------------------------------------------------------------------------------------- templates

def test_r1_style_template_opens_the_block_and_keeps_the_marker_in_the_user_turn(r1_tok):
    assert template_think_mode(r1_tok) == "open" and resolve_cot_format("auto", r1_tok) == "think"
    assert resolve_cot_format("plain", r1_tok) == "plain"
    prompt = build_prompt(r1_tok, "Q?", 0.5)
    assert prompt == f"<|User|>{INSTRUCTION}\nQ?<|eot_id|>0.5<|eot_id|><|Assistant|><think>\n"
    assert end_of_turn(r1_tok) == "<|end_of_sentence|>"
    assert r1_tok.convert_tokens_to_ids("<|end_of_sentence|>") in stop_rule(r1_tok).token_ids


def test_qwen3_style_template_takes_enable_thinking(q3_tok, smol_tokenizer):
    assert template_think_mode(q3_tok) == "model" and resolve_cot_format("auto", q3_tok) == "think"
    assert build_prompt(q3_tok, "Q?", 0.7).endswith(f"{INSTRUCTION}\nQ?<|eot_id|>0.7<|eot_id|><|im_end|>\n"
                                                    "<|im_start|>assistant\n")
    pin_enable_thinking(q3_tok, False)
    assert build_prompt(q3_tok, "Q?").endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert template_think_mode(q3_tok) == "closed" and resolve_cot_format("auto", q3_tok) == "auto"
    pin_enable_thinking(q3_tok, True)   # pinned again: the new value replaces the old one
    assert build_prompt(q3_tok, "Q?").endswith("<|im_start|>assistant\n") and template_think_mode(q3_tok) == "model"
    assert PromptFormat(enable_thinking=False).for_tokenizer(q3_tok).cot_format == "auto"
    assert template_think_mode(smol_tokenizer) is None
    with pytest.raises(ValueError, match="does not read it"):
        pin_enable_thinking(think_tokenizer(smol_tokenizer, R1_STYLE_TEMPLATE), False)


@pytest.mark.parametrize("which", ["r1", "qwen3", "chatml"])
def test_prior_turns_lose_their_thinking(which, smol_tokenizer):
    tok = {"r1": lambda: think_tokenizer(smol_tokenizer, R1_STYLE_TEMPLATE),
           "qwen3": lambda: think_tokenizer(smol_tokenizer, QWEN3_STYLE_TEMPLATE),
           "chatml": lambda: smol_tokenizer}[which]()   # ChatML does not drop it itself: render_prompt does
    for old in ("<think>\nsecret plan\n</think>\n\nIt is 4.", "secret plan\n</think>\n\nIt is 4."):
        msgs = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": old},
                {"role": "user", "content": "Q2"}]
        p = render_prompt(tok, PromptFormat(), messages=msgs, ratio=0.5)
        assert "secret plan" not in p and "It is 4." in p and p.count("<|eot_id|>0.5<|eot_id|>") == 1
    assert drop_thinking("no block here") == "no block here"


@pytest.mark.parametrize("template", ["r1", "qwen3"])
def test_sft_target_keeps_the_tags_and_masks_exactly_the_prompt(template, smol_tokenizer):
    tok = think_tokenizer(smol_tokenizer, R1_STYLE_TEMPLATE if template == "r1" else QWEN3_STYLE_TEMPLATE)
    traj = Trajectory("a", "a", "Q?", "7", {1.0: "long long cot", 0.5: "short cot"}, "So 7. \\boxed{7}")
    rec = make_record(tok, traj, 0.5)
    opener = "" if template == "r1" else "<think>\n"
    assert rec["completion"] == f"{opener}short cot\n</think>\n\nSo 7. \\boxed{{7}}"
    assert (rec["prompt"] + rec["completion"]).count("<think>") == 1 and "<|eot_id|>0.5<|eot_id|>" in rec["prompt"]
    eot = end_of_turn(tok)
    ex = tokenize_example(tok, rec["prompt"], rec["completion"], eot)
    n_prompt = len(tok(rec["prompt"], add_special_tokens=False)["input_ids"])
    assert ex["completion_mask"] == [0] * n_prompt + [1] * (len(ex["input_ids"]) - n_prompt)
    learned = [i for i, m in zip(ex["input_ids"], ex["completion_mask"]) if m]
    assert tok.decode(learned) == rec["completion"] + eot
    assert learned.count(tok.convert_tokens_to_ids("</think>")) == 1
    plain = make_record(tok, Trajectory("a", "a", "Q?", "7", {1.0: "cot"}), 1.0)
    assert "</think>" not in plain["completion"]


def test_compress_prunes_only_the_think_content(tmp_path, r1_tok):
    from tokenskip.contract.io import read_jsonl, write_jsonl_atomic
    from tokenskip.stages.build_sft import SFTDataConfig, run_build_sft
    from tokenskip.stages.compress import CompressConfig, run_compress

    tok_dir = tmp_path / "tok"
    r1_tok.save_pretrained(tok_dir)

    def count(text):
        return len(r1_tok(text, add_special_tokens=False)["input_ids"])

    rows = []
    for k in range(4):   # R1 style: the outputs start inside the block the prompt opened
        out = (f"First, {k} boxes hold {k * 3} apples in all.\nThen we add 4 more apples to the pile.\n"
               f"So there are {k * 3 + 4} apples.\n</think>\n\nThere are {k * 3 + 4} apples. \\boxed{{{k * 3 + 4}}}")
        rows.append(grade_row(Problem(f"p{k}", f"How many apples, {k}?", str(k * 3 + 4)), "P",
                              Generation(out, 40, 0.1, "stop"), "gsm8k", count, "think") | {"correct": True})
    write_jsonl_atomic(tmp_path / "predictions.jsonl", rows)
    run_compress(CompressConfig(out=str(tmp_path / "c"), predictions=str(tmp_path / "predictions.jsonl"),
                                scorer="random", ratios=[0.5], model=str(tok_dir), threads=1))
    pruned = {r["id"]: r["cot"] for r in read_jsonl(tmp_path / "c" / "ratio-0.5.jsonl")}
    assert all("think>" not in c and "\\boxed" not in c for c in pruned.values()) and len(pruned) == 4
    run_build_sft(SFTDataConfig(compressed=str(tmp_path / "c"), out=str(tmp_path / "sft"), model=str(tok_dir),
                                ratios=[0.5], validation_share=0.0), tokenizer=r1_tok)
    for r in read_jsonl(tmp_path / "sft" / "train.jsonl"):
        k = int(r["id"][1:])
        assert r["prompt"].endswith("<|Assistant|><think>\n")
        assert r["completion"] == f"{pruned[r['id']]}\n</think>\n\nThere are {k * 3 + 4} apples. \\boxed{{{k * 3 + 4}}}"
    assert load_prompt_format(tmp_path / "sft").cot_format == "think"


# ------------------------------------------------------------------------------------------- budget forcing

def test_forced_opener_closes_an_open_block_only():
    assert block_state("<|Assistant|><think>\n", "step") == "open"
    assert block_state("<|im_start|>assistant\n", "<think>\nstep") == "open"
    assert block_state("x", "<think>a</think> b") == "closed" and block_state("x", "plain") is None
    assert block_state("<|im_start|>assistant\n<think>\n\n</think>\n\n", "answer") is None
    assert forced_opener("<|Assistant|><think>\n", "step") == "\n</think>" + FORCE_ANSWER
    assert forced_opener("x", "<think>a</think>\nso") == FORCE_ANSWER == forced_opener("x", "a b")
    assert think_completion("c", "a", "p<think>\n") == "c\n</think>\n\na"


class ThinkingFake:
    """An engine that opens a think block itself (Qwen3 style) and thinks 'w w w …' until its cap."""

    name, batch_size, tokenizer = "fake", 4, None
    capabilities = type("Caps", (), {"streaming": False})()

    def count_tokens(self, text):
        return len(text.split())

    def generate(self, prompts, caps, **kw):
        out = []
        for p, c in zip(prompts, caps):
            text = " 7" if p.endswith(FORCE_ANSWER) else " ".join(["<think>"] + ["w"] * (c - 1))
            out.append(Generation(text, c, 0.0, "length"))
        return out


def test_budget_closes_a_block_the_model_opened():
    (g,) = generate_capped(ThinkingFake(), ["<|im_start|>assistant\n"], [100], [5])
    assert g.text == "<think> w w w w\n</think>" + FORCE_ANSWER + " 7}"
    assert split_output(g.text) == CotSplit("w w w w", "The final answer is: $\\boxed{ 7}", True)


@pytest.fixture(scope="module")
def r1_engine(r1_tok):
    from tokenskip.engines.hf import HFBackend

    return HFBackend(hf_model=make_tiny_llama(r1_tok, seed=3), hf_tokenizer=r1_tok, batch_size=2)


@pytest.mark.parametrize("budget", [1, 6, 15])
def test_a_budgeted_generation_closes_the_block_and_answers(r1_engine, budget):
    fmt = PromptFormat().for_tokenizer(r1_engine.tokenizer)
    assert fmt.cot_format == "think"
    streamed = []
    qs = [Query(question=q, max_cot_tokens=budget, decoding=Decoding(max_tokens=60))
          for q in ("What is 2 + 3?", "Tom has 7 apples and eats 2. How many are left?")]
    for a in answer(r1_engine, qs, fmt, length_model=None, on_tokens=lambda i, ids: streamed.append((i, list(ids)))):
        assert a.prompt.endswith("<think>\n") and a.ratio == 1.0 and a.think_closed is True
        think, sep, after = a.text.partition("</think>")
        assert sep and after.startswith(FORCE_ANSWER) and after.endswith("}") and "</think>" not in after
        assert len(a.token_ids) <= budget and a.cot_tokens <= budget and a.cot == think.strip()
        assert a.output_tokens <= 60
    for i in (0, 1):   # what was streamed while thinking stays within the budget
        assert sum(len(ids) for j, ids in streamed if j == i) <= budget


def test_the_budget_method_uses_the_same_rule(r1_engine):
    prompts = [render_prompt(r1_engine.tokenizer, PromptFormat(), question="What is 2 + 3?", ratio=0.5)]
    (g,) = ForcedAnswerEngine(r1_engine, answer_max_tokens=5).generate(prompts, 4)
    assert g.text.count("</think>") == 1 and len(g.token_ids) <= 4
    assert split_output(g.text, "think").think_closed and FORCE_ANSWER in g.text


def test_unanswered_turns():
    assert unanswered("<|Assistant|><think>\n", "a b\n</think>\n") and unanswered("x<think>\n", "a b")
    assert unanswered("<|im_start|>assistant\n", "<think>a</think>") and not unanswered("x", "a b")
    assert not unanswered("<|Assistant|><think>\n", "a</think>\n\n7") and not unanswered("x", "")


def test_a_block_closed_with_no_answer_gets_one(r1_tok):
    """A think model that closes its block and stops at once is made to answer (HF engine): served (streamed), and
    by the budget method's engine."""
    from tokenskip.engines.hf import HFBackend

    prompt = render_prompt(r1_tok, PromptFormat(), question="What is 2 + 3?")
    engine = HFBackend(hf_model=stops_at_once(r1_tok, prompt), hf_tokenizer=r1_tok, batch_size=1)
    (g,) = engine.generate([prompt], [20])
    assert (g.text, g.finish_reason) == ("</think>", "stop")   # what the model does by itself: no answer
    want = "</think>" + FORCE_ANSWER + "7}"
    streamed = []
    (a,) = answer(engine, [Query(question="What is 2 + 3?", max_cot_tokens=8, decoding=Decoding(max_tokens=40))],
                  PromptFormat().for_tokenizer(r1_tok), on_tokens=lambda i, ids: streamed.extend(ids))
    assert a.text == want and a.final_answer == "7" and a.think_closed is True and a.cot_tokens == 0
    assert streamed == r1_tok("</think>", add_special_tokens=False)["input_ids"]
    assert ForcedAnswerEngine(engine, answer_max_tokens=5).generate([prompt], 8)[0].text == want
    (plain,) = answer(engine, [Query(question="What is 2 + 3?", decoding=Decoding(max_tokens=40))],
                      PromptFormat().for_tokenizer(r1_tok))
    assert plain.text == "</think>"   # no budget asked: the model's own turn is left as it is


def test_a_served_think_request_never_thinks_past_its_budget(tmp_path, r1_tok):
    """HTTP, HF engine, no length model: the think format alone enables max_cot_tokens (streamed or not)."""
    httpx = pytest.importorskip("httpx")
    from test_serve import Running, free_port
    from tokenskip.serving.app import ServeConfig, create_app

    make_tiny_llama(r1_tok, seed=3).save_pretrained(tmp_path / "m")
    r1_tok.save_pretrained(tmp_path / "m")
    cfg = ServeConfig(model=str(tmp_path / "m"), port=free_port(), threads=1, default_max_tokens=40)
    srv = Running(create_app(cfg), cfg.port)
    try:
        srv.wait_ready()
        for budget in (3, 9):
            body = {"model": str(tmp_path / "m"), "messages": [{"role": "user", "content": "What is 2 + 3?"}],
                    "max_tokens": 40, "max_cot_tokens": budget}
            r = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=120).json()
            msg = r["choices"][0]["message"]
            think, sep, after = msg["content"].partition("</think>")
            assert sep and after.startswith(FORCE_ANSWER) and msg["max_cot_tokens"] == budget
            assert r["usage"]["cot_tokens"] <= budget and r["usage"]["completion_tokens"] <= 40
            with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body | {"stream": True},
                              timeout=120) as s:
                events = [ln[6:] for ln in s.iter_lines() if ln.startswith("data: ") and ln != "data: [DONE]"]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in map(json.loads, events)
                           if c.get("choices"))
            assert text == msg["content"]
    finally:
        srv.stop()


def test_a_recipe_sets_the_format_for_every_stage_that_reads_prompts():
    from tokenskip.generation.rollout import GenerationConfig
    from tokenskip.pipeline.recipe import Recipe, with_inherited
    from tokenskip.stages.build_sft import SFTDataConfig
    from tokenskip.stages.compress import CompressConfig

    r = Recipe.from_dict({"name": "t", "stages": {"generate": {}}, "cot_format": "think", "enable_thinking": True})
    for cls in (GenerationConfig, SFTDataConfig):
        assert with_inherited(r, cls, {}) == {"cot_format": "think", "enable_thinking": True}
    assert with_inherited(r, CompressConfig, {}) == {}   # compress reads the CoT column the format already split
    with pytest.raises(ValueError, match="--cot-format"):
        GenerationConfig(model="m", cot_format="thinking").validate()


def test_generate_grades_a_think_model_by_its_template(tmp_path, r1_engine):
    """The stage wiring: auto resolves to think from the R1-style template, so outputs cut inside the block the
    prompt opened (they hold no tag at all) are flagged and counted, not graded as plain CoTs."""
    from conftest import GSM8K_TEST, need_data
    from tokenskip.contract.io import read_jsonl
    from tokenskip.stages.generate import GenerateConfig, run_generate

    cfg = GenerateConfig(model="tiny-think", data=str(need_data(GSM8K_TEST)), limit=2, max_new_tokens=5,
                         out=str(tmp_path), threads=1)
    m = run_generate(cfg, backend=r1_engine)
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    assert m["think_unclosed"] == 2 and m["accuracy"] == 0.0
    assert [r["think_closed"] for r in rows] == [False, False] and all(r["pred"] is None for r in rows)
    assert all(r["cot"] == r["output"].strip() and "<think>" in r["prompt"] for r in rows)


def test_a_plain_template_made_a_reasoning_one(smol_tokenizer):
    """The think lab's template (SmolLM2's ChatML + an opened block): think prompts, history without thinking."""
    import copy

    from tokenskip.task.think import think_chat_template

    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = think_chat_template(smol_tokenizer.chat_template)
    assert think_chat_template(tok.chat_template) == tok.chat_template   # idempotent
    assert template_think_mode(tok) == "open" and resolve_cot_format("auto", tok) == "think"
    msgs = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "<think>\nplan\n</think>\n\nIt is 4."},
            {"role": "user", "content": "Q2"}]
    got = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    plain = [msgs[0], {"role": "assistant", "content": "It is 4."}, msgs[2]]
    assert got == smol_tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True) + "<think>\n"
    assert tok.apply_chat_template(msgs, tokenize=False) == smol_tokenizer.apply_chat_template(plain, tokenize=False)
    with pytest.raises(ValueError, match="plain chat template"):
        think_chat_template(QWEN3_STYLE_TEMPLATE)
