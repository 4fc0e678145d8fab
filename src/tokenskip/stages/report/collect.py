"""Report, part 1: collect a run folder's results into plain data (``report.json``), reading files only.

See :mod:`tokenskip.stages.report` for what is read. Every number is copied from a file; the one number computed
here is ActRatio when a run's ``metrics.json`` was written against another original run than the one now
beside it (:func:`_current_act_ratio`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenskip.contract.io import DataError, file_hash, iter_jsonl, read_json
from tokenskip.contract.layout import (
    COMPRESS_SUMMARY,
    LOSS_LOG,
    MANIFEST,
    METRICS,
    PREDICTIONS,
    budget_runs,
    compressed_file,
    eval_runs,
    original_predictions,
    ratio_from_name,
)
from tokenskip.contract.ratios import format_ratio
from tokenskip.contract.records import act_ratio
from tokenskip.contract.stats import percentile

REPORT_SCHEMA_VERSION = 1
MISSING = "—"

_NUMERIC_FIELDS = ("accuracy", "avg_cot_tokens", "median_cot_tokens", "act_ratio", "sample_latency_s",
                   "tokens_per_s")


@dataclass
class ReportRow:
    """One evaluated (benchmark, method, γ) cell, copied from its ``metrics.json``.

    Attributes:
        benchmark: folder name under ``evaluate/`` (``gsm8k``, ``math``).
        method: ``original``, ``prompt``, ``truncation``, ``tokenskip`` (or another folder name).
        ratio: requested compression ratio γ; ``None`` for the original model.
        n: number of graded samples.
        accuracy: fraction correct in [0, 1] (shown ×100 in the table).
        avg_cot_tokens / median_cot_tokens: CoT length in target-model tokens.
        act_ratio: ActRatio = avg CoT tokens at γ ÷ avg CoT tokens of the original model (paper §4).
        sample_latency_s: seconds per sample; ``latency_mode`` says ``amortized`` (batch wall time ÷ N)
            or ``single`` (one request at a time).
        tokens_per_s: generated tokens per second.
        model / adapter / backend / dtype: what produced the row (``adapter`` is ``None`` for rows made by
            the base model: original, prompt and truncation).
        max_new_tokens: the generation cap in tokens (``metrics.json``'s ``max_new_tokens``, else its
            ``settings.max_new_tokens``); ``None`` when the file does not say.
        metrics_path / predictions_path: paths relative to the report folder (``predictions_path``
            is ``None`` when the file is absent).
        predictions_rows: rows in ``predictions.jsonl`` (``None`` when absent).
        method_label / method_rank / benchmark_label: display names and row order from ``metrics.json``.
        method_style: ``[color, marker]`` of the method's plots; ratio_requested: γ is asked of the model.
        truncation: ``plain-cap`` (the paper's) or ``force-answer`` from ``metrics.json``; ``force-answer``
            adds " + forced answer" to the label.
        samples / accuracy_std: sampled runs (``--samples N``): CoTs per question and the std of accuracy over
            them (``accuracy`` is then pass@1 averaged over the samples).
    """

    benchmark: str
    method: str
    ratio: float | None
    n: int | None = None
    accuracy: float | None = None
    avg_cot_tokens: float | None = None
    median_cot_tokens: float | None = None
    act_ratio: float | None = None
    sample_latency_s: float | None = None
    latency_mode: str | None = None
    tokens_per_s: float | None = None
    model: str | None = None
    adapter: str | None = None
    backend: str | None = None
    dtype: str | None = None
    max_new_tokens: int | None = None
    metrics_path: str = ""
    predictions_path: str | None = None
    predictions_rows: int | None = None
    method_label: str | None = None
    method_rank: int | None = None
    benchmark_label: str | None = None
    method_style: list | None = None
    ratio_requested: bool | None = None
    truncation: str | None = None
    samples: int | None = None
    accuracy_std: float | None = None

    @property
    def label(self) -> str:
        """Table label, e.g. ``Original``, ``TokenSkip (γ=0.5)``, ``Truncation + forced answer (γ=0.5)``."""
        name = row_label(self.to_dict())
        return name if self.ratio is None else f"{name} (γ={fmt_ratio(self.ratio)})"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ReportRow":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def fmt_ratio(r: float) -> str:
    try:
        return format_ratio(r)
    except ValueError:  # a summary key outside (0, 1]: shown as written
        return f"{r:g}"


def method_key(row: dict | ReportRow) -> tuple:
    d = row if isinstance(row, dict) else row.to_dict()
    rank = d.get("method_rank")
    return (rank if rank is not None else math.inf, d["method"])


def row_label(row: dict) -> str:
    """The method's display name: ``method_label`` (else the folder name), plus " + forced answer" for a
    truncation run that appended the answer line (``truncation: force-answer``)."""
    name = row.get("method_label") or row["method"]
    return name + " + forced answer" if row.get("truncation") == "force-answer" else name


def bench_label(bench: str, rows: list[dict]) -> str:
    return next((r["benchmark_label"] for r in rows if r.get("benchmark_label")), bench)


def sort_rows(rows: list[ReportRow]) -> list[ReportRow]:
    """Rows in report order: benchmark by name, method by ``method_rank`` (the method registry's order:
    Original, Prompt, Truncation, TokenSkip; unranked methods after, by name), then γ descending."""
    return sorted(rows, key=lambda r: (r.benchmark, method_key(r), -(r.ratio if r.ratio is not None else math.inf)))



def _metrics_files(bench_dir: Path) -> list[tuple[str, float | None, Path]]:
    """``(method, γ from the folder name, metrics.json)`` under one benchmark folder."""
    return [(method, ratio, folder / METRICS) for method, ratio, folder in eval_runs(bench_dir)]


def find_evaluate_dir(run_dir: str | os.PathLike) -> Path:
    """The folder holding ``<benchmark>/...`` results: ``RUN_DIR/evaluate`` or ``RUN_DIR`` itself.

    Raises:
        FileNotFoundError: ``run_dir`` is missing or has no ``metrics.json`` in the expected layout.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    for cand in (run_dir / "evaluate", run_dir):
        if cand.is_dir() and any(_metrics_files(b) for b in cand.iterdir() if b.is_dir()):
            return cand
    raise FileNotFoundError(
        f"{run_dir}: no evaluation results; expected {run_dir}/evaluate/<benchmark>/original/metrics.json "
        f"or {run_dir}/evaluate/<benchmark>/<method>/ratio-<γ>/metrics.json (or RUN_DIR being that "
        f"evaluate folder)")


def _number(path: Path, data: dict, key: str) -> float | None:
    v = data.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise DataError(path, None, key, f"expected a finite number or null, got {v!r}")
    return float(v)


def _cot_tokens_by_id(path: Path) -> dict[str, int]:
    out = {}
    for lineno, row in iter_jsonl(path):
        v = row.get("cot_tokens")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise DataError(path, lineno, "cot_tokens", f"expected a non-negative integer, got {v!r}")
        out[str(row.get("id"))] = int(v)
    return out


def _current_act_ratio(data: dict, path: Path, out_dir: Path, notes: list[str]) -> float | None:
    """ActRatio of one run: the ``metrics.json`` value, or recomputed from the predictions when that value
    was computed against another (or no) original run than the one now in ``<benchmark>/original``."""
    if "act_ratio_original" not in data:   # written before runs recorded their original: taken as is
        return _number(path, data, "act_ratio")
    in_ratio_dir = ratio_from_name(path.parent.name) is not None
    bench_dir = path.parent.parent.parent if in_ratio_dir else path.parent.parent
    orig = original_predictions(bench_dir)
    current = file_hash(orig) if orig.is_file() else None
    if current == data.get("act_ratio_original"):
        return _number(path, data, "act_ratio")
    pred = path.parent / PREDICTIONS
    if current is None or not pred.is_file():
        return None
    mine = _cot_tokens_by_id(pred)
    wanted = set(data.get("ids") or [])
    value, n = act_ratio({k: v for k, v in mine.items() if not wanted or k in wanted}, _cot_tokens_by_id(orig))
    notes.append(f"`{rel_link(path, out_dir)}`: ActRatio recomputed against the current original run "
                 f"({n} common questions)")
    return value


def read_metrics_row(path: Path, benchmark: str, method: str, folder_ratio: float | None,
                     out_dir: Path, notes: list[str]) -> ReportRow:
    """One :class:`ReportRow` from a ``metrics.json``.

    The benchmark, method and γ are taken from the folder names (the layout is the contract); a
    ``metrics.json`` that says otherwise gets a note in ``notes``, not a silent fix.

    Raises:
        DataError: the file is not a JSON object, or a numeric field holds a non-number, or
            ``accuracy`` is outside [0, 1], or ``latency_mode`` is not ``amortized``/``single``.
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(path, None, None, f"expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version is not None and version != 1:
        notes.append(f"`{rel_link(path, out_dir)}`: schema_version {version!r}, this report reads version 1")
    vals = {k: _number(path, data, k) for k in _NUMERIC_FIELDS}
    vals["act_ratio"] = _current_act_ratio(data, path, out_dir, notes)
    if vals["accuracy"] is not None and not 0.0 <= vals["accuracy"] <= 1.0:
        raise DataError(path, None, "accuracy", f"expected a fraction in [0, 1], got {vals['accuracy']!r}")
    n = _number(path, data, "n")
    mode = data.get("latency_mode")
    if mode is not None and mode not in ("amortized", "single"):
        raise DataError(path, None, "latency_mode", f"expected 'amortized' or 'single', got {mode!r}")
    file_ratio = _number(path, data, "ratio")
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    cap = data.get("max_new_tokens", settings.get("max_new_tokens"))
    cap = int(cap) if isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap > 0 else None
    if data.get("method") not in (None, method):
        notes.append(f"`{rel_link(path, out_dir)}`: method {data['method']!r} differs from its folder {method!r}")
    if folder_ratio is not None and file_ratio is not None and abs(file_ratio - folder_ratio) > 1e-6:
        notes.append(f"`{rel_link(path, out_dir)}`: ratio {file_ratio} differs from its folder γ={folder_ratio}")
    pred = path.parent / PREDICTIONS
    pred_rows = sum(1 for _ in iter_jsonl(pred)) if pred.is_file() else None
    if pred_rows is None:
        notes.append(f"`{rel_link(path.parent, out_dir)}`: no predictions.jsonl beside metrics.json")
    elif n is not None and pred_rows != int(n):
        notes.append(f"`{rel_link(pred, out_dir)}`: {pred_rows} rows but metrics.json says n={int(n)}")
    return ReportRow(
        benchmark=benchmark, method=method, ratio=folder_ratio, n=None if n is None else int(n),
        latency_mode=mode, model=data.get("model"), adapter=data.get("adapter"),
        backend=data.get("backend"), dtype=data.get("dtype"), max_new_tokens=cap,
        metrics_path=rel_link(path, out_dir),
        predictions_path=rel_link(pred, out_dir) if pred_rows is not None else None,
        predictions_rows=pred_rows, method_label=_text(data, "method_label"),
        method_rank=None if _number(path, data, "method_rank") is None else int(data["method_rank"]),
        benchmark_label=_text(data, "benchmark_label"), method_style=_style_of(data),
        ratio_requested=data.get("ratio_requested") is True, truncation=_text(data, "truncation"),
        samples=data.get("samples") if isinstance(data.get("samples"), int) else None,
        accuracy_std=_number(path, data, "accuracy_std"), **vals)


def _text(data: dict, key: str) -> str | None:
    v = data.get(key)
    return v if isinstance(v, str) and v else None


def _style_of(data: dict) -> list | None:
    v = data.get("method_style")
    return v if isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v) else None


def rel_link(path: Path, out_dir: Path) -> str:
    """``path`` relative to the report folder, with ``/`` separators (a Markdown link target)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(out_dir).resolve())).as_posix()


