"""Inference core: prompts from messages or a question, γ planning, budget capping with a forced answer."""

from __future__ import annotations

import pytest

from tokenskip.contract.ratios import GammaControl
from tokenskip.engines import Capabilities, Generation
from tokenskip.generation.inference import (
    FORCE_ANSWER,
    CalibratedGamma,
    Decoding,
    Query,
    answer,
    generate_capped,
    plan_ratio,
    render_prompt,
)
from tokenskip.task.prompt_format import PromptFormat
from tokenskip.task.prompts import INSTRUCTION, build_prompt


@pytest.mark.parametrize("ratio", [None, 1.0, 0.5, 0.75])
def test_question_and_one_user_message_give_evaluates_prompt(smol_tokenizer, ratio):
    fmt = PromptFormat(system_prompt="Be brief.", marker_delimiter="[[G]]")
    want = build_prompt(smol_tokenizer, "What is 2 + 3?", ratio, "Be brief.", INSTRUCTION, "[[G]]")
    assert render_prompt(smol_tokenizer, fmt, question="What is 2 + 3?", ratio=ratio) == want
    assert render_prompt(smol_tokenizer, fmt, messages=[{"role": "user", "content": "What is 2 + 3?"}],
                         ratio=ratio) == want


def test_multi_turn_marks_only_the_last_user_turn(smol_tokenizer):
    fmt = PromptFormat(system_prompt="Default system.")
    msgs = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "First?"},
            {"role": "assistant", "content": "One."}, {"role": "user", "content": "Second?"}]
    p = render_prompt(smol_tokenizer, fmt, messages=msgs, ratio=0.6)
    assert "Default system." not in p and p.count("Mine.") == 1          # the request's system turn wins
    assert "<|im_start|>user\nFirst?<|im_end|>" in p                      # earlier turns untouched
    assert f"<|im_start|>user\n{INSTRUCTION}\nSecond?<|eot_id|>0.6<|eot_id|><|im_end|>" in p
    assert msgs[3]["content"] == "Second?"                                # caller's list not modified
    with pytest.raises(ValueError, match="no user turn"):
        render_prompt(smol_tokenizer, fmt, messages=[{"role": "system", "content": "x"}])
    with pytest.raises(ValueError, match="exactly one"):
        render_prompt(smol_tokenizer, fmt, messages=msgs, question="q")


class Fake:
    """An engine that writes 'w w w ...' and ends its turn after ``stop_after`` tokens."""

    name, batch_size, tokenizer = "fake", 4, None
    capabilities = Capabilities()   # no streaming, no request options: stop strings are cut after decoding

    def __init__(self, stop_after):
        self.stop_after, self.calls = stop_after, []

    def count_tokens(self, text):
        return len(text.split())

    def generate(self, prompts, caps, **kw):
        self.calls.append((list(prompts), list(caps), kw))
        out = []
        for p, c in zip(prompts, caps):
            if p.endswith(FORCE_ANSWER):
                out.append(Generation("7}$", 2, 0.5, "stop", [1, 2]))
            else:
                n = min(c, self.stop_after)
                out.append(Generation(" ".join(["w"] * n), n, 1.0, "stop" if n < c else "length", list(range(n))))
        return out


def test_budget_caps_the_cot_then_forces_the_answer():
    eng = Fake(stop_after=10)
    gens = generate_capped(eng, ["A", "B"], [50, 50], [4, None])
    assert eng.calls[0][1] == [4, 50] and eng.calls[1] == (["Aw w w w" + FORCE_ANSWER], [24], {})
    assert gens[0].text == "w w w w" + FORCE_ANSWER + "7}$" and gens[0].num_tokens == 6
    assert gens[0].finish_reason == "length" and gens[0].latency_s == 1.5
    assert gens[1].text == " ".join(["w"] * 10) and gens[1].finish_reason == "stop"


def test_plan_ratio():
    fmt = PromptFormat(ratios=(1.0, 0.8, 0.6))

    class LM:
        def ratio_for(self, q, n, lo, hi):
            return (q, n, lo, hi)

    assert plan_ratio(Query(question="q"), fmt) == 1.0
    assert plan_ratio(Query(question="q", ratio=0.7), fmt) == 0.7
    assert plan_ratio(Query(messages=[{"role": "user", "content": "q2"}], max_cot_tokens=9), fmt, LM()) == ("q2", 9,
                                                                                                            0.6, 1.0)
    with pytest.raises(ValueError, match=r"below the adapter's trained range \[0\.6, 1\.0\]"):
        plan_ratio(Query(question="q", ratio=1e-7), fmt)
    assert plan_ratio(Query(question="q", ratio=0.6), fmt) == 0.6   # the edge of the range is in it
    for q, msg in ((Query(question="q", ratio=0.5, max_cot_tokens=3), "not both"),
                   (Query(question="q", ratio=1.2), r"\(0, 1\]"), (Query(question="q", max_cot_tokens=0), ">= 1"),
                   (Query(question="q", max_cot_tokens=5), "length model")):
        with pytest.raises(ValueError, match=msg):
            plan_ratio(q, fmt, None if "length" in msg else LM())


