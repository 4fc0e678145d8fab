from tokenskip.engines.hf import HFBackend
from tokenskip.task.prompts import build_prompt


def test_batched_equals_single_greedy(smol_tokenizer, tiny_model):
    qs = ["What is 2+3?", "A farmer has 17 sheep and buys 5 more. How many sheep now?", "Hi", "Compute 12*12."]
    prompts = [build_prompt(smol_tokenizer, q) for q in qs]
    batched = HFBackend(hf_model=tiny_model, hf_tokenizer=smol_tokenizer, batch_size=4, show_progress=False)
    single = HFBackend(hf_model=tiny_model, hf_tokenizer=smol_tokenizer, latency_mode="single", show_progress=False)
    a = batched.generate(prompts, 12)
    b = single.generate(prompts, 12)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert all(g.num_tokens == len(g.token_ids) for g in a)
    assert all(g.num_tokens <= 12 for g in a)
    # per-prompt caps cut exactly
    c = batched.generate(prompts, [3, 5, 1, 12])
    assert [g.num_tokens for g in c] == [min(3, a[0].num_tokens), min(5, a[1].num_tokens), min(1, a[2].num_tokens),
                                         a[3].num_tokens]
    assert c[0].token_ids == a[0].token_ids[:c[0].num_tokens]
