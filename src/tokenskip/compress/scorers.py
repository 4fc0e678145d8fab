"""Token importance scorers: texts in, one importance score per *word* out (batched).

A word is a maximal run of non-whitespace characters of the CoT (``\\S+``); its character span is
kept so the pruner can rebuild the kept text with the original whitespace.

Scorers (higher score = more important = kept first):

* :class:`LLMLingua2Scorer` — keep-probability of an LLMLingua-2 token classifier (softmax of label 1),
  averaged over each word's sub-tokens (paper §3, reference code). Runs on transformers directly.
* :class:`SelfInformationScorer` — surprisal −log2 p(token | prefix) in bits from a causal LM, summed
  over each word's tokens (Selective Context, Li et al. 2023).
* :class:`RandomScorer` — seeded uniform scores, the control of every ablation.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_WORD = re.compile(r"\S+")
#: A word that ends a sentence: a preferred place to cut a text into encoder chunks.
_SENTENCE_END = re.compile(r"[.!?:;]['\")\]]*$")

SCORERS = ("self-information", "llmlingua2", "random")


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the whitespace-separated words of ``text``, in order."""
    return [m.span() for m in _WORD.finditer(text)]


@dataclass
class WordScores:
    """Per-word importance of one text.

    Attributes:
        text: the scored text.
        spans: ``(start, end)`` character span of each word (see :func:`word_spans`).
        scores: one float per word; higher = more important. Units depend on the scorer
            (probability for ``llmlingua2``, bits for ``self-information``, uniform [0, 1) for ``random``).
    """

    text: str
    spans: list[tuple[int, int]]
    scores: list[float]

    @property
    def words(self) -> list[str]:
        return [self.text[s:e] for s, e in self.spans]


class Scorer:
    """Interface: :meth:`score` maps ``N`` texts to ``N`` :class:`WordScores` (one score per word)."""

    name = "scorer"

    def score(self, texts: list[str]) -> list[WordScores]:
        spans = [word_spans(t) for t in texts]
        todo = [i for i, s in enumerate(spans) if s]
        out = [WordScores(t, [], []) for t in texts]
        if todo:
            scored = self._score_words([texts[i] for i in todo], [spans[i] for i in todo])
            for i, sc in zip(todo, scored):
                if len(sc) != len(spans[i]):
                    raise RuntimeError(f"{self.name}: {len(sc)} scores for {len(spans[i])} words")
                out[i] = WordScores(texts[i], spans[i], [float(x) for x in sc])
        return out

    def _score_words(self, texts: list[str], spans: list[list[tuple[int, int]]]) -> list[list[float]]:
        raise NotImplementedError


class RandomScorer(Scorer):
    """Uniform random word scores. Deterministic per (seed, text), independent of batch composition."""

    name = "random"

    def __init__(self, seed: int = 42):
        self.seed = int(seed)

    def _score_words(self, texts, spans):
        # random.Random hashes a str seed with SHA-512, so this is stable across processes (no PYTHONHASHSEED).
        out = []
        for t, sp in zip(texts, spans):
            rng = random.Random(f"{self.seed}\x00{t}")
            out.append([rng.random() for _ in sp])
        return out


def _char_to_word(text: str, spans: list[tuple[int, int]]) -> list[int]:
    owner = [-1] * len(text)
    for w, (s, e) in enumerate(spans):
        owner[s:e] = [w] * (e - s)
    return owner


