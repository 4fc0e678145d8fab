"""CoT compression (paper §3): score token importance, then prune each CoT to ratios γ.

Public API::

    from tokenskip.compress import compress, compress_batch, get_scorer
    tok = tokenskip.engines.models.load_tokenizer("smollm2-135m-instruct")
    res = compress(cot, 0.7, "self-information", tok)      # CompressionResult
    res.text, res.achieved_ratio, res.overshoot

γ is kept ÷ original tokens in the target tokenizer (see :mod:`tokenskip.compress.prune`).
"""

from __future__ import annotations

from tokenskip.compress.prune import (
    PROTECT_KINDS,
    CompressionResult,
    answer_numbers,
    answer_numbers_kept,
    count_tokens,
    equation_spans,
    protected_spans,
    prune,
    rebuild,
    term_spans,
)
from tokenskip.compress.scorers import (
    SCORERS,
    LLMLingua2Scorer,
    RandomScorer,
    Scorer,
    SelfInformationScorer,
    WordScores,
    get_scorer,
    word_spans,
)
from tokenskip.task.prompts import validate_ratio

__all__ = [
    "PROTECT_KINDS", "SCORERS", "CompressionResult", "LLMLingua2Scorer", "RandomScorer", "Scorer",
    "SelfInformationScorer", "WordScores", "answer_numbers", "answer_numbers_kept", "compress",
    "compress_batch", "count_tokens", "equation_spans", "get_scorer", "protected_spans", "prune", "rebuild",
    "term_spans", "word_spans",
]


def _as_scorer(scorer, tokenizer, scorer_kwargs: dict) -> Scorer:
    if isinstance(scorer, Scorer):
        return scorer
    if scorer == "self-information" and "model" not in scorer_kwargs:
        # default: the target model itself, found where its tokenizer was loaded from
        scorer_kwargs = {**scorer_kwargs, "model": tokenizer.name_or_path}
    return get_scorer(scorer, **scorer_kwargs)


def compress_batch(texts: list[str], ratios, scorer, tokenizer, protect: bool = True,
                   protect_kinds=PROTECT_KINDS, keep_newlines: bool = True, prefer_kinds=(),
                   questions: list[str] | None = None, **scorer_kwargs) -> list[list[CompressionResult]]:
    """Compress ``N`` CoTs to each γ in ``ratios``; every text is scored once.

    Args:
        texts: the CoTs.
        ratios: γ values in (0, 1].
        scorer: a :class:`Scorer` or a name (``self-information``, ``llmlingua2``, ``random``); a
            name is built with :func:`get_scorer` (``scorer_kwargs`` passed on; ``self-information``
            defaults to the model the tokenizer belongs to).
        tokenizer: the target model's tokenizer (token counts for γ).
        protect, protect_kinds, keep_newlines, prefer_kinds: see :func:`~tokenskip.compress.prune.prune`.
        questions: the question of each CoT (``N``), for the ``terms`` span kind; ``None``: no terms.

    Returns:
        ``N`` lists of ``len(ratios)`` :class:`CompressionResult`.

    Raises:
        ValueError: a γ outside (0, 1] (checked before any scoring), an unknown scorer or kind, or
            ``questions`` not one per text.
    """
    if questions is not None and len(questions) != len(texts):
        raise ValueError(f"{len(questions)} questions for {len(texts)} CoTs")
    gammas = [validate_ratio(r) for r in ([ratios] if isinstance(ratios, (int, float, str)) else ratios)]
    if not gammas:
        raise ValueError("no compression ratio γ given")
    sc = _as_scorer(scorer, tokenizer, scorer_kwargs)
    if all(g == 1.0 for g in gammas):
        scored = [WordScores(t, word_spans(t), [0.0] * len(word_spans(t))) for t in texts]
    else:
        scored = sc.score(list(texts))
    qs = questions if questions is not None else [None] * len(scored)
    return [prune(s, gammas, tokenizer, scorer=sc.name, protect=protect, protect_kinds=protect_kinds,
                  keep_newlines=keep_newlines, prefer_kinds=prefer_kinds, question=q) for s, q in zip(scored, qs)]


def compress(text: str, ratio: float, scorer, tokenizer, **kwargs) -> CompressionResult:
    """Compress one CoT to ratio γ (see :func:`compress_batch` for the arguments and errors)."""
    validate_ratio(ratio)
    return compress_batch([text], [ratio], scorer, tokenizer, **kwargs)[0][0]