def collect_rows(eval_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 notes: list[str] | None = None) -> list[ReportRow]:
    """All result rows under an evaluate folder, in report order (see :func:`sort_rows`).

    Args:
        eval_dir: folder with ``<benchmark>/<method>[/ratio-<γ>]/metrics.json``.
        out_dir: the report folder; row paths are made relative to it.
        notes: list that receives one line per inconsistency found (count mismatch, missing file...).

    Raises:
        DataError: a malformed ``metrics.json`` / ``predictions.jsonl`` (names file and field).
    """
    eval_dir, out_dir = Path(eval_dir), Path(out_dir)
    notes = notes if notes is not None else []
    rows = []
    for bench_dir in sorted(p for p in eval_dir.iterdir() if p.is_dir()):
        for method, ratio, path in _metrics_files(bench_dir):
            rows.append(read_metrics_row(path, bench_dir.name, method, ratio, out_dir, notes))
        # predictions without metrics: an evaluation that has not finished
        for pred in sorted(bench_dir.rglob(PREDICTIONS)):
            if not (pred.parent / METRICS).exists():
                notes.append(f"`{rel_link(pred, out_dir)}` has no metrics.json (unfinished evaluation?); not in the "
                             "table")
    return sort_rows(rows)


def read_cot_tokens(path: str | os.PathLike) -> list[int]:
    """``cot_tokens`` of every row of a ``predictions.jsonl`` (rows without it are skipped).

    Raises:
        DataError: a ``cot_tokens`` value that is not a non-negative integer (names file and line).
    """
    out = []
    for lineno, row in iter_jsonl(path):
        v = row.get("cot_tokens")
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != int(v):
            raise DataError(path, lineno, "cot_tokens", f"expected a non-negative integer, got {v!r}")
        out.append(int(v))
    return out


