"""The rows that cross stage boundaries, as typed records: one definition per file format.

Every row a stage writes for another stage to read is one of these dataclasses. ``to_json()`` gives the
JSON object written (with ``schema`` = the record's tag and ``schema_version``); ``from_json(row, path,
line)`` reads one back, checking every field, and raises :class:`tokenskip.contract.io.DataError` naming the file,
line and field at fault. Readers use ``from_json``; nobody re-declares a writer's fields.

==================  =========================================  =============================
record              file                                       written by
==================  =========================================  =============================
:class:`Problem`    (in memory; a benchmark row parsed)        :mod:`tokenskip.task.benchmarks`
:class:`Prediction` ``predictions.jsonl``                      generate, evaluate
:class:`SourceCot`  ``compress/source.jsonl``                  compress
:class:`CompressedCot` ``compress/ratio-<γ>.jsonl``            compress
:class:`SFTExample` ``sft/train.jsonl``, ``validation.jsonl``  build-sft
:class:`RunMetrics` ``metrics.json``                           generate, evaluate
==================  =========================================  =============================

Rows written before the tag existed (no ``schema`` key) are read as version 1; a row with another
record's tag or a newer version is refused. Keys a record does not know are ignored, so a newer writer
that only adds fields stays readable.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from tokenskip.contract.io import DataError

R = TypeVar("R", bound="Record")

SCHEMA_KEY, VERSION_KEY = "schema", "schema_version"


def require_text(row: dict, key: str, path, lineno: int | None, nonempty: bool = False) -> str:
    """``row[key]`` as a string (numbers converted). Raises :class:`DataError` naming file, line and
    field when it is missing, not a string, or (``nonempty``) empty or only whitespace."""
    if key not in row:
        raise DataError(path, lineno, key, "missing")
    v = row[key]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str):
        raise DataError(path, lineno, key, f"expected a string, got {type(v).__name__}")
    if nonempty and not v.strip():
        raise DataError(path, lineno, key, "empty (expected a non-empty string)")
    return v


def _check(value: Any, tp: Any, path, lineno, name: str) -> Any:
    """``value`` checked against the annotation ``tp`` (str, int, float, bool, list, dict, ``X | None``)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        origin = typing.get_origin(tp)
    base = origin or tp
    if base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok and isinstance(value, float) and value.is_integer():
            ok, value = True, int(value)
    elif base is bool:
        ok = isinstance(value, bool)
    elif base is str:  # a number where text is expected (an answer "18" written as 18) is read as text
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        ok = isinstance(value, str)
    else:  # list / dict
        ok = isinstance(value, base)
    if not ok:
        expected = {float: "a finite number", int: "an integer", bool: "true or false", str: "a string",
                    list: "a list", dict: "an object"}[base]
        raise DataError(path, lineno, name, f"expected {expected}, got {value!r:.60}")
    return value