class SelfInformationScorer(Scorer):
    """Word importance = summed surprisal (bits) of its tokens under a causal LM (Selective Context).

    Each text is scored alone, preceded by the model's BOS token (EOS when it has none) so the first
    token gets a prediction too. A text of up to ``max_length - 1`` tokens is read in one pass; a longer
    one (a reasoning trace of thousands of tokens) is read so that every token is predicted from at least
    ``overlap`` tokens of left context and memory is bounded by the window, not the text: streamed once over
    a KV cache of the start token and the last ``overlap`` tokens (RoPE models), or in overlapping windows that
    each restart with the start token (:mod:`tokenskip.compress.surprisal`). A token spanning several words
    (rare) splits its surprisal equally among them; whitespace-only tokens (newlines) belong to no word.

    Args:
        model: a ``transformers`` causal LM (eval mode), or an alias/path for
            :func:`tokenskip.engines.models.load_model`.
        tokenizer: its (fast) tokenizer; loaded with the model when ``model`` is a name.
        batch_size: short texts per forward pass (padded on the right, longest first; at most
            ``max_length`` tokens per pass).
        max_length: window in tokens, the most one forward pass reads; default: the model's
            ``max_position_embeddings``, capped at 2048.
        overlap: least left context (tokens) of every token of a longer text; default ``max_length // 2``
            (issue 24: at least half a window).
        device: torch device of the model.
        long_mode: ``"stream"`` (default: each token of a longer text read once, where the model's RoPE allows;
            about half the compute) or ``"windows"`` (restarting windows, each token read about twice).

    Raises:
        ValueError: no tokenizer, a slow tokenizer, no BOS/EOS token, ``overlap`` outside ``(0, max_length)``
            or an unknown ``long_mode``.
    """

    name = "self-information"

    def __init__(self, model, tokenizer=None, batch_size: int = 8, max_length: int | None = None,
                 overlap: int | None = None, device: str = "cpu", dtype: str = "auto", long_mode: str = "stream"):
        from tokenskip.compress.surprisal import check_long_mode

        self.long_mode = check_long_mode(long_mode)
        if isinstance(model, str):
            from tokenskip.engines.models import load_model

            self.model_name = model
            model, tok = load_model(model, dtype=dtype, device=device)
            tokenizer = tokenizer or tok
        else:
            self.model_name = getattr(model, "name_or_path", None) or type(model).__name__
        if tokenizer is None:
            raise ValueError("SelfInformationScorer needs the model's tokenizer")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("SelfInformationScorer needs a fast tokenizer (for character offsets)")
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, device
        self.batch_size = max(1, int(batch_size))
        limit = getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_length = int(max_length or min(limit, 2048))
        self.overlap = int(self.max_length // 2 if overlap is None else overlap)
        if self.max_length < 2 or not 0 < self.overlap < self.max_length:
            raise ValueError("need max_length >= 2 and 0 < overlap < max_length, "
                             f"got {self.max_length}, {self.overlap}")
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ValueError("tokenizer has neither a BOS nor an EOS token to start the text with")
        self.start_id = int(start)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start)

    def token_surprisal(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]], list[float]]]:
        """``(token_ids, char_offsets, surprisal_bits)`` of each text (no special tokens), in order.

        Raises:
            ValueError: the tokenizer returns no character offsets.
        """
        from tokenskip.compress.surprisal import token_surprisal

        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        ids_all, offs_all = enc["input_ids"], enc["offset_mapping"]
        bits = token_surprisal(self.model, ids_all, self.start_id, self.pad_id, self.batch_size, self.max_length,
                               self.overlap, self.device, self.long_mode)
        return [(ids, [tuple(o) for o in offs], b) for ids, offs, b in zip(ids_all, offs_all, bits)]

    def _score_words(self, texts, spans):
        out = []
        for text, sp, (_, offs, bits) in zip(texts, spans, self.token_surprisal(texts)):
            owner = _char_to_word(text, sp)
            scores = [0.0] * len(sp)
            for (s, e), b in zip(offs, bits):
                ws = {owner[c] for c in range(s, e) if owner[c] >= 0}
                for w in ws:
                    scores[w] += b / len(ws)
            out.append(scores)
        return out


def load_token_classifier(model, tokenizer=None):
    """A 2-label token classifier (LLMLingua-2 style) and its tokenizer, from objects or a name/path.

    Args:
        model: a ``transformers`` token-classification model, or a name/path to load one from.
        tokenizer: its tokenizer; loaded with the model when ``model`` is a name and none is given.

    Returns:
        ``(model, tokenizer, model_name)``; ``tokenizer`` may still be None when a model object came alone.

    Raises:
        ValueError: the model does not have exactly 2 labels (keep / drop).
    """
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    if isinstance(model, str):
        name = model
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
        model = AutoModelForTokenClassification.from_pretrained(model, num_labels=2)
    else:
        name = getattr(model, "name_or_path", None) or type(model).__name__
    if model.config.num_labels != 2:
        raise ValueError(f"{name}: expected a 2-label token classifier, got {model.config.num_labels} labels")
    return model, tokenizer, name


