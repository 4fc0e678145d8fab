"""Decoding stops where training ends a turn (issue 10, "a model that never stops").

One rule (:func:`tokenskip.task.prompts.stop_rule`) gives every backend its stop ids and strings: the
generation config's EOS, the tokenizer's EOS and the chat template's end of turn — the text training
appends (:func:`tokenskip.task.prompts.end_of_turn`) — plus ``--stop`` strings.
"""

from __future__ import annotations

import copy

import pytest

from conftest import LLAMA3_TEMPLATE, make_tiny_llama
from tokenskip.engines import cut_at_stop, end_of_turn_ids
from tokenskip.engines.hf import HFBackend
from tokenskip.engines.vllm import finish_generation, sampling_kwargs
from tokenskip.finetune.sft_rows import tokenize_example
from tokenskip.task.prompts import StopRule, build_prompt, end_of_turn, stop_rule

ENDOFTEXT, IM_START, IM_END = 0, 1, 2  # SmolLM2 tokenizer ids


@pytest.fixture()
def qwen_like_tokenizer(smol_tokenizer):
    """SmolLM2's ChatML tokenizer with EOS <|endoftext|> (id 0), as Qwen2.5 base / Qwen2.5-Math ship."""
    tok = copy.deepcopy(smol_tokenizer)
    tok.eos_token = "<|endoftext|>"
    assert (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")) == (ENDOFTEXT, IM_END)
    return tok


def test_token_ids_from_eos_and_end_of_turn(smol_tokenizer, qwen_like_tokenizer):
    assert stop_rule(qwen_like_tokenizer, ENDOFTEXT) == StopRule((ENDOFTEXT, IM_END), ())
    assert stop_rule(qwen_like_tokenizer, [ENDOFTEXT, 7]) == StopRule((ENDOFTEXT, 7, IM_END), ())
    assert stop_rule(qwen_like_tokenizer, None).token_ids == (ENDOFTEXT, IM_END)
    assert stop_rule(smol_tokenizer, IM_END).token_ids == (IM_END,)  # no duplicates
    assert end_of_turn_ids(ENDOFTEXT, qwen_like_tokenizer) == [ENDOFTEXT, IM_END]


def test_training_appends_what_decoding_stops_at(qwen_like_tokenizer):
    eot = end_of_turn(qwen_like_tokenizer)
    ex = tokenize_example(qwen_like_tokenizer, "prompt", "The final answer is 4.", eot)
    assert ex["input_ids"][-1] == IM_END
    assert ex["input_ids"][-1] in stop_rule(qwen_like_tokenizer, ENDOFTEXT).token_ids


def test_multi_token_end_of_turn_becomes_a_stop_string(smol_tokenizer):
    llama = copy.deepcopy(smol_tokenizer)
    llama.chat_template = LLAMA3_TEMPLATE  # <|eot_id|> is not one token in SmolLM2's vocabulary
    assert stop_rule(llama, None) == StopRule((IM_END,), ("<|eot_id|>",))
    plain = copy.deepcopy(smol_tokenizer)
    plain.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n### End\n{% endfor %}"
    assert stop_rule(plain, None, ["\n\nUser:"]).strings == ("\n### End", "\n\nUser:")
    with pytest.raises(ValueError, match="non-empty"):
        stop_rule(plain, None, [""])


@pytest.mark.parametrize("text,strings,cut,hit", [
    ("OK.\n\nUser: Next", ["\n\nUser:"], "OK.", True),
    ("OK. User: more", ["User:", " more"], "OK. ", True),  # the earliest stop string wins
    ("no stop here", ["User:"], "no stop here", False),
    ("User: at once", ["User:"], "", True),
])
def test_cut_at_stop(smol_tokenizer, text, strings, cut, hit):
    ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    new_text, new_ids, found = cut_at_stop(text, ids, strings, smol_tokenizer)
    assert (new_text, found) == (cut, hit)
    assert new_ids == ids[:len(new_ids)]
    # the tokens kept are exactly those whose text lies before the cut (" User" straddles it in case 2)
    assert cut.startswith(smol_tokenizer.decode(new_ids))
    assert len(new_ids) == len(ids) or len(smol_tokenizer.decode(ids[:len(new_ids) + 1])) > len(cut)


def test_vllm_stop_logic_matches_the_shared_rule(qwen_like_tokenizer):
    rule = stop_rule(qwen_like_tokenizer, ENDOFTEXT, ["\n\nUser:"])
    kw = sampling_kwargs(rule, 64)
    assert kw["stop_token_ids"] == [ENDOFTEXT, IM_END] and kw["stop"] == ["\n\nUser:"] and kw["max_tokens"] == 64
    assert "stop" not in sampling_kwargs(stop_rule(qwen_like_tokenizer, ENDOFTEXT), 8)
    # greedy unless a temperature > 0 is given; then nucleus top_p too (generate --samples, the server)
    assert (kw["temperature"], "top_p" in kw) == (0.0, False)
    hot = sampling_kwargs(rule, 64, temperature=0.7, top_p=0.9)
    assert (hot["temperature"], hot["top_p"], hot["stop_token_ids"]) == (0.7, 0.9, [ENDOFTEXT, IM_END])
    assert sampling_kwargs(rule, 64, temperature=0.0, top_p=0.5) == kw
    ok = qwen_like_tokenizer("OK.", add_special_tokens=False)["input_ids"]
    g = finish_generation(ok + [IM_END], "stop", rule, qwen_like_tokenizer, 0.5)  # vLLM keeps the stop token
    assert (g.text, g.token_ids, g.num_tokens, g.finish_reason) == ("OK.", ok, len(ok), "stop")
    more = qwen_like_tokenizer("OK.\n\nUser: hi", add_special_tokens=False)["input_ids"]
    g = finish_generation(more, "stop", rule, qwen_like_tokenizer, 0.5)  # a stop string: text and ids cut
    assert (g.text, g.finish_reason) == ("OK.", "stop") and g.token_ids == more[:len(g.token_ids)]
    g = finish_generation(ok, "length", rule, qwen_like_tokenizer, 0.5)
    assert (g.text, g.finish_reason) == ("OK.", "length")


@pytest.fixture()
def never_stopping_model_dir(tmp_path, smol_tokenizer, qwen_like_tokenizer):
    """A tiny random model folder whose EOS (config, generation config, tokenizer) is <|endoftext|> while
    its chat template ends turns with <|im_end|>. Its <|im_end|> output row copies (×1.01) that of a
    token it says a few tokens in, so greedy decoding emits <|im_end|> after some text and, with EOS
    only, runs on past it."""
    import torch

    model = make_tiny_llama(smol_tokenizer)
    prompt = build_prompt(qwen_like_tokenizer, "Say OK.")
    ids = torch.tensor([qwen_like_tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        said = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None,
                              pad_token_id=ENDOFTEXT)[0, ids.shape[1]:].tolist()
        later = next(t for j, t in enumerate(said) if j >= 3 and t not in said[:j])
        model.lm_head.weight[IM_END] = model.lm_head.weight[later] * 1.01
    model.config.eos_token_id = model.generation_config.eos_token_id = ENDOFTEXT
    model.save_pretrained(tmp_path / "m")
    qwen_like_tokenizer.save_pretrained(tmp_path / "m")
    return str(tmp_path / "m"), prompt


def test_hf_generation_stops_at_end_of_turn(never_stopping_model_dir):
    folder, prompt = never_stopping_model_dir
    backend = HFBackend(folder, show_progress=False)
    assert backend.tokenizer.eos_token_id == ENDOFTEXT and backend.model.generation_config.eos_token_id == ENDOFTEXT
    assert backend.stop_ids == [ENDOFTEXT, IM_END]
    (g,) = backend.generate([prompt], 40)
    # what the old rule (EOS only) produced: <|im_end|> then an invented next turn, up to the cap
    backend.stop = StopRule((ENDOFTEXT,))
    backend.stop_ids = [ENDOFTEXT]
    (runaway,) = backend.generate([prompt], 40)
    assert runaway.num_tokens == 40 and runaway.finish_reason == "length" and IM_END in runaway.token_ids
    k = runaway.token_ids.index(IM_END)
    assert (g.finish_reason, g.token_ids, g.num_tokens) == ("stop", runaway.token_ids[:k], k)
    assert IM_END not in g.token_ids and 0 < g.num_tokens < 40
    assert g.text == backend.tokenizer.decode(runaway.token_ids[:k], skip_special_tokens=True) != ""


def test_hf_stop_strings(never_stopping_model_dir):
    folder, prompt = never_stopping_model_dir
    base = HFBackend(folder, show_progress=False)
    base.stop, base.stop_ids = StopRule((ENDOFTEXT,)), [ENDOFTEXT]
    (full,) = base.generate([prompt], 30)
    text = full.text
    stop = text[len(text) // 2:len(text) // 2 + 3]  # a piece from the middle of the free run
    assert stop.strip() and text.find(stop) > 0
    cut = HFBackend(folder, show_progress=False, stop=[stop])
    assert cut.stop == StopRule((ENDOFTEXT, IM_END), (stop,))
    cut.stop, cut.stop_ids = StopRule((ENDOFTEXT,), (stop,)), [ENDOFTEXT]  # only the string, on the free run
    (g,) = cut.generate([prompt], 30)
    assert g.text == text[:text.find(stop)] and g.finish_reason == "stop"
    assert g.token_ids == full.token_ids[:len(g.token_ids)] and g.num_tokens == len(g.token_ids)