def collect_compress(compress_dir: str | os.PathLike) -> dict | None:
    """The compressor's requested-vs-achieved ratios from ``summary.json`` (+ per-row percentiles).

    Returns ``None`` when ``summary.json`` is absent, else ``{"scorer", "model", "ratios": [...]}``,
    one entry per requested γ (descending) with the summary's ``n``, ``mean_achieved_ratio``,
    ``mean_abs_error``, ``p95_abs_error``, ``overshoot_share`` and, when ``ratio-<γ>.jsonl`` exists,
    ``achieved_p05`` / ``achieved_p95`` (5th/95th percentile of the rows' ``achieved_ratio``).

    Raises:
        DataError: ``summary.json`` has no ``ratios`` object, a γ key is not a number, or a row's
            ``achieved_ratio`` is not a number.
    """
    compress_dir = Path(compress_dir)
    path = compress_dir / COMPRESS_SUMMARY
    if not path.is_file():
        return None
    data = read_json(path)
    ratios = data.get("ratios") if isinstance(data, dict) else None
    if not isinstance(ratios, dict):
        raise DataError(path, None, "ratios", "expected an object {γ: {n, mean_achieved_ratio, ...}}")
    entries = []
    for key, stats in ratios.items():
        try:
            gamma = float(key)
        except ValueError:
            raise DataError(path, None, f"ratios.{key}", "expected a ratio γ as key") from None
        stats = stats if isinstance(stats, dict) else {}
        entry: dict[str, Any] = {"ratio": gamma}
        for k in ("n", "mean_achieved_ratio", "mean_abs_error", "p95_abs_error", "overshoot_share"):
            entry[k] = _number(path, stats, k)
        if entry["n"] is not None:
            entry["n"] = int(entry["n"])
        entry["achieved_p05"] = entry["achieved_p95"] = None
        rows_path = compressed_file(compress_dir, gamma) if 0 < gamma <= 1 else None
        if rows_path is not None and rows_path.is_file():
            achieved = []
            for lineno, row in iter_jsonl(rows_path):
                v = row.get("achieved_ratio")
                if v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise DataError(rows_path, lineno, "achieved_ratio", f"expected a number, got {v!r}")
                achieved.append(float(v))
            if achieved:
                entry["achieved_p05"] = percentile(achieved, 5)
                entry["achieved_p95"] = percentile(achieved, 95)
        entries.append(entry)
    entries.sort(key=lambda e: -e["ratio"])
    return {"scorer": data.get("scorer"), "model": data.get("model"), "path": str(path), "ratios": entries}