class LLMLingua2Scorer(Scorer):
    """LLMLingua-2 word importance: mean over a word's sub-tokens of P(label 1 = keep).

    Any Hugging Face token-classification model works (local folder or Hub id, e.g.
    ``microsoft/llmlingua-2-xlm-roberta-large-meetingbank``, docs/method.md step 3). A plain encoder
    without a classification head gets a random 2-label head (mechanics only, scores meaningless).
    Texts longer than the encoder's limit are cut into chunks of whole words, preferably after a word
    that ends a sentence or a line, each of at most ``max_length`` tokens including special tokens.

    Args:
        model: a ``transformers`` token-classification model, or a name/path to load one from.
        tokenizer: its fast tokenizer (loaded with the model when ``model`` is a name).
        batch_size: chunks per forward pass.
        max_length: encoder limit in tokens; default ``min(512, tokenizer.model_max_length)``.
        device: torch device.
    """

    name = "llmlingua2"

    def __init__(self, model, tokenizer=None, batch_size: int = 8, max_length: int | None = None,
                 device: str = "cpu"):
        model, tokenizer, self.model_name = load_token_classifier(model, tokenizer)
        if tokenizer is None or not getattr(tokenizer, "is_fast", False):
            raise ValueError("LLMLingua2Scorer needs the encoder's fast tokenizer (for word ids)")
        self.model, self.tokenizer, self.device = model.eval().to(device), tokenizer, device
        self.batch_size = max(1, int(batch_size))
        tok_max = tokenizer.model_max_length if tokenizer.model_max_length < 100_000 else 512
        self.max_length = int(max_length or min(512, tok_max))
        self.n_special = len(tokenizer("", add_special_tokens=True)["input_ids"])
        if self.max_length <= self.n_special + 1:
            raise ValueError(f"max_length {self.max_length} leaves no room for words")

    def chunk_words(self, words: list[str], breaks: list[bool] | None = None) -> list[tuple[int, int]]:
        """Cut ``words`` into ``[start, end)`` word ranges that each fit the encoder.

        A cut goes after the last sentence-ending word (``.``, ``?``, ``!``, ``:`` ...) that fits,
        else after the last word that fits. A single word longer than the limit is a chunk of its own
        and is truncated by the encoder (its score then comes from its first sub-tokens).
        ``breaks[k]`` overrides whether a cut after word ``k`` is preferred.
        """
        if breaks is None:
            breaks = [bool(_SENTENCE_END.search(w)) for w in words]
        budget = self.max_length - self.n_special
        ids = self.tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
        lengths = [max(1, len(x)) for x in ids]
        chunks, start = [], 0
        while start < len(words):
            total, end, last_break = 0, start, None
            while end < len(words) and (total + lengths[end] <= budget or end == start):
                total += lengths[end]
                end += 1
                if breaks[end - 1]:
                    last_break = end
            if end < len(words) and last_break is not None and last_break > start:
                end = last_break
            chunks.append((start, end))
            start = end
        return chunks

    def _score_words(self, texts, spans):
        import torch

        jobs = []  # (text index, first word, words of the chunk)
        for i, (text, sp) in enumerate(zip(texts, spans)):
            words = [text[s:e] for s, e in sp]
            # the end of a line counts as the end of a sentence when choosing cut points
            breaks = [bool(_SENTENCE_END.search(w)) or (k + 1 < len(sp) and "\n" in text[sp[k][1]:sp[k + 1][0]])
                      for k, w in enumerate(words)]
            for a, b in self.chunk_words(words, breaks=breaks):
                jobs.append((i, a, words[a:b]))
        probs: list[list[float | None]] = [[None] * len(sp) for sp in spans]
        with torch.inference_mode():
            for k in range(0, len(jobs), self.batch_size):
                batch = jobs[k:k + self.batch_size]
                enc = self.tokenizer([w for _, _, w in batch], is_split_into_words=True, truncation=True,
                                     max_length=self.max_length, padding=True, return_tensors="pt")
                logits = self.model(**{kk: v.to(self.device) for kk, v in enc.items()}).logits
                keep = torch.softmax(logits.float(), dim=-1)[..., 1].cpu()
                for r, (i, a, words) in enumerate(batch):
                    sums, counts = [0.0] * len(words), [0] * len(words)
                    for t, w in enumerate(enc.word_ids(r)):
                        if w is not None:
                            sums[w] += float(keep[r, t])
                            counts[w] += 1
                    seen = [s / c for s, c in zip(sums, counts) if c]
                    fill = sum(seen) / len(seen) if seen else 0.5  # words cut off by truncation
                    for w in range(len(words)):
                        probs[i][a + w] = sums[w] / counts[w] if counts[w] else fill
        return probs


