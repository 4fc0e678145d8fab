"""Decoding settings read once from the model's ``generation_config.json`` and given to every backend.

The reference decodes greedily with the model's own generation config, so Qwen2.5-Instruct's
``repetition_penalty: 1.05`` applies (HF ``generate`` applies it under greedy decoding too;
the reference code; docs/method.md). vLLM builds ``SamplingParams`` itself and would drop it, so
the same :class:`DecodingSettings` are mapped to HF ``generate`` kwargs and to ``SamplingParams``
kwargs here, in one place, and the two backends decode alike.

Sampling fields (temperature, top_p, top_k) are not read: every backend decodes greedily.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodingSettings:
    """Greedy-decoding settings that change outputs.

    Attributes:
        repetition_penalty: CTRL-style penalty (> 1 discourages repeats; 1.0 = off), from
            ``generation_config.repetition_penalty``.
        min_new_tokens: end-of-turn is suppressed before this many new tokens (0 = off).
    """

    repetition_penalty: float = 1.0
    min_new_tokens: int = 0

    def hf_kwargs(self) -> dict:
        """Keyword arguments for transformers ``generate`` (explicit, so they hold whatever the config says)."""
        return {"repetition_penalty": self.repetition_penalty, "min_new_tokens": self.min_new_tokens or None}

    def vllm_kwargs(self) -> dict:
        """Keyword arguments for vLLM ``SamplingParams``."""
        return {"repetition_penalty": self.repetition_penalty, "min_tokens": self.min_new_tokens}

    def to_dict(self) -> dict:
        return asdict(self)


def decoding_from_generation_config(gen_config) -> DecodingSettings:
    """:class:`DecodingSettings` from a ``transformers.GenerationConfig`` (``None``: the defaults).

    Settings vLLM cannot reproduce (``no_repeat_ngram_size``, ``bad_words_ids``) are logged and ignored
    by every backend alike.
    """
    if gen_config is None:
        return DecodingSettings()
    for unsupported in ("no_repeat_ngram_size", "bad_words_ids", "encoder_repetition_penalty"):
        v = getattr(gen_config, unsupported, None)
        if v not in (None, 0, 1.0, []):
            logger.warning("generation_config.%s=%r is ignored (not every backend supports it)", unsupported, v)
    rp = getattr(gen_config, "repetition_penalty", None)
    mn = getattr(gen_config, "min_new_tokens", None)
    return DecodingSettings(repetition_penalty=float(rp) if rp is not None else 1.0,
                            min_new_tokens=int(mn) if mn else 0)


def read_decoding_settings(model_dir: str) -> DecodingSettings:
    """:class:`DecodingSettings` from ``model_dir/generation_config.json`` (defaults when it has none).

    Raises:
        ValueError: the file exists but holds an invalid value (e.g. a penalty ≤ 0).
    """
    from transformers import GenerationConfig

    try:
        gc = GenerationConfig.from_pretrained(model_dir)
    except OSError:  # no generation_config.json
        return DecodingSettings()
    s = decoding_from_generation_config(gc)
    if s.repetition_penalty <= 0:
        raise ValueError(f"{model_dir}/generation_config.json: repetition_penalty must be > 0, got "
                         f"{s.repetition_penalty}")
    return s
