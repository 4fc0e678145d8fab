"""Where every file of a run lives: the one place that knows folder and file names.

A pipeline run folder (``<run_dir>/<name>/``)::

    manifest.json
    generate/predictions.jsonl (+ predictions.state.json), metrics.json
    compress/source.jsonl, ratio-<γ>.jsonl, summary.json
    sft/train.jsonl, validation.jsonl, stats.json
    train/adapter_config.json, adapter_model.safetensors, prompt_format.json, train_config.json,
          train_metrics.json, loss_log.jsonl, checkpoint-<step>/
    evaluate/<benchmark>/<method>[/ratio-<γ>]/predictions.jsonl, metrics.json
    evaluate/<benchmark>/budget/budget-<N>/predictions.jsonl, metrics.json
    report.md, report.json, plots/

γ in names is written by :func:`tokenskip.contract.ratios.format_ratio` and read back by :func:`ratio_from_name`.
"""

from __future__ import annotations

import re
from pathlib import Path

from tokenskip.contract.ratios import format_ratio, validate_ratio

MANIFEST = "manifest.json"
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
SOURCE = "source.jsonl"
COMPRESS_SUMMARY = "summary.json"
SFT_TRAIN, SFT_VALIDATION, SFT_STATS = "train.jsonl", "validation.jsonl", "stats.json"
LOSS_LOG = "loss_log.jsonl"
TRAIN_CONFIG = "train_config.json"
ADAPTER_CONFIG = "adapter_config.json"
#: the tokenizer a model or adapter folder was saved with (transformers' file name)
TOKENIZER_CONFIG = "tokenizer_config.json"
REPORT_MD, REPORT_JSON, PLOTS = "report.md", "report.json", "plots"
MERGE_CONFIG = "merge_config.json"
#: The rest of a trained adapter folder (``train/``): its weights, the trainer's final metrics, how its
#: prompts were built (copied from the SFT folder) and the budget method's length model.
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAIN_METRICS = "train_metrics.json"
PROMPT_FORMAT = "prompt_format.json"
LENGTH_MODEL = "length_model.json"
#: The other weights file name peft may write (older peft, ``safe_serialization=False``).
ADAPTER_WEIGHTS_BIN = "adapter_model.bin"
#: In an adapter folder: the γ → LoRA-scale calibration (``tokenskip calibrate``,
#: :mod:`tokenskip.finetune.calibration`); under the cache folder: the scaled copies of adapters.
GAMMA_CALIBRATION = "gamma_calibration.json"
SCALED_ADAPTERS = "scaled-adapters"
#: ``tokenskip calibrate --out``: ``original/`` and one ``scale-<s>/`` folder per scale, each with
#: ``predictions.jsonl`` + ``metrics.json``; the fitted calibration is also written there.
CALIBRATION_SCALE_PREFIX = "scale-"
#: A Hugging Face model folder's configuration (a downloaded or merged model).
MODEL_CONFIG = "config.json"
#: Beside a resumable ``<name>.jsonl``: ``<name>.state.json``, its settings fingerprint.
STATE_SUFFIX = ".state.json"
#: The lab's data folder (``tokenskip lab-data``): one ``<split>.jsonl`` per split and ``summary.json``.
LAB_TRAIN, LAB_VALIDATION, LAB_TEST = "train.jsonl", "validation.jsonl", "test.jsonl"
LAB_DATA_SUMMARY = "summary.json"
#: Report plots (under ``plots/``) that are not one per benchmark.
PLOT_RATIO_CONTROL, PLOT_TRAIN_LOSS = "ratio_control.png", "train_loss.png"

#: the baseline run every ActRatio divides by: ``<benchmark>/original/``
ORIGINAL = "original"

_RATIO_NAME = re.compile(r"^ratio-(\d+(?:\.\d+)?)(?:\.jsonl)?$")


def ratio_name(ratio: float) -> str:
    """``ratio-<γ>`` (a folder name; the compress stage adds ``.jsonl``)."""
    return f"ratio-{format_ratio(ratio)}"


def ratio_from_name(name: str) -> float | None:
    """γ of a ``ratio-<γ>`` folder or ``ratio-<γ>.jsonl`` file name; ``None`` for any other name."""
    m = _RATIO_NAME.match(name)
    if not m:
        return None
    try:
        return validate_ratio(m.group(1))
    except ValueError:
        return None