def collect_loss(loss_log: str | os.PathLike) -> list[dict] | None:
    """``[{step, loss, lr, epoch}]`` from a training loss log, ordered by step; ``None`` if absent.

    Rows without a numeric ``step`` and ``loss`` (e.g. a final summary line) are skipped.
    """
    loss_log = Path(loss_log)
    if not loss_log.is_file():
        return None
    points = []
    for _, row in iter_jsonl(loss_log):
        step, loss = row.get("step"), row.get("loss")
        if isinstance(step, (int, float)) and isinstance(loss, (int, float)) and math.isfinite(loss):
            points.append({"step": step, "loss": float(loss), "lr": row.get("lr"), "epoch": row.get("epoch")})
    points.sort(key=lambda p: p["step"])
    return points


def run_name(run_dir: Path) -> str:
    """``manifest.json``'s ``name`` if present, else the folder name."""
    manifest = run_dir / MANIFEST
    if manifest.is_file():
        data = read_json(manifest)
        if isinstance(data, dict) and isinstance(data.get("name"), str) and data["name"]:
            return data["name"]
    return run_dir.resolve().name


def collect_budgets(eval_dir: Path, out_dir: Path) -> dict[str, list[dict]]:
    """Budget-mode runs (``<benchmark>/budget/budget-<N>/metrics.json``) per benchmark, by budget:
    ``{budget, n, accuracy, avg_cot_tokens, within_budget, mean_ratio, predictions_path}``."""
    out: dict[str, list[dict]] = {}
    for benchmark, budget, folder in budget_runs(eval_dir):
        data = read_json(folder / METRICS)
        if not isinstance(data, dict):
            continue
        pred = folder / PREDICTIONS
        out.setdefault(benchmark, []).append({
            "budget": budget, **{k: data.get(k) for k in ("n", "accuracy", "avg_cot_tokens", "within_budget",
                                                          "mean_ratio")},
            "predictions_path": rel_link(pred, out_dir) if pred.is_file() else None})
    for rows in out.values():
        rows.sort(key=lambda r: r["budget"])
    return out


