"""Per-token surprisal (bits) under a causal LM, for texts of any length with memory bounded by a window.

The self-information scorer (:class:`tokenskip.compress.scorers.SelfInformationScorer`) calls these.
Every text starts with one start token (BOS, or EOS when there is none) so its first token gets a
prediction too. Surprisal of token ``t`` is ``-log2 p(t | start + tokens before t)`` (Selective Context,
Li et al. 2023), computed in float32 from the model's logits.

Three ways, chosen per text by :func:`token_surprisal`:

* **one pass** — a text of at most ``window - 1`` tokens is read whole; texts are batched (padded on the
  right, longest first) with at most ``window`` tokens of logits per forward pass;
* **streamed** — a longer text on a rotary-position model is read in blocks of ``window - context``
  tokens, each attending to a KV cache of the ``context`` tokens before it (a sliding cache of
  ``transformers``). Every token is read once and predicted with at least ``context`` tokens of left
  context. Positions run on past the model's trained length; rotary attention only sees the relative
  distance, which stays below ``window``;
* **windows** — a longer text on a model with absolute positions (e.g. GPT-2) is read in overlapping
  windows of ``window`` tokens that restart at position 0; each scores the tokens after its first
  ``context`` ones (every token read about twice).

Memory is O(window × vocabulary) for logits and O(context × layers) for the cache, whatever the text's
length.
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


def is_rotary(model) -> bool:
    """True when ``model`` encodes positions with rotary embeddings (RoPE), so streaming is exact in
    relative positions; from its config (``rope_parameters`` in transformers 5, ``rope_theta`` before)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return bool(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_theta", None))


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


def streamed(model, ids: list[int], start_id: int, window: int, context: int, device: str = "cpu") -> list[float]:
    """Surprisal of every token of ``ids`` read in blocks of ``window - context`` tokens over a sliding KV
    cache of ``context`` tokens (each token is predicted from ≥ ``context`` tokens of left context).

    Needs a rotary-position model (:func:`is_rotary`) and ``transformers`` ≥ 5 (``DynamicCache`` with
    ``DynamicSlidingWindowLayer`` layers).

    Returns:
        ``len(ids)`` floats (bits).
    """
    import torch
    from transformers import DynamicCache

    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    # one sliding layer per decoder layer, empty: it keeps the last `context` tokens' keys and values
    cache = DynamicCache(ddp_cache_data=[(None, None, torch.tensor(context + 1))] * cfg.num_hidden_layers)
    seq = [start_id] + list(ids)
    block = window - context
    out: list[float] = []
    with torch.inference_mode():
        for a in range(0, len(ids), block):
            chunk = seq[a:a + block]
            logits = model(input_ids=torch.tensor([chunk], device=device), past_key_values=cache,
                           use_cache=True).logits[0]
            targets = seq[a + 1:a + 1 + len(chunk)]
            out += _bits(logits[:len(targets)], targets)
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


def windowed(model, ids: list[int], start_id: int, pad_id: int, batch_size: int, window: int, context: int,
             device: str = "cpu") -> list[float]:
    """Surprisal of every token of ``ids`` from overlapping windows that restart at position 0 (for models
    with absolute positions); windows are read with :func:`one_pass`, one window of logits at a time.

    Returns:
        ``len(ids)`` floats (bits).
    """
    spans = windows(len(ids), window, context)
    bits = [0.0] * len(ids)
    for c, a, b in spans:
        row = one_pass(model, [ids[c:b]], start_id, pad_id, batch_size, window, device)[0]
        bits[a:b] = row[a - c:]
    return bits


def token_surprisal(model, rows: list[list[int]], start_id: int, pad_id: int, batch_size: int, window: int,
                    context: int, device: str = "cpu") -> list[list[float]]:
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

    Returns:
        ``len(rows)`` lists of floats, ``len(row)`` each.

    Raises:
        ValueError: ``window < 2`` or ``context`` outside ``(0, window)``.
    """
    if window < 2 or not 0 < context < window:
        raise ValueError(f"need window >= 2 and 0 < context < window, got window {window}, context {context}")
    short = [i for i, r in enumerate(rows) if len(r) <= window - 1]
    out: list[list[float]] = [[] for _ in rows]
    for i, bits in zip(short, one_pass(model, [rows[i] for i in short], start_id, pad_id, batch_size, window,
                                       device)):
        out[i] = bits
    rotary = is_rotary(model)
    for i, r in enumerate(rows):
        if len(r) > window - 1:
            out[i] = (streamed(model, r, start_id, window, context, device) if rotary
                      else windowed(model, r, start_id, pad_id, batch_size, window, context, device))
    return out
