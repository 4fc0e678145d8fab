"""Budget mode: pick γ per question so that its CoT fits a token budget N.

TokenSkip controls the *ratio* γ, while an application usually has a *budget* (at most N CoT tokens). A
small regressor predicts how long the model's original (γ = 1) CoT for a question would be; then

    γ = N / predicted original CoT tokens, clipped to the adapter's trained γ range [min γ, 1.0],

and decoding is capped at N tokens (a CoT still running at N gets the answer line forced, as in the
truncation baseline), so the CoT never exceeds the budget.

The regressor is ridge regression (closed form, numpy) of ``log(1 + CoT tokens)`` on cheap text
features of the question (:func:`question_features`), fitted on the original CoTs that
``tokenskip generate`` wrote (``predictions.jsonl`` rows with ``question`` and ``cot_tokens``). A share of
the questions is held out and the fit reports its error on them (mean absolute error in tokens, and the
same for the constant "mean length" predictor, so the gain is visible).

``tokenskip fit-length --cots W/generate/predictions.jsonl --out W/length_model.json`` fits and saves it;
``tokenskip evaluate --method budget`` and ``tokenskip serve`` load it (``--length-model``; a
``predictions.jsonl`` there is fitted on the fly).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from tokenskip.contract.config import add_dataclass_args, dataclass_from_args
from tokenskip.contract.console import say
from tokenskip.contract.io import DataError, iter_jsonl, read_json, write_json_atomic

logger = logging.getLogger(__name__)

FEATURES = ("log_words", "log_numbers", "sentences", "log_max_number", "operations", "bias")
_NUM = re.compile(r"\d[\d,]*(?:\.\d+)?")
_OPS = re.compile(r"\b(?:each|per|every|times|twice|half|percent|total|more|less|left|remaining)\b|%", re.I)


def question_features(question: str) -> list[float]:
    """Feature vector of a question, in the order of :data:`FEATURES`.

    ``log_words`` = log(1 + words); ``log_numbers`` = log(1 + numbers written in it); ``sentences`` =
    sentence count; ``log_max_number`` = log10(1 + largest number); ``operations`` = count of words that
    usually mean an arithmetic step ("each", "per", "twice", "%"...); ``bias`` = 1.
    """
    nums = [n.replace(",", "") for n in _NUM.findall(question)]
    values = []
    for n in nums:
        try:
            values.append(float(n))
        except ValueError:
            continue
    sentences = max(1, len([s for s in re.split(r"[.?!]+(?:\s|$)", question) if s.strip()]))
    return [math.log1p(len(question.split())), math.log1p(len(nums)), float(sentences),
            math.log10(1 + max(values, default=0.0)), float(len(_OPS.findall(question))), 1.0]


@dataclass
class LengthModel:
    """A fitted predictor of the original CoT length (tokens) of a question.

    Attributes:
        weights: ridge coefficients on :func:`question_features` (target: log(1 + CoT tokens)).
        metrics: held-out evaluation (``n_train``, ``n_heldout``, ``mae_tokens``, ``mae_tokens_mean_baseline``,
            ``mean_cot_tokens``).
    """

    weights: list[float]
    features: tuple[str, ...] = FEATURES
    metrics: dict = field(default_factory=dict)

    def predict(self, question: str) -> float:
        """Predicted original CoT tokens (≥ 1) of ``question``."""
        z = sum(w * x for w, x in zip(self.weights, question_features(question)))
        return max(1.0, math.expm1(min(z, 20.0)))

    def ratio_for(self, question: str, budget: int, min_ratio: float = 0.5, max_ratio: float = 1.0) -> float:
        """γ = budget / predicted tokens, clipped to [min_ratio, max_ratio], rounded to 2 decimals
        (markers are written with at most 4; 2 keeps them close to the trained grid)."""
        if budget < 1:
            raise ValueError(f"token budget must be >= 1, got {budget}")
        g = budget / self.predict(question)
        return round(min(max_ratio, max(min_ratio, g)), 2)

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, {"kind": "ridge-log-length", "features": list(self.features),
                                 "weights": self.weights, "metrics": self.metrics})

    @classmethod
    def load(cls, path: str | Path) -> "LengthModel":
        """Read a saved model (JSON).

        Raises:
            DataError: wrong kind, features or weights.
        """
        d = read_json(path)
        if not isinstance(d, dict) or d.get("kind") != "ridge-log-length":
            raise DataError(path, None, "kind", "not a length model written by 'tokenskip fit-length'")
        if tuple(d.get("features", ())) != FEATURES:
            raise DataError(path, None, "features", f"expected {list(FEATURES)}, got {d.get('features')}")
        w = d.get("weights")
        if not (isinstance(w, list) and len(w) == len(FEATURES) and all(isinstance(x, (int, float)) for x in w)):
            raise DataError(path, None, "weights", f"expected {len(FEATURES)} numbers")
        return cls([float(x) for x in w], FEATURES, d.get("metrics") or {})


def _ridge(xs: list[list[float]], ys: list[float], l2: float):
    import numpy as np

    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    reg = l2 * np.eye(x.shape[1])
    reg[-1, -1] = 0.0  # the bias is not shrunk
    return np.linalg.solve(x.T @ x + reg, x.T @ y).tolist()


def read_cot_rows(path: str | Path) -> list[tuple[str, int]]:
    """``(question, cot_tokens)`` of every row of a ``generate``/``evaluate`` predictions file.

    Raises:
        DataError: a row without a text ``question`` or an integer ``cot_tokens``.
    """
    out = []
    for lineno, row in iter_jsonl(path):
        q, n = row.get("question"), row.get("cot_tokens")
        if not isinstance(q, str) or not q.strip():
            raise DataError(path, lineno, "question", "missing or empty (needs rows written by 'tokenskip generate')")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise DataError(path, lineno, "cot_tokens", f"expected a non-negative integer, got {n!r}")
        out.append((q, n))
    return out


def fit_length_model(rows: list[tuple[str, int]], heldout_share: float = 0.2, seed: int = 0,
                     l2: float = 1.0) -> LengthModel:
    """Fit on ``(question, original CoT tokens)`` pairs; ``heldout_share`` of them (seeded) measure the error,
    then the model is refitted on all of them.

    Raises:
        ValueError: fewer than 5 rows.
    """
    if len(rows) < 5:
        raise ValueError(f"fit-length: need at least 5 CoTs to fit a length model, got {len(rows)}")
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    k = max(1, round(heldout_share * len(rows))) if heldout_share > 0 else 0
    held, train = idx[:k], idx[k:]
    feats = [question_features(q) for q, _ in rows]
    target = [math.log1p(n) for _, n in rows]
    metrics: dict = {"n_train": len(train), "n_heldout": len(held),
                     "mean_cot_tokens": sum(n for _, n in rows) / len(rows)}
    if held:
        w = _ridge([feats[i] for i in train], [target[i] for i in train], l2)
        m = LengthModel(w)
        mean_train = sum(rows[i][1] for i in train) / len(train)
        metrics["mae_tokens"] = sum(abs(m.predict(rows[i][0]) - rows[i][1]) for i in held) / len(held)
        metrics["mae_tokens_mean_baseline"] = sum(abs(mean_train - rows[i][1]) for i in held) / len(held)
    return LengthModel(_ridge(feats, target, l2), FEATURES, metrics)


def load_length_model(path: str | Path) -> LengthModel:
    """A saved model (``.json``) or one fitted now on a predictions file (``.jsonl``).

    Raises:
        FileNotFoundError: ``path`` does not exist. DataError/ValueError: see :meth:`LengthModel.load`,
        :func:`read_cot_rows`, :func:`fit_length_model`.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"length model not found: {p} (a length_model.json, or the predictions.jsonl "
                                "of 'tokenskip generate' to fit one)")
    if p.suffix == ".jsonl":
        m = fit_length_model(read_cot_rows(p))
        logger.info("length model fitted on %s: %s", p, m.metrics)
        return m
    return LengthModel.load(p)


@dataclass
class FitLengthConfig:
    """Settings of ``tokenskip fit-length``."""

    cots: str = field(default="", metadata={"help": "predictions.jsonl of 'tokenskip generate' (original CoTs)"})
    out: str = field(default="", metadata={"help": "where to write the model (JSON)"})
    heldout_share: float = field(default=0.2, metadata={"help": "share of questions held out to measure the error"})
    seed: int = field(default=0, metadata={"help": "seed of the held-out split"})

    def validate(self) -> None:
        if not self.cots or not self.out:
            raise ValueError("fit-length: --cots and --out are required")
        if not 0.0 <= self.heldout_share < 1.0:
            raise ValueError(f"fit-length: --heldout-share must be in [0, 1), got {self.heldout_share}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, FitLengthConfig)


def run_cli(args: argparse.Namespace) -> int:
    cfg = dataclass_from_args(FitLengthConfig, args)
    if not Path(cfg.cots).is_file():
        raise FileNotFoundError(f"fit-length: {cfg.cots} not found")
    m = fit_length_model(read_cot_rows(cfg.cots), cfg.heldout_share, cfg.seed)
    m.save(cfg.out)
    say(json.dumps(m.metrics))
    return 0
