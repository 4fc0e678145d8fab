"""Per-token surprisal (bits) under a causal LM, for texts of any length with memory bounded by a window.

The self-information scorer (:class:`tokenskip.compress.scorers.SelfInformationScorer`) calls these.
Every text starts with one start token (BOS, or EOS when there is none) so its first token gets a
prediction too. Surprisal of token ``t`` is ``-log2 p(t | start + tokens before t)`` (Selective Context,
Li et al. 2023), computed in float32 from the model's logits.

Two ways, chosen per text by :func:`token_surprisal`:

* **one pass** — a text of at most ``window - 1`` tokens is read whole; texts are batched (padded on the
  right, longest first) with at most ``window`` tokens per forward pass;
* **windows** — a longer text (a reasoning trace of thousands of tokens) is read in overlapping windows
  of ``window`` tokens, each starting with the start token at position 0: a window re-reads the
  ``context`` tokens before the ones it scores, so every token is predicted from at least ``context``
  tokens of left context, and each token is read about ``window / (window - context)`` times (twice at
  the default half-window context). Logits are kept for the scored tokens only.

* **streamed** (``long_mode="stream"``, the default where the model allows it) — the same left context with
  each token read once: the text is fed in blocks of ``window - 1 - context`` tokens over a KV cache that keeps
  the start token (the "attention sink" of Xiao et al. 2023, StreamingLLM) and the last ``context`` tokens; the
  kept keys are re-rotated by the number of tokens dropped, so every token sits at its true distances from
  its context and the sink right before that context, as in a window (RoPE scores depend on distances only),
  and no position exceeds ``window``. Each token attends to the sink and ``context`` to ``window - 2`` tokens
  before it; unlike a restarted window, the context's keys and values are the ones computed with its own
  (longer) left context. Needs a model whose keys are rotated by rotate-half RoPE over the whole head, without
  sliding-window attention (:func:`rope_frequencies`: Llama, Qwen2/3, ...); others fall back to windows. About
  half the compute of windows at the default context.

Why the sink? Measured on a 4,155-token trace with SmolLM2-135M (2048-token window, 1024 of context), streamed
blocks over a cache that had dropped the text's first tokens *including the start token* scored far from the
full-context pass (rank correlation 0.86, +0.64 bits per token; the model leans on its first token). With the
start token kept (this mode; float32, tokens past the first window): rank correlation 0.994 with the full pass,
0.165 bits mean absolute difference, against 0.996 and 0.138 bits for restarting windows, in about half their
time (docs/reasoning.md).

Memory is O(window × vocabulary) for logits, whatever the text's length.
"""

from __future__ import annotations

import math

#: Rows of logits turned into float32 at a time (bounds the float copy of a block's logits).
_CE_ROWS = 256


def _bits(logits, targets) -> list[float]:
    """Surprisal in bits of ``targets`` (``[n]`` token ids) under ``logits`` (``[n, vocab]``)."""
    import torch

    out: list[float] = []
    tgt = torch.as_tensor(targets, dtype=torch.long, device=logits.device)
    for s in range(0, len(targets), _CE_ROWS):
        nll = torch.nn.functional.cross_entropy(logits[s:s + _CE_ROWS].float(), tgt[s:s + _CE_ROWS],
                                                reduction="none")
        out += (nll / math.log(2.0)).tolist()
    return out