def build_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 compress_dir: str | os.PathLike | None = None,
                 loss_log: str | os.PathLike | None = None) -> dict:
    """Everything the report shows, as plain JSON-ready data (this is ``report.json`` minus ``plots``).

    Keys: ``schema_version``, ``name``, ``run_dir``, ``evaluate_dir``, ``benchmarks`` (name → list
    of :class:`ReportRow` dicts, in table order), ``compress`` (see :func:`collect_compress`, or
    ``None``), ``train`` (``{"loss_log", "steps", "first_loss", "last_loss"}`` or ``None``), ``notes``.

    Raises:
        FileNotFoundError: no evaluation results under ``run_dir``.
        DataError: a malformed input file.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    eval_dir = find_evaluate_dir(run_dir)
    notes: list[str] = []
    rows = collect_rows(eval_dir, out_dir, notes)
    benchmarks: dict[str, list[dict]] = {}
    for r in rows:
        benchmarks.setdefault(r.benchmark, []).append(r.to_dict())
    compress = collect_compress(Path(compress_dir) if compress_dir else run_dir / "compress")
    if compress is not None:
        compress["path"] = rel_link(Path(compress["path"]), out_dir)
    loss_path = Path(loss_log) if loss_log else run_dir / "train" / LOSS_LOG
    loss = collect_loss(loss_path)
    train = None
    if loss is not None:
        train = {"loss_log": rel_link(loss_path, out_dir), "steps": len(loss),
                 "first_loss": loss[0]["loss"] if loss else None, "last_loss": loss[-1]["loss"] if loss else None}
    return {"schema_version": REPORT_SCHEMA_VERSION, "name": run_name(run_dir),
            "run_dir": str(run_dir), "evaluate_dir": rel_link(eval_dir, out_dir) if eval_dir != out_dir else ".",
            "benchmarks": benchmarks, "budgets": collect_budgets(eval_dir, out_dir), "compress": compress,
            "train": train, "notes": notes}