def calibrated(low=0.5, high=1.0):
    """A calibration stand-in: γ >= 0.95 -> scale 0 (the target, no marker); else scale 1 - γ under marker 0.5."""
    def control(g):
        return GammaControl(0.0, None, None) if g >= 0.95 else GammaControl(round(1 - g, 4), 0.5, f"/a/s{1 - g:.2f}")
    return CalibratedGamma(low, high, control)


def test_plan_ratio_with_a_calibration_refuses_outside_its_range_and_clips_budgets():
    fmt = PromptFormat(ratios=(1.0, 0.5))

    class LM:
        def ratio_for(self, q, n, lo, hi):
            return (lo, hi)

    cal = calibrated(low=0.5432, high=0.98)
    assert plan_ratio(Query(question="q", ratio=0.6), fmt, calibrated=cal) == 0.6
    assert plan_ratio(Query(question="q", ratio=0.5432), fmt, calibrated=cal) == 0.5432   # the edges are in it
    for bad in (0.5, 0.99, 1.0):   # 0.5 is trained (fmt.ratios) but below what the calibration reaches
        with pytest.raises(ValueError, match=r"outside the adapter's calibrated range \[0\.5432, 0\.98\]"):
            plan_ratio(Query(question="q", ratio=bad), fmt, calibrated=cal)
    # a budget's γ (2 decimals) is clipped into the range: its low end rounded up to 2 decimals
    assert plan_ratio(Query(question="q", max_cot_tokens=9), fmt, LM(), calibrated=cal) == (0.55, 0.98)
    assert plan_ratio(Query(question="q", max_cot_tokens=9), fmt, LM(), calibrated=calibrated(0.07)) == (0.07, 1.0)
    assert plan_ratio(Query(question="q"), fmt, calibrated=cal) == 1.0   # no γ asked: the full CoT, not refused


def test_calibrated_answers_get_their_own_adapter_and_the_calibrations_marker(smol_tokenizer):
    class PerPrompt(Fake):
        capabilities = Capabilities(adapters_per_prompt=True)

    eng = PerPrompt(stop_after=10)
    eng.tokenizer = smol_tokenizer
    qs = [Query(question="q1", ratio=0.6), Query(question="q2", ratio=1.0), Query(question="q3", max_cot_tokens=3)]
    lm = type("LM", (), {"ratio_for": lambda self, q, n, lo, hi: 0.8})()   # the budget's γ
    a, b, c = answer(eng, qs, length_model=lm, calibrated=calibrated())
    # one engine call for the three, each prompt's own adapter folder (None: the target itself)
    assert eng.calls[0][2]["adapters"] == ["/a/s0.40", None, "/a/s0.20"]
    # the forced answer line of the budgeted query comes from its own adapter too
    assert eng.calls[1][0][0].endswith(FORCE_ANSWER) and eng.calls[1][2]["adapters"] == ["/a/s0.20"]
    assert (a.ratio, a.lora_scale, a.marker_ratio) == (0.6, 0.4, 0.5) and "<|eot_id|>0.5<|eot_id|>" in a.prompt
    assert (b.ratio, b.lora_scale, b.marker_ratio) == (1.0, 0.0, None) and "<|eot_id|>" not in b.prompt
    assert (c.ratio, c.lora_scale, c.marker_ratio) == (0.8, 0.2, 0.5) and "0.8<|eot_id|>" not in c.prompt
    # without a calibration nothing changes: γ's own marker, no adapters, no scale
    (d,) = answer(eng, [Query(question="q1", ratio=0.6)])
    assert "<|eot_id|>0.6<|eot_id|>" in d.prompt and "adapters" not in eng.calls[-1][2] and d.lora_scale is None
    # an engine that cannot pick an adapter per prompt is refused, not run with one adapter for all
    plain = Fake(stop_after=3)
    plain.tokenizer = smol_tokenizer
    with pytest.raises(ValueError, match="adapter per prompt"):
        answer(plain, [Query(question="q1", ratio=0.6)], calibrated=calibrated())
    assert plain.calls == []