def get_scorer(name: str, model=None, tokenizer=None, seed: int = 42, batch_size: int = 8,
               max_length: int | None = None, device: str = "cpu", dtype: str = "auto",
               long_mode: str = "stream") -> Scorer:
    """Build a scorer by name.

    Args:
        name: ``self-information``, ``llmlingua2`` or ``random``.
        model: model object or name/path (``self-information``: a causal LM, by default the target
            model; ``llmlingua2``: a token classifier, default
            ``microsoft/llmlingua-2-xlm-roberta-large-meetingbank``). Ignored by ``random``.
        tokenizer: the model's tokenizer when ``model`` is an object.
        seed: seed of the ``random`` scorer.
        batch_size, max_length, device, dtype, long_mode: see the scorer classes (``long_mode``: self-information).

    Raises:
        ValueError: unknown name, or ``self-information`` without a model.
    """
    if name == "random":
        return RandomScorer(seed)
    if name == "self-information":
        if model is None:
            raise ValueError("the self-information scorer needs a causal LM (model=...)")
        return SelfInformationScorer(model, tokenizer, batch_size=batch_size, max_length=max_length,
                                     device=device, dtype=dtype, long_mode=long_mode)
    if name == "llmlingua2":
        return LLMLingua2Scorer(model or "microsoft/llmlingua-2-xlm-roberta-large-meetingbank", tokenizer,
                                batch_size=batch_size, max_length=max_length, device=device)
    raise ValueError(f"unknown scorer {name!r}; expected one of {list(SCORERS)}")


class FixedScores(Scorer):
    """Scores computed elsewhere (a Ray actor pool), served for exactly the texts they were computed for.

    Args:
        scored: one :class:`WordScores` per text.
    Raises (from :meth:`score`): ``KeyError`` for a text that was not scored.
    """

    def __init__(self, scored: list[WordScores], name: str = "self-information"):
        self.name = name
        self.by_text = {w.text: w for w in scored}

    def score(self, texts: list[str]) -> list[WordScores]:
        return [self.by_text[t] for t in texts]


@dataclass(frozen=True)
class SelfInformationFactory:
    """Builds one :class:`SelfInformationScorer` inside a Ray actor (picklable: names and numbers)."""

    model: str
    dtype: str = "auto"
    device: str = "cpu"
    batch_size: int = 8

    def __call__(self) -> SelfInformationScorer:
        return SelfInformationScorer(self.model, batch_size=self.batch_size, device=self.device, dtype=self.dtype)


def score_shard(scorer: Scorer, payload: dict) -> list[list[float]]:
    """A Ray shard's task: the per-word scores (see :meth:`Scorer.score`) of ``payload["texts"]``."""
    return [w.scores for w in scorer.score(payload["texts"])]


def pooled_scores(pool, factory, parts: list[list[str]]):
    """Score each part (a list of texts) in a Ray actor pool (:func:`tokenskip.engines.ray_pool.map_shards` with
    the pool's :class:`~tokenskip.engines.ray_pool.PoolSettings`); yield ``(part index, FixedScores)`` as parts
    finish, in completion order. The word spans are recomputed here (:func:`word_spans`, the scorer's own)."""
    from tokenskip.engines.ray_pool import map_shards

    for k, scores in map_shards(pool, factory, score_shard, [{"texts": texts} for texts in parts]):
        texts = parts[k]
        yield k, FixedScores([WordScores(t, word_spans(t), [float(x) for x in sc]) for t, sc in zip(texts, scores)])


def part_scorers(name: str, parts: list[list[str]], model: str, dtype: str = "auto", device: str = "cpu",
                 batch_size: int = 8, seed: int = 42, pool=None):
    """``(part index, scorer)`` for each part (a list of texts): one scorer built here for every part (in order),
    or, with a Ray ``pool`` (:class:`~tokenskip.engines.ray_pool.PoolSettings`) and the self-information scorer,
    each part's scores from the actor pool (:func:`pooled_scores`, completion order). Other scorers ignore
    ``pool`` (random needs no model; LLMLingua-2's encoder is small)."""
    if name == "self-information" and pool is not None:
        yield from pooled_scores(pool, SelfInformationFactory(model, dtype, device, batch_size), parts)
        return
    if name == "self-information":
        from tokenskip.engines.models import load_model

        lm, tok = load_model(model, dtype=dtype, device=device)
        scorer = get_scorer(name, model=lm, tokenizer=tok, batch_size=batch_size, device=device)
        scorer.model_name = model
    else:
        scorer = get_scorer(name, model=model or None, seed=seed, batch_size=batch_size, device=device, dtype=dtype)
    for k in range(len(parts)):
        yield k, scorer