def state_file(path: str | Path) -> Path:
    """The settings-fingerprint file beside a resumable JSONL file: ``<name>.jsonl`` -> ``<name>.state.json``."""
    path = Path(path)
    return path.with_name(path.stem + STATE_SUFFIX)


def stage_dir(run: str | Path, folder: str) -> Path:
    """A stage's folder under a run folder (``folder`` from the stage registry, e.g. ``sft``)."""
    return Path(run) / folder


# ---------------------------------------------------------------- compress folder

def compressed_file(compress_dir: str | Path, ratio: float) -> Path:
    """``<compress>/ratio-<γ>.jsonl``: the CoTs pruned to γ."""
    return Path(compress_dir) / f"{ratio_name(ratio)}.jsonl"


def compressed_ratios(compress_dir: str | Path) -> list[float]:
    """Every γ with a ``ratio-<γ>.jsonl`` in a compress folder, largest first (``[]`` if none or no folder)."""
    d = Path(compress_dir)
    found = {ratio_from_name(p.name) for p in d.glob("ratio-*.jsonl")} if d.is_dir() else set()
    return sorted((r for r in found if r is not None), reverse=True)


# ---------------------------------------------------------------- evaluation folder

def eval_run_dir(out: str | Path, benchmark: str, method: str, ratio: float | None = None) -> Path:
    """Folder of one evaluated (benchmark, method, γ): ``<out>/<benchmark>/<method>[/ratio-<γ>]``."""
    base = Path(out) / benchmark / method
    return base if ratio is None else base / ratio_name(ratio)


def budget_run_dir(out: str | Path, benchmark: str, budget: int) -> Path:
    """Folder of one budget-mode run: ``<out>/<benchmark>/budget/budget-<N>`` (N = CoT tokens)."""
    return Path(out) / benchmark / "budget" / f"budget-{int(budget)}"


def budget_runs(eval_dir: str | Path) -> list[tuple[str, int, Path]]:
    """``(benchmark, N, folder)`` of every budget-mode run with a ``metrics.json`` under an evaluate folder."""
    found = []
    for path in sorted(Path(eval_dir).glob(f"*/budget/budget-*/{METRICS}")):
        m = re.fullmatch(r"budget-(\d+)", path.parent.name)
        if m:
            found.append((path.relative_to(eval_dir).parts[0], int(m.group(1)), path.parent))
    return found


def original_predictions(bench_dir: str | Path) -> Path:
    """The original run's ``predictions.jsonl`` under ``<out>/<benchmark>``."""
    return Path(bench_dir) / ORIGINAL / PREDICTIONS


def eval_runs(bench_dir: str | Path) -> list[tuple[str, float | None, Path]]:
    """``(method, γ or None, folder)`` of every folder with a ``metrics.json`` under ``<out>/<benchmark>``,
    sorted by method folder then γ folder name."""
    found = []
    bench_dir = Path(bench_dir)
    for method_dir in sorted(p for p in bench_dir.iterdir() if p.is_dir()):
        if (method_dir / METRICS).is_file():
            found.append((method_dir.name, None, method_dir))
        for sub in sorted(p for p in method_dir.iterdir() if p.is_dir()):
            r = ratio_from_name(sub.name)
            if r is not None and (sub / METRICS).is_file():
                found.append((method_dir.name, r, sub))
    return found


# ---------------------------------------------------------------- train folder

def find_adapter(train_dir: str | Path) -> Path:
    """The trained LoRA adapter folder: ``train_dir`` itself, else the first sub-folder (not a
    ``checkpoint-*``) holding ``adapter_config.json``.

    Raises:
        FileNotFoundError: no adapter under ``train_dir`` (training has not finished).
    """
    train_dir = Path(train_dir)
    if (train_dir / ADAPTER_CONFIG).exists():
        return train_dir
    found = sorted(p.parent for p in train_dir.rglob(ADAPTER_CONFIG) if "checkpoint-" not in str(p))
    if not found:
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} under {train_dir}: did the train stage finish?")
    return found[0]


def adapter_hash(folder: str | Path) -> str:
    """Hash of a peft adapter's config and weights (not of checkpoints or logs beside them): what identifies
    an adapter in evaluate's run fingerprints and in the vLLM backend's merged-model cache."""
    from tokenskip.contract.io import file_hash

    folder = Path(folder)
    parts = [folder / n for n in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")]
    parts = [p for p in parts if p.exists()]
    return "+".join(file_hash(p) for p in parts) if parts else file_hash(folder)