def test_answer_is_typed_and_stop_strings_cut(smol_tokenizer):
    eng = Fake(stop_after=3)
    eng.tokenizer = smol_tokenizer
    (a,) = answer(eng, [Query(question="What is 3 + 4?", ratio=0.5, decoding=Decoding(max_tokens=8, stop=("w w",)))])
    # the usage counts what is returned (issue 26 item 3: 32-48 tokens were reported for a 15-token reply)
    assert a.text == "" and a.finish_reason == "stop" and a.ratio == 0.5 and a.output_tokens == 0
    assert a.prompt.endswith("<|eot_id|>0.5<|eot_id|><|im_end|>\n<|im_start|>assistant\n")
    (b,) = answer(eng, [Query(question="q", max_cot_tokens=2)], length_model=type("LM", (), {
        "ratio_for": lambda self, q, n, lo, hi: 0.5})())
    assert b.final_answer == "7" and b.cot == "w w" and b.cot_tokens == 2 and b.max_cot_tokens == 2
    with pytest.raises(ValueError, match="share temperature"):
        answer(eng, [Query(question="q"), Query(question="q", decoding=Decoding(temperature=0.5))])


def test_cot_tokens_never_exceed_the_tokens_generated(smol_tokenizer):
    # the CoT is a prefix of the output: re-tokenizing its text may count more (a slow serve test saw 33 CoT
    # tokens for a 32-token reply); usage must never report more CoT tokens than were generated
    eng = Fake(stop_after=3)
    eng.tokenizer = smol_tokenizer
    eng.count_tokens = len   # over-counts: characters, not tokens
    (a,) = answer(eng, [Query(question="q", decoding=Decoding(max_tokens=3))])
    assert a.cot == "w w w" and a.output_tokens == 3 and a.cot_tokens == 3
    eng.count_tokens = lambda text: len(text.split())
    (b,) = answer(eng, [Query(question="q", decoding=Decoding(max_tokens=3))])
    assert b.cot_tokens == 3
    eng.count_tokens = lambda text: 1   # fewer is kept as counted
    (c,) = answer(eng, [Query(question="q", decoding=Decoding(max_tokens=3))])
    assert c.cot_tokens == 1


def test_served_budget_respects_max_tokens_and_forces_only_when_the_budget_cut():
    # issue 26 item 1 (the server: caps are max_tokens, limit_total): FORCE_ANSWER is 5 "tokens" for Fake
    prefix = len(FORCE_ANSWER.split())
    eng = Fake(stop_after=10)
    (g,) = generate_capped(eng, ["A"], [4], [8], limit_total=True)       # max_tokens ended the CoT: no forcing
    assert len(eng.calls) == 1 and g.num_tokens == 4 and FORCE_ANSWER not in g.text
    eng = Fake(stop_after=10)
    (g,) = generate_capped(eng, ["A"], [16], [10 ** 9], limit_total=True)   # a budget never reached
    assert len(eng.calls) == 1 and g.num_tokens == 10 and g.finish_reason == "stop"
    eng = Fake(stop_after=10)
    (g,) = generate_capped(eng, ["A"], [24], [4], limit_total=True)      # the budget cut: forced, within 24
    assert eng.calls[1][1] == [min(24, 24 - 4 - prefix)]
    assert g.text == "w w w w" + FORCE_ANSWER + "7}$" and g.num_tokens == 4 + prefix + 1 <= 24
    eng = Fake(stop_after=10)
    (g,) = generate_capped(eng, ["A"], [6], [4], limit_total=True)       # no room left for the answer line
    assert len(eng.calls) == 1 and g.num_tokens == 4 and g.finish_reason == "length"
    eng = Fake(stop_after=10)
    (g,) = generate_capped(eng, ["A"], [4], [4])                         # evaluate's methods: answer on top
    assert eng.calls[1][1] == [24] and g.num_tokens == 6


def test_a_stop_string_cuts_the_token_count_on_the_generated_ids(smol_tokenizer):
    reply = "3 + 4 = 7, so the answer is 7.\n\nUser: and 5 + 5?"
    ids = smol_tokenizer(reply, add_special_tokens=False)["input_ids"]

    class Real(Fake):
        def generate(self, prompts, caps, **kw):
            return [Generation(reply, len(ids), 1.0, "length", list(ids)) for _ in prompts]

    eng = Real(stop_after=0)
    eng.tokenizer = smol_tokenizer
    (a,) = answer(eng, [Query(question="q", decoding=Decoding(max_tokens=64, stop=("\n\nUser:",)))])
    kept = "3 + 4 = 7, so the answer is 7."
    assert a.text == kept and a.finish_reason == "stop"
    n = a.output_tokens
    assert 0 < n < len(ids) and smol_tokenizer.decode(ids[:n]) == kept   # exactly the tokens of the kept text