@dataclass
class Record:
    """Base of every cross-stage row: a schema tag, a version and checked (de)serialisation."""

    SCHEMA: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    #: optional fields left out of ``to_json`` when ``None`` (rows of other writers never had them)
    OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ()
    #: fields with a default that a row must still have
    REQUIRED: ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict:
        """The JSON object written to disk: ``schema``, ``schema_version``, then the fields in order."""
        d = {SCHEMA_KEY: self.SCHEMA, VERSION_KEY: self.VERSION}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.name in self.OMIT_IF_NONE:
                continue
            d[f.name] = v
        return d

    @classmethod
    def from_json(cls: type[R], row: Any, path="<memory>", line: int | None = None) -> R:
        """Read one row written by :meth:`to_json` (or by an earlier writer without the tag).

        Raises:
            DataError: not an object, another record's ``schema`` tag, a newer ``schema_version``, a
                missing required field or a field of the wrong type (names ``path``, ``line``, field).
        """
        if not isinstance(row, dict):
            raise DataError(path, line, None, f"expected a JSON object ({cls.SCHEMA} row), got {type(row).__name__}")
        tag = row.get(SCHEMA_KEY, cls.SCHEMA)
        if tag != cls.SCHEMA:
            raise DataError(path, line, SCHEMA_KEY, f"expected a {cls.SCHEMA!r} row, got {tag!r}")
        version = row.get(VERSION_KEY, 1)
        if not isinstance(version, int) or isinstance(version, bool) or version > cls.VERSION:
            raise DataError(path, line, VERSION_KEY,
                            f"this tokenskip reads {cls.SCHEMA} rows up to version {cls.VERSION}, got {version!r}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in row or (f.name in cls.REQUIRED and row[f.name] is None):
                if f.name in cls.REQUIRED or (f.default is dataclasses.MISSING
                                              and f.default_factory is dataclasses.MISSING):
                    raise DataError(path, line, f.name, "missing")
                continue
            kwargs[f.name] = _check(row[f.name], hints[f.name], path, line, f.name)
        return cls(**kwargs)


@dataclass
class Problem(Record):
    """One benchmark question.

    Attributes:
        id: stable identifier (``gsm8k/<file stem>/<row index>``, MATH's ``unique_id``...).
        question: problem text shown to the model.
        answer: gold final answer as a string (GSM8K: the number after ``####``, commas removed).
        solution: reference worked solution (GSM8K: calculator notes ``<<…>>`` removed); may be ``""``.
        meta: extra fields (level, subject...).
    """

    SCHEMA: ClassVar[str] = "problem"

    id: str
    question: str
    answer: str
    solution: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The fields as a plain dict (no schema tag)."""
        return dataclasses.asdict(self)


#: separator of a sampled CoT's row id: ``<problem id>#s<k>`` (``generate --samples N``, k = 0 … N-1)
SAMPLE_SEP = "#s"


def sample_id(problem_id: str, k: int) -> str:
    """Row id of the ``k``-th sampled CoT of a problem (``generate --samples``): ``<problem id>#s<k>``."""
    return f"{problem_id}{SAMPLE_SEP}{k}"


def problem_id(row_id: str) -> str:
    """The problem id of a row id: ``gsm8k/train/7#s2`` → ``gsm8k/train/7``; other ids unchanged."""
    head, sep, tail = row_id.rpartition(SAMPLE_SEP)
    return head if sep and tail.isdigit() else row_id


@dataclass
class Prediction(Record):
    """One graded generation (a row of ``predictions.jsonl``; the lm-eval habit: everything to trace a number).

    Attributes:
        prompt: the full chat-templated input; output: the generated text.
        cot: the output before "The final answer is", or a think output's block content
            (:func:`tokenskip.task.grading.split_cot`).
        cot_tokens: CoT length in target-model tokens; num_tokens: generated tokens.
        pred: extracted answer (``None``: none found); gold: gold answer; correct: graded result.
        latency_s: seconds for this sample (see the run's ``latency_mode``).
        finish_reason: ``stop`` (end of turn) or ``length`` (hit the cap).
        cap / original_cot_tokens: truncation method only: the token cap and the original CoT's length.
        think_closed: think-format outputs only (``<think>…</think>``, :mod:`tokenskip.task.think`): whether the
            block was closed; ``false`` rows are graded wrong (no answer after the block).
    """

    SCHEMA: ClassVar[str] = "prediction"
    OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ("cap", "original_cot_tokens", "think_closed")

    id: str
    question: str
    prompt: str
    output: str
    cot: str
    cot_tokens: int
    pred: str | None
    gold: str
    correct: bool
    latency_s: float
    num_tokens: int
    finish_reason: str
    output_token_ids: list[int] = field(default_factory=list)
    cap: int | None = None
    original_cot_tokens: int | None = None
    think_closed: bool | None = None


@dataclass
class SourceCot(Record):
    """An uncompressed CoT kept for compression (``compress/source.jsonl``); ``cot_tokens`` in target tokens."""

    SCHEMA: ClassVar[str] = "source_cot"
    OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ("output",)

    id: str
    question: str
    answer: str
    cot: str
    cot_tokens: int | None = None   # always written by compress; hand-made folders may leave it out
    output: str | None = None       # the model's whole output (compress --compat reference compresses it)


@dataclass
class CompressedCot(Record):
    """A CoT pruned to γ (``compress/ratio-<γ>.jsonl``).

    Attributes:
        ratio: requested γ; achieved_ratio: kept ÷ original tokens (target tokenizer).
        original_tokens / kept_tokens: token counts; words_kept / words_total: word counts.
        overshoot: protected spans forced more than γ to be kept.
        answer_numbers_kept: every number of the original answer line survives.
    """

    SCHEMA: ClassVar[str] = "compressed_cot"

    # compress writes every field; a reader needs only ``id`` and ``cot`` (hand-made folders hold just those)
    REQUIRED: ClassVar[tuple[str, ...]] = ("cot",)

    id: str
    question: str | None = None
    answer: str | None = None
    ratio: float | None = None
    cot: str | None = None
    original_tokens: int | None = None
    kept_tokens: int | None = None
    achieved_ratio: float | None = None
    scorer: str | None = None
    overshoot: bool | None = None
    words_kept: int | None = None
    words_total: int | None = None
    answer_numbers_kept: bool | None = None


@dataclass
class SFTExample(Record):
    """One SFT row (``sft/train.jsonl``): the chat-templated ``prompt`` (γ marker included) and the target
    ``completion`` (CoT at γ + answer line, no end-of-turn token)."""

    SCHEMA: ClassVar[str] = "sft_example"

    id: str
    ratio: float
    prompt: str
    completion: str


@dataclass
class RunMetrics(Record):
    """``metrics.json`` of one generate / evaluate run.

    Attributes:
        n: graded samples; accuracy: fraction correct in [0, 1] (``None`` when n = 0).
        avg_cot_tokens / median_cot_tokens: CoT length in target-model tokens.
        avg_output_tokens: generated tokens per sample; sample_latency_s: seconds per sample
            (``latency_mode``: ``amortized`` = batch wall time ÷ batch size, ``single`` = one at a time);
        tokens_per_s: generated tokens ÷ generation seconds.
        benchmark / benchmark_label, method / method_label / method_rank, ratio: what was evaluated
            (labels and rank order the report's tables); method_style: ``[color, marker]`` of its plots;
            ratio_requested: γ is asked of the model (its ActRatio measures ratio control).
        act_ratio: ActRatio = mean CoT tokens ÷ those of the original run on the same ids (paper §4);
            act_ratio_original: hash of the original ``predictions.jsonl`` it was computed against
            (``None``: there was none, so a reader recomputes it).
        budget / within_budget / mean_ratio / length_model_metrics: budget mode only: the CoT budget N
            (tokens), the share of CoTs within it, the mean γ chosen and the length model's fit figures.
        truncation: truncation method only: ``plain-cap`` (the paper's baseline) or ``force-answer``
            (``--force-answer``: the answer line appended after the cap; the report labels it so).
        lora_scale / marker_ratio: a calibrated TokenSkip adapter only: the LoRA scale γ was decoded with and
            the γ marker written in the prompt (:mod:`tokenskip.finetune.calibration`).
        think_unclosed: runs of think outputs only: how many never closed their block within the cap (graded wrong).
        max_new_tokens: the resolved cap on generated tokens; ids: problem ids in the run; settings: the
            run's settings.
        samples / pass_at_1 / accuracy_std / accuracy_per_sample: sampled decoding with ``samples`` > 1 only
            (``--samples N``, the reasoning-model convention): pass@1 = mean over the N samples of each sample's
            accuracy, its standard deviation over samples (n − 1) and the N accuracies (fractions).
    """

    SCHEMA: ClassVar[str] = "run_metrics"
    OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ("truncation", "lora_scale", "marker_ratio", "think_unclosed", "samples",
                                               "pass_at_1", "accuracy_std", "accuracy_per_sample")

    n: int
    accuracy: float | None = None
    avg_cot_tokens: float | None = None
    median_cot_tokens: float | None = None
    avg_output_tokens: float | None = None
    sample_latency_s: float | None = None
    tokens_per_s: float | None = None
    benchmark: str | None = None
    benchmark_label: str | None = None
    method: str | None = None
    method_label: str | None = None
    method_rank: int | None = None
    method_style: list | None = None
    ratio_requested: bool | None = None
    ratio: float | None = None
    act_ratio: float | None = None
    act_ratio_n: int | None = None
    act_ratio_original: str | None = None
    model: str | None = None
    adapter: str | None = None
    dtype: str | None = None
    dtype_requested: str | None = None
    dtype_reason: str | None = None
    backend: str | None = None
    latency_mode: str | None = None
    grader: str | None = None
    max_new_tokens: int | None = None
    budget: int | None = None
    within_budget: float | None = None
    mean_ratio: float | None = None
    length_model_metrics: dict | None = None
    truncation: str | None = None
    lora_scale: float | None = None
    marker_ratio: float | None = None
    think_unclosed: int | None = None
    samples: int | None = None
    pass_at_1: float | None = None
    accuracy_std: float | None = None
    accuracy_per_sample: list | None = None
    settings: dict = field(default_factory=dict)
    ids: list = field(default_factory=list)


def act_ratio(cot_tokens: dict[str, int], original_cot_tokens: dict[str, int]) -> tuple[float | None, int]:
    """ActRatio of a run and the number of question ids it is computed over.

    ActRatio = Σ CoT tokens of the run ÷ Σ CoT tokens of the original model, over the ids both have
    (paper §4, docs/method.md step 7; equal to the ratio of the means on those ids). ``(None, n)`` when
    they share no id or the original's CoTs are all empty.

    Args:
        cot_tokens / original_cot_tokens: problem id -> CoT tokens (target-model tokenizer).
    """
    common = [k for k in cot_tokens if k in original_cot_tokens]
    base = sum(original_cot_tokens[k] for k in common)
    if not common or not base:
        return None, len(common)
    return sum(cot_tokens[k] for k in common) / base, len(common)