def one_pass(model, rows: list[list[int]], start_id: int, pad_id: int, batch_size: int, window: int,
             device: str = "cpu") -> list[list[float]]:
    """Surprisal of every token of each row (each ≤ ``window - 1`` tokens), read whole.

    Rows are sorted longest first and batched: at most ``batch_size`` rows and ``window`` tokens of
    logits per forward pass (right padding, which causal attention never sees).

    Returns:
        One list of ``len(row)`` floats (bits) per row, in the order given.
    """
    import torch

    out: list[list[float]] = [[] for _ in rows]
    order = sorted((i for i in range(len(rows)) if rows[i]), key=lambda i: -len(rows[i]))
    k = 0
    while k < len(order):
        width = len(rows[order[k]]) + 1
        n = max(1, min(batch_size, window // width))
        batch = order[k:k + n]
        k += n
        inp = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            inp[r, :len(rows[i]) + 1] = torch.tensor([start_id] + rows[i], dtype=torch.long)
            mask[r, :len(rows[i]) + 1] = 1
        with torch.inference_mode():
            logits = model(input_ids=inp.to(device), attention_mask=mask.to(device)).logits
            for r, i in enumerate(batch):
                out[i] = _bits(logits[r, :len(rows[i])], rows[i])
        del logits
    return out


def windows(n: int, window: int, context: int) -> list[tuple[int, int, int]]:
    """Overlapping windows over ``n`` tokens: ``(context_start, score_start, end)`` token indices.

    The first window is ``start + tokens[0:window-1]``; each later one re-reads ``context`` tokens and
    scores the ones after them, so every token is scored exactly once.
    """
    first = min(n, window - 1)
    out = [(0, 0, first)]
    a = first
    while a < n:
        c = a - context
        b = min(n, c + window - 1)
        out.append((c, a, b))
        a = b
    return out


def windowed(model, ids: list[int], start_id: int, window: int, context: int, device: str = "cpu") -> list[float]:
    """Surprisal of every token of ``ids`` from the overlapping :func:`windows`, one window per forward pass
    (logits only for the tokens a window scores, where the model takes ``logits_to_keep``).

    Returns:
        ``len(ids)`` floats (bits).
    """
    import inspect

    import torch

    keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
    bits = [0.0] * len(ids)
    for c, a, b in windows(len(ids), window, context):
        row = [start_id] + ids[c:b]
        n = b - a  # scored tokens: the last n of the row, predicted by the n positions before them
        with torch.inference_mode():
            if keep_arg:
                logits = model(input_ids=torch.tensor([row], device=device), logits_to_keep=n + 1).logits[0, :n]
            else:
                logits = model(input_ids=torch.tensor([row], device=device)).logits[0, -n - 1:-1]
            bits[a:b] = _bits(logits, ids[a:b])
        del logits
    return bits


#: The ways to read a text longer than the window (module doc).
LONG_MODES = ("stream", "windows")


def check_long_mode(long_mode: str) -> str:
    """``long_mode`` itself. Raises: ValueError naming the accepted values for any other."""
    if long_mode not in LONG_MODES:
        raise ValueError(f"long_mode must be one of {LONG_MODES}, got {long_mode!r}")
    return long_mode


#: RoPE variants whose frequencies do not depend on the text's length (a fixed rotation per position).
_STATIC_ROPE = {"default", "linear", "llama3", "yarn", "longrope"}
#: Model types whose attention applies rotate-half RoPE to the whole head after any key norm (cached keys rotated).
_ROPE_MODELS = {"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "granite", "olmo2"}


def rope_frequencies(model):
    """The RoPE inverse frequencies (float32, ``[head_dim / 2]``) of a model the streamed mode can re-rotate, else None.

    None for a model type outside a known list of rotate-half RoPE families, a length-dependent RoPE (dynamic NTK),
    partial rotary dimensions, or sliding-window attention.
    """
    cfg = getattr(model, "config", None)
    rot = getattr(getattr(model, "model", None), "rotary_emb", None)
    if cfg is None or getattr(cfg, "model_type", None) not in _ROPE_MODELS or rot is None:
        return None
    freq = getattr(rot, "inv_freq", None)
    if freq is None or getattr(rot, "rope_type", "default") not in _STATIC_ROPE:
        return None
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if freq.numel() * 2 != head_dim:
        return None
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return None  # windowed attention (Mistral; Qwen2 only with use_sliding_window)
    return freq.detach().float().cpu()


def _shift_keys(keys, freq, delta: int):
    """``keys`` (``[batch, heads, n, head_dim]``, rotate-half RoPE) moved ``delta`` positions (float32 rotation)."""
    import torch

    ang = freq.to(keys.device) * float(delta)
    cos, sin = torch.cat((ang, ang)).cos(), torch.cat((ang, ang)).sin()
    k = keys.float()
    half = k.shape[-1] // 2
    rot = torch.cat((-k[..., half:], k[..., :half]), dim=-1)
    return (k * cos + rot * sin).to(keys.dtype)


def streamed(model, ids: list[int], start_id: int, window: int, context: int, freq, device: str = "cpu") -> list[float]:
    """Surprisal of every token of ``ids``, each read once over a sink + ``context``-token KV cache (module doc).

    Args:
        freq: :func:`rope_frequencies` of ``model``.

    Returns:
        ``len(ids)`` floats (bits).

    Raises:
        ValueError: ``window - 1 - context < 1`` (no room for a block).
    """
    import torch
    from transformers import DynamicCache

    block = window - 1 - context
    if block < 1:
        raise ValueError(f"streamed scoring needs window - 1 - context >= 1, got window {window}, context {context}")
    bits = [0.0] * len(ids)
    kv, carry, a = None, None, 0
    while a < len(ids):
        b = min(len(ids), a + (window - 1 if kv is None else block))
        inp = torch.tensor([([start_id] if kv is None else []) + ids[a:b]], device=device)
        with torch.inference_mode():
            out = model(input_ids=inp, past_key_values=None if kv is None else DynamicCache(kv), use_cache=True)
            logits = out.logits[0]
            if carry is not None:  # the previous block's last row predicts this block's first token
                logits = torch.cat((carry, logits))
            bits[a:b] = _bits(logits[:b - a], ids[a:b])
            carry = logits[b - a:b - a + 1].clone()
            kv = []
            for layer in out.past_key_values.layers:
                k, v = layer.keys, layer.values
                drop = k.shape[2] - 1 - context
                if drop > 0:
                    k = torch.cat((k[:, :, :1], _shift_keys(k[:, :, 1 + drop:], freq, -drop)), dim=2)
                    v = torch.cat((v[:, :, :1], v[:, :, 1 + drop:]), dim=2)
                kv.append((k, v))
        del out, logits
        a = b
    return bits


def token_surprisal(model, rows: list[list[int]], start_id: int, pad_id: int, batch_size: int, window: int,
                    context: int, device: str = "cpu", long_mode: str = "stream") -> list[list[float]]:
    """Surprisal (bits) of every token of each row of token ids, whatever its length (see the module doc).

    Args:
        model: a ``transformers`` causal LM in eval mode.
        rows: token ids of each text, without special tokens.
        start_id: the token put before every text (BOS, else EOS).
        pad_id: padding id of batched one-pass rows.
        batch_size: rows per one-pass forward (also capped by ``window`` tokens per forward).
        window: most tokens one forward pass reads (a row of up to ``window - 1`` tokens is read whole).
        context: left context (tokens) of every token of a longer text, ``0 < context < window``.
        device: torch device of the model.
        long_mode: ``"stream"`` (each token of a longer text read once; windows where the model's RoPE cannot be
            re-rotated or ``context > window - 2``) or ``"windows"`` (restarting windows).

    Returns:
        ``len(rows)`` lists of floats, ``len(row)`` each.

    Raises:
        ValueError: ``window < 2``, ``context`` outside ``(0, window)`` or an unknown ``long_mode``.
    """
    if window < 2 or not 0 < context < window:
        raise ValueError(f"need window >= 2 and 0 < context < window, got window {window}, context {context}")
    check_long_mode(long_mode)
    freq = rope_frequencies(model) if long_mode == "stream" and context <= window - 2 else None
    short = [i for i, r in enumerate(rows) if len(r) <= window - 1]
    out: list[list[float]] = [[] for _ in rows]
    for i, bits in zip(short, one_pass(model, [rows[i] for i in short], start_id, pad_id, batch_size, window,
                                       device)):
        out[i] = bits
    for i, r in enumerate(rows):
        if len(r) > window - 1:
            out[i] = (windowed(model, r, start_id, window, context, device) if freq is None
                      else streamed(model, r, start_id, window, context, freq, device))
    return out
