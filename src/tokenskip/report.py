"""Report stage: collect a run folder's results into ``report.md``, ``report.json`` and PNG plots.

Reads only other stages' output files (never their code):

* ``evaluate/<benchmark>/original/metrics.json`` and
  ``evaluate/<benchmark>/<method>/ratio-<γ>/metrics.json`` (+ ``predictions.jsonl`` beside each);
* ``compress/summary.json`` and ``compress/ratio-<γ>.jsonl`` (optional);
* ``train/loss_log.jsonl`` and ``train/train_config.json`` (optional: the loss plot names the peak learning
  rate, schedule and warmup asked for); ``manifest.json`` (optional, for the run name).

``RUN_DIR`` may also be an evaluate folder itself (``tokenskip report W/eval``).

Every number in the report is copied from those files; a value a file does not give is shown as
``—``, never filled in. Each table row links to the ``predictions.jsonl`` it came from, so a number
can be traced to the samples behind it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenskip.config import add_dataclass_args, dataclass_from_args
from tokenskip.io import DataError, iter_jsonl, read_json, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

REPORT_SCHEMA_VERSION = 1
MISSING = "—"

#: Row order inside a benchmark table (paper Table 1 order); unknown methods come after, by name.
METHOD_ORDER = ("original", "nocot", "prompt", "truncation", "tokenskip")
METHOD_LABELS = {"original": "Original", "nocot": "No CoT", "prompt": "Prompt", "truncation": "Truncation",
                 "tokenskip": "TokenSkip"}
BENCHMARK_ORDER = ("gsm8k", "math")
BENCHMARK_LABELS = {"gsm8k": "GSM8K", "math": "MATH-500"}

_RATIO_DIR = re.compile(r"^ratio-(\d+(?:\.\d+)?)$")
_NUMERIC_FIELDS = ("accuracy", "avg_cot_tokens", "median_cot_tokens", "act_ratio", "sample_latency_s",
                   "tokens_per_s")


@dataclass
class ReportConfig:
    """Settings of ``tokenskip report`` (the run folder itself is the positional ``RUN_DIR``)."""

    out: str | None = field(default=None, metadata={
        "help": "folder for report.md, report.json and plots/ (default: RUN_DIR)"})
    compress_dir: str | None = field(default=None, metadata={
        "help": "compress stage folder with summary.json (default: RUN_DIR/compress)"})
    loss_log: str | None = field(default=None, metadata={
        "help": "training loss log JSONL (default: RUN_DIR/train/loss_log.jsonl)"})
    plots: bool = field(default=True, metadata={"help": "draw the PNG plots"})
    hist_bins: int = field(default=30, metadata={"help": "bins of the CoT-length histograms"})

    def validate(self) -> None:
        if self.hist_bins < 1:
            raise ValueError(f"hist_bins must be >= 1, got {self.hist_bins}")


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
    truncation: str | None = None  # plain-cap (paper) or force-answer, from metrics.json

    @property
    def label(self) -> str:
        """Table label, e.g. ``Original``, ``TokenSkip (γ=0.5)``, ``Truncation + forced answer (γ=0.5)``."""
        name = METHOD_LABELS.get(self.method, self.method)
        if self.method == "truncation" and self.truncation == "force-answer":
            name += " + forced answer"
        return name if self.ratio is None else f"{name} (γ={_fmt_ratio(self.ratio)})"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ReportRow":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _fmt_ratio(r: float) -> str:
    s = f"{round(r, 4):g}"
    return s if "." in s else s + ".0"


def _sort_key_method(method: str) -> tuple:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def _sort_key_benchmark(name: str) -> tuple:
    return (BENCHMARK_ORDER.index(name), "") if name in BENCHMARK_ORDER else (len(BENCHMARK_ORDER), name)


def sort_rows(rows: list[ReportRow]) -> list[ReportRow]:
    """Rows in report order: benchmark (GSM8K, MATH, others), method (Original, Prompt, Truncation,
    TokenSkip, others), then γ descending (no-γ rows first)."""
    return sorted(rows, key=lambda r: (_sort_key_benchmark(r.benchmark), _sort_key_method(r.method),
                                       -(r.ratio if r.ratio is not None else math.inf)))


# --------------------------------------------------------------------------------------------------
# Collecting
# --------------------------------------------------------------------------------------------------

def _metrics_files(bench_dir: Path) -> list[tuple[str, float | None, Path]]:
    """``(method, γ from the folder name, metrics.json)`` under one benchmark folder."""
    found = []
    for method_dir in sorted(p for p in bench_dir.iterdir() if p.is_dir()):
        if (method_dir / "metrics.json").is_file():
            found.append((method_dir.name, None, method_dir / "metrics.json"))
        for sub in sorted(p for p in method_dir.iterdir() if p.is_dir()):
            m = _RATIO_DIR.match(sub.name)
            if m and (sub / "metrics.json").is_file():
                found.append((method_dir.name, float(m.group(1)), sub / "metrics.json"))
    return found


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
        notes.append(f"`{_rel(path, out_dir)}`: schema_version {version!r}, this report reads version 1")
    vals = {k: _number(path, data, k) for k in _NUMERIC_FIELDS}
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
        notes.append(f"`{_rel(path, out_dir)}`: method {data['method']!r} differs from its folder {method!r}")
    if folder_ratio is not None and file_ratio is not None and abs(file_ratio - folder_ratio) > 1e-6:
        notes.append(f"`{_rel(path, out_dir)}`: ratio {file_ratio} differs from its folder γ={folder_ratio}")
    pred = path.parent / "predictions.jsonl"
    pred_rows = sum(1 for _ in iter_jsonl(pred)) if pred.is_file() else None
    if pred_rows is None:
        notes.append(f"`{_rel(path.parent, out_dir)}`: no predictions.jsonl beside metrics.json")
    elif n is not None and pred_rows != int(n):
        notes.append(f"`{_rel(pred, out_dir)}`: {pred_rows} rows but metrics.json says n={int(n)}")
    return ReportRow(
        benchmark=benchmark, method=method, ratio=folder_ratio, n=None if n is None else int(n),
        latency_mode=mode, model=data.get("model"), adapter=data.get("adapter"),
        backend=data.get("backend"), dtype=data.get("dtype"), max_new_tokens=cap, truncation=data.get("truncation"),
        metrics_path=_rel(path, out_dir), predictions_path=_rel(pred, out_dir) if pred_rows is not None else None,
        predictions_rows=pred_rows, **vals)


def _rel(path: Path, out_dir: Path) -> str:
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
        for pred in sorted(bench_dir.rglob("predictions.jsonl")):
            if not (pred.parent / "metrics.json").exists():
                notes.append(f"`{_rel(pred, out_dir)}` has no metrics.json (unfinished evaluation?); not in the table")
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
    path = compress_dir / "summary.json"
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
        rows_path = compress_dir / f"ratio-{_fmt_ratio(gamma)}.jsonl"
        if rows_path.is_file():
            achieved = []
            for lineno, row in iter_jsonl(rows_path):
                v = row.get("achieved_ratio")
                if v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise DataError(rows_path, lineno, "achieved_ratio", f"expected a number, got {v!r}")
                achieved.append(float(v))
            if achieved:
                entry["achieved_p05"] = _percentile(achieved, 5)
                entry["achieved_p95"] = _percentile(achieved, 95)
        entries.append(entry)
    entries.sort(key=lambda e: -e["ratio"])
    return {"scorer": data.get("scorer"), "model": data.get("model"), "path": str(path), "ratios": entries}


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method)."""
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


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
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        data = read_json(manifest)
        if isinstance(data, dict) and isinstance(data.get("name"), str) and data["name"]:
            return data["name"]
    return run_dir.resolve().name


def collect_budgets(eval_dir: Path, out_dir: Path) -> dict[str, list[dict]]:
    """Budget-mode runs (``<benchmark>/budget/budget-<N>/metrics.json``) per benchmark, by budget:
    ``{budget, n, accuracy, avg_cot_tokens, within_budget, mean_ratio, predictions_path}``."""
    out: dict[str, list[dict]] = {}
    for path in sorted(Path(eval_dir).glob("*/budget/budget-*/metrics.json")):
        benchmark = path.relative_to(eval_dir).parts[0]
        m = re.fullmatch(r"budget-(\d+)", path.parent.name)
        data = read_json(path)
        if not m or not isinstance(data, dict):
            continue
        pred = path.with_name("predictions.jsonl")
        out.setdefault(benchmark, []).append({
            "budget": int(m.group(1)), **{k: data.get(k) for k in ("n", "accuracy", "avg_cot_tokens", "within_budget",
                                                                   "mean_ratio")},
            "predictions_path": _rel(pred, out_dir) if pred.is_file() else None})
    for rows in out.values():
        rows.sort(key=lambda r: r["budget"])
    return out


def render_budget_table(rows: list[dict]) -> str:
    """Budget mode per budget N: accuracy (%), mean CoT tokens, share of CoTs within N (%), mean γ chosen."""
    lines = ["| Budget N (CoT tokens) | Accuracy (%) | Mean CoT tokens | Within budget (%) | Mean γ | n | Predictions |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        acc = None if r["accuracy"] is None else 100.0 * r["accuracy"]
        within = None if r["within_budget"] is None else 100.0 * r["within_budget"]
        link = f"[predictions.jsonl]({r['predictions_path']})" if r["predictions_path"] else MISSING
        lines.append(f"| {r['budget']} | {_fmt(acc, 1)} | {_fmt(r['avg_cot_tokens'], 1)} | {_fmt(within, 1)} "
                     f"| {_fmt(r['mean_ratio'], 2)} | {MISSING if r['n'] is None else r['n']} | {link} |")
    return "\n".join(lines)


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
        compress["path"] = _rel(Path(compress["path"]), out_dir)
    loss_path = Path(loss_log) if loss_log else run_dir / "train" / "loss_log.jsonl"
    loss = collect_loss(loss_path)
    train = None
    if loss is not None:
        train = {"loss_log": _rel(loss_path, out_dir), "steps": len(loss),
                 "first_loss": loss[0]["loss"] if loss else None, "last_loss": loss[-1]["loss"] if loss else None}
    return {"schema_version": REPORT_SCHEMA_VERSION, "name": run_name(run_dir),
            "run_dir": str(run_dir), "evaluate_dir": _rel(eval_dir, out_dir) if eval_dir != out_dir else ".",
            "benchmarks": benchmarks, "budgets": collect_budgets(eval_dir, out_dir), "compress": compress, "train": train, "notes": notes}


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------

def _fmt(v: float | int | None, digits: int) -> str:
    return MISSING if v is None else f"{v:.{digits}f}"


def _uniq(rows: list[dict], key: str) -> str:
    vals = sorted({str(r[key]) for r in rows if r.get(key) is not None})
    return ", ".join(f"`{v}`" for v in vals) if vals else MISSING


def render_table(rows: list[dict]) -> str:
    """The paper-style Markdown table for one benchmark's rows (already in table order).

    Columns: method (γ), accuracy (%, 1 decimal), avg CoT tokens (1 decimal), ActRatio (2 decimals),
    latency (s/sample, 3 decimals; the mode goes in the header when every row shares it), n, the LoRA
    adapter the row was generated with (``none`` for base-model rows), and a link to the row's
    ``predictions.jsonl``. Absent values are ``—``.
    """
    modes = {r["latency_mode"] for r in rows if r.get("sample_latency_s") is not None}
    shared_mode = next(iter(modes)) if len(modes) == 1 and None not in modes else None
    lat_head = f"Latency (s/sample, {shared_mode})" if shared_mode else "Latency (s/sample)"
    lines = [f"| Method | Accuracy (%) | Avg CoT tokens | ActRatio | {lat_head} | n | Adapter | Predictions |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for d in rows:
        r = ReportRow.from_dict(d)
        acc = None if r.accuracy is None else 100.0 * r.accuracy
        lat = _fmt(r.sample_latency_s, 3)
        if r.sample_latency_s is not None and not shared_mode:
            lat += f" ({r.latency_mode or 'mode unknown'})"
        link = f"[predictions.jsonl]({r.predictions_path})" if r.predictions_path else MISSING
        n = MISSING if r.n is None else str(r.n)
        adapter = f"`{r.adapter}`" if r.adapter else "none"
        lines.append(f"| {r.label} | {_fmt(acc, 1)} | {_fmt(r.avg_cot_tokens, 1)} | {_fmt(r.act_ratio, 2)} "
                     f"| {lat} | {n} | {adapter} | {link} |")
    return "\n".join(lines)


def render_compress_table(compress: dict) -> str:
    """Requested γ vs what the compressor achieved (ratios in the target model's tokens)."""
    lines = ["| Requested γ | n | Mean achieved ratio | Mean \\|error\\| | p95 \\|error\\| | Overshoot share (%) "
             "| Achieved p5–p95 |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for e in compress["ratios"]:
        over = None if e["overshoot_share"] is None else 100.0 * e["overshoot_share"]
        band = (f"{e['achieved_p05']:.3f}–{e['achieved_p95']:.3f}" if e["achieved_p05"] is not None else MISSING)
        lines.append(f"| {_fmt_ratio(e['ratio'])} | {MISSING if e['n'] is None else e['n']} "
                     f"| {_fmt(e['mean_achieved_ratio'], 3)} | {_fmt(e['mean_abs_error'], 3)} "
                     f"| {_fmt(e['p95_abs_error'], 3)} | {_fmt(over, 1)} | {band} |")
    return "\n".join(lines)


def _image(plots: dict, key: str, alt: str) -> str:
    p = plots.get(key)
    if p and p.get("path"):
        return f"![{alt}]({p['path']})"
    reason = (p or {}).get("skipped", "plots not drawn")
    return f"_Plot skipped: {reason}._"


def render_markdown(report: dict) -> str:
    """``report.md`` text from :func:`build_report`'s data plus ``report["plots"]``
    (``{key: {"path": relative PNG path} | {"skipped": reason}}``; may be empty)."""
    plots = report.get("plots") or {}
    where = "this folder" if report["evaluate_dir"] == "." else f"`{report['evaluate_dir']}`"
    out = [f"# TokenSkip report: {report['name']}", "",
           f"Results read from {where}. Every number below is copied from a "
           f"`metrics.json`; `{MISSING}` means the file does not give it. Each row links to the "
           "predictions it was computed from.", "",
           "ActRatio = average CoT tokens at γ ÷ average CoT tokens of the original model (paper §4); "
           "CoT tokens are counted in the target model's tokenizer.", ""]
    if not report["benchmarks"]:
        out += ["No evaluation results found.", ""]
    for bench, rows in sorted(report["benchmarks"].items(), key=lambda kv: _sort_key_benchmark(kv[0])):
        out += [f"## {BENCHMARK_LABELS.get(bench, bench)}", "",
                f"Model: {_uniq(rows, 'model')} · backend: {_uniq(rows, 'backend')} · "
                f"dtype: {_uniq(rows, 'dtype')} · max new tokens: {_uniq(rows, 'max_new_tokens')}. "
                "The Adapter column names the LoRA adapter each row was generated with "
                "(`none`: the base model).", "",
                render_table(rows), "",
                _image(plots, f"accuracy_vs_tokens:{bench}", f"{bench}: accuracy vs average CoT tokens"), "",
                _image(plots, f"cot_hist:{bench}", f"{bench}: CoT length per γ"), ""]
        if (report.get("budgets") or {}).get(bench):
            out += ["### Token budget", "",
                    "TokenSkip with a CoT budget N per question: γ = N ÷ predicted original CoT tokens, "
                    "decoding capped at N (`tokenskip evaluate --method budget`).", "",
                    render_budget_table(report["budgets"][bench]), ""]
    out += ["## Ratio control", "",
            "Requested γ against the ratio obtained: by the compressor on the training CoTs, and by the "
            "trained model and the prompt baseline at inference (ActRatio).", "",
            _image(plots, "ratio_control", "achieved vs requested ratio"), ""]
    if report.get("compress"):
        c = report["compress"]
        out += ["### Compressor", "",
                f"From `{c['path']}` · scorer: `{c.get('scorer') or MISSING}` · "
                f"model: `{c.get('model') or MISSING}`", "",
                render_compress_table(c), ""]
    else:
        out += ["_No compressor summary (compress/summary.json) in this run._", ""]
    out += ["## Training", ""]
    if report.get("train"):
        t = report["train"]
        out += [f"Loss log `{t['loss_log']}`: {t['steps']} logged steps, loss {_fmt(t['first_loss'], 4)} → "
                f"{_fmt(t['last_loss'], 4)}.", ""]
    else:
        out += ["_No training loss log (train/loss_log.jsonl) in this run._", ""]
    if plots or report.get("train"):
        out += [_image(plots, "train_loss", "training loss"), ""]
    if report.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------

_METHOD_STYLE = {"original": ("black", "*"), "prompt": ("tab:orange", "s"), "truncation": ("tab:red", "v"),
                 "tokenskip": ("tab:blue", "o")}

#: Fewer logged points than this and the learning-rate curve is not drawn: a cosine schedule with warmup
#: sampled at 3 steps is a triangle whose peak is not the peak rate asked for.
MIN_LR_POINTS = 8


def _save(fig, path: Path) -> None:
    """Write ``fig`` as a PNG and free it (one place, so tests can look at the figure instead)."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)


def _style(method: str) -> tuple[str, str]:
    return _METHOD_STYLE.get(method, ("tab:gray", "D"))


def _overlap(a, b) -> float:
    """Overlap area of two display-space bounding boxes (pixels²)."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(ax, items: list[tuple[float, float, str, str]], fontsize: float = 7.5) -> list:
    """Annotate data points ``(x, y, text, color)`` so that labels overlap neither one another, the
    drawn lines and markers, nor the axes frame (greedy: each label takes the first free spot of 8
    around its point, at two distances; when none is free, the spot with the least overlap).
    Returns the texts."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = []
    for line in ax.get_lines():  # markers and line segments, sampled every ~4 px
        xy = ax.transData.transform(line.get_xydata())
        for (x0, y0), (x1, y1) in zip(xy, xy[1:]) if line.get_linestyle() not in ("None", "none") else []:
            k = max(1, int(math.hypot(x1 - x0, y1 - y0) / 4))
            taken += [Bbox.from_extents(x0 + (x1 - x0) * i / k - 1.5, y0 + (y1 - y0) * i / k - 1.5,
                                        x0 + (x1 - x0) * i / k + 1.5, y0 + (y1 - y0) * i / k + 1.5)
                      for i in range(k + 1)]
        taken += [Bbox.from_extents(px - 5, py - 5, px + 5, py + 5) for px, py in xy]
    spots = [(dx * r, dy * r, ha, va) for r in (1, 2.2, 3.6, 5.0) for dx, dy, ha, va in
             ((5, 5, "left", "bottom"), (5, -5, "left", "top"), (-5, 5, "right", "bottom"),
              (-5, -5, "right", "top"), (0, 7, "center", "bottom"), (0, -7, "center", "top"),
              (7, 0, "left", "center"), (-7, 0, "right", "center"))]
    texts = []
    for x, y, text, color in items:
        best = None
        for dx, dy, ha, va in spots:
            t = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                            fontsize=fontsize, color=color)
            box = t.get_window_extent(renderer)
            outside = max(0.0, frame.x0 - box.x0) + max(0.0, box.x1 - frame.x1) + \
                max(0.0, frame.y0 - box.y0) + max(0.0, box.y1 - frame.y1)
            cost = sum(_overlap(box, o) for o in taken) + 1000.0 * outside
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, t, box)
            else:
                t.remove()
            if cost == 0:
                break
        taken.append(best[2])
        texts.append(best[1])
    return texts


def plot_accuracy_vs_tokens(rows: list[dict], path: Path, title: str) -> str | None:
    """Accuracy (%, 0–100 scale) vs average CoT tokens, one line per method, points labelled by γ.

    The y axis starts at 0 and ends at the next multiple of 10 above the best accuracy (+5 points of
    room, at most 100), so a 3 % model does not look like a 90 % one. Returns ``None`` after writing
    ``path``, or the reason the plot was skipped.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    pts = [r for r in rows if r["accuracy"] is not None and r["avg_cot_tokens"] is not None]
    if not pts:
        return "no row has both accuracy and avg_cot_tokens"
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    by_method: dict[str, list[dict]] = {}
    for r in pts:
        by_method.setdefault(r["method"], []).append(r)
    labels = []
    for method in sorted(by_method, key=_sort_key_method):
        group = sorted(by_method[method], key=lambda r: -(r["ratio"] or 1.0))
        color, marker = _style(method)
        xs = [r["avg_cot_tokens"] for r in group]
        ys = [100.0 * r["accuracy"] for r in group]
        ax.plot(xs, ys, marker=marker, color=color, markersize=12 if marker == "*" else 6, clip_on=False,
                linestyle="-" if len(group) > 1 else "none", label=METHOD_LABELS.get(method, method),
                zorder=2.5 if method == "original" else 2, alpha=0.9)  # the reference star stays visible
        labels += [(x, y, f"γ={_fmt_ratio(r['ratio'])}", color) for r, x, y in zip(group, xs, ys)
                   if r["ratio"] is not None]
    top = min(100.0, 10.0 * math.ceil((max(100.0 * r["accuracy"] for r in pts) + 5.0) / 10.0))
    ax.set_ylim(0.0, top)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10], integer=True))
    ax.margins(x=0.15)  # room for the γ labels inside the frame
    ax.set_xlabel("average CoT tokens per sample")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # below the frame: inside it the legend hides points (a 0 % model has all of them on the bottom edge)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, frameon=False)
    fig.tight_layout()
    place_labels(ax, labels)
    _save(fig, path)
    return None


def plot_ratio_control(report: dict, path: Path) -> str | None:
    """Achieved vs requested γ: compressor (mean, with p5–p95 bars of the rows or ±p95 |error|),
    TokenSkip and prompt-baseline ActRatio per benchmark, and the y = x diagonal.

    The x axis covers the requested γ only, so it stays within (0, 1]; the y axis grows past 1 when a
    method's CoTs came out longer than the original's. Returns the skip reason or ``None``.
    """
    import matplotlib.pyplot as plt

    series = []  # (label, color, marker, xs, ys, yerr, linestyle)
    comp = report.get("compress")
    if comp:
        es = [e for e in comp["ratios"] if e["mean_achieved_ratio"] is not None]
        if es:
            xs = [e["ratio"] for e in es]
            ys = [e["mean_achieved_ratio"] for e in es]
            if all(e["achieved_p05"] is not None for e in es):
                yerr = [[max(0.0, y - e["achieved_p05"]) for y, e in zip(ys, es)],
                        [max(0.0, e["achieved_p95"] - y) for y, e in zip(ys, es)]]
                label = "compressor on training CoTs (mean; bars: p5–p95)"
            elif all(e["p95_abs_error"] is not None for e in es):
                yerr = [e["p95_abs_error"] for e in es]
                label = "compressor on training CoTs (mean ± p95 |error|)"
            else:
                yerr, label = None, "compressor on training CoTs (mean)"
            series.append((label, "tab:green", "^", xs, ys, yerr, "-"))
    benches = sorted(report["benchmarks"], key=_sort_key_benchmark)
    for b, bench in enumerate(benches):
        for method in ("tokenskip", "prompt"):
            g = sorted((r for r in report["benchmarks"][bench] if r["method"] == method and r["ratio"] is not None
                        and r["act_ratio"] is not None), key=lambda r: r["ratio"])
            if g:
                color, marker = _style(method)
                series.append((f"{METHOD_LABELS[method]} ActRatio ({BENCHMARK_LABELS.get(bench, bench)})",
                               color, marker, [r["ratio"] for r in g], [r["act_ratio"] for r in g],
                               None, ("-", "--", ":", "-.")[b % 4]))
    if not series:
        return "no compressor summary and no TokenSkip/Prompt row with an act_ratio"
    fig, ax = plt.subplots(figsize=(6.0, 5.6))
    gammas = [x for s_ in series for x in s_[3]]
    x_lo = max(0.0, math.floor(10 * min(gammas) - 0.5) / 10)
    ys_all = [y for s_ in series for y in s_[4]]
    for s_ in series:
        if s_[5] is not None and isinstance(s_[5][0], list):
            ys_all += [y - d for y, d in zip(s_[4], s_[5][0])] + [y + u for y, u in zip(s_[4], s_[5][1])]
    y_lo = max(0.0, min(x_lo, min(ys_all) - 0.05))
    y_hi = max(1.0, max(ys_all)) + 0.05
    ax.plot([x_lo, 1.0], [x_lo, 1.0], color="gray", linestyle=":", label="y = x (exact control)")
    for label, color, marker, xs, ys, yerr, ls in series:
        if yerr is not None:
            # hollow markers and thick capped bars drawn on top, so a narrow band still shows
            ax.errorbar(xs, ys, yerr=yerr, color=color, marker=marker, markerfacecolor="white", linestyle=ls,
                        capsize=6, elinewidth=2.0, capthick=2.0, zorder=4, clip_on=False, label=label)
        else:
            ax.plot(xs, ys, color=color, marker=marker, linestyle=ls, label=label, clip_on=False,
                    markerfacecolor=color if ls == "-" else "none", zorder=3)
    ax.set_xlim(x_lo, 1.0)
    ax.set_ylim(y_lo, y_hi)
    ax.set_xlabel("requested ratio γ (kept ÷ original tokens)")
    ax.set_ylabel("achieved ratio")
    ax.set_title("Ratio control")
    ax.grid(alpha=0.3)
    # below the frame: inside it the legend hides points
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return None


def plot_cot_hist(rows: list[dict], out_dir: Path, path: Path, title: str, bins: int) -> str | None:
    """CoT length per sample for the original model and each TokenSkip γ: one panel per series on a
    shared x axis (shared bins), with the series' median and the ``max_new_tokens`` cap marked (CoTs
    at the cap were cut off). Read from each row's ``predictions.jsonl``. Returns the skip reason or
    ``None``."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = []  # (label, tokens, cap)
    for r in rows:
        if r["method"] in ("original", "tokenskip") and r["predictions_path"]:
            toks = read_cot_tokens(out_dir / r["predictions_path"])
            if toks:
                label = "Original" if r["method"] == "original" else f"TokenSkip γ={_fmt_ratio(r['ratio'])}"
                groups.append((label, toks, r.get("max_new_tokens")))
    if not groups:
        return "no cot_tokens in the predictions of the Original or TokenSkip rows"
    caps = {c for _, _, c in groups if c}
    lo = 0
    hi = max([max(t) for _, t, _ in groups] + list(caps))
    edges = [lo + (hi - lo + 1) * i / bins for i in range(bins + 1)]
    fig, axes = plt.subplots(len(groups), 1, sharex=True, squeeze=False,
                             figsize=(6.4, 1.2 + 1.1 * len(groups)))
    cmap = plt.get_cmap("viridis")
    for i, ((label, toks, cap), ax) in enumerate(zip(groups, axes[:, 0])):
        color = "black" if label == "Original" else cmap(0.8 * i / max(len(groups) - 1, 1))
        ax.hist(toks, bins=edges, color=color, alpha=0.75)
        med = sorted(toks)[len(toks) // 2]
        ax.axvline(med, color=color, linestyle="--", linewidth=1)
        at_cap = sum(1 for t in toks if cap and t >= cap)
        info = f"{label}: n={len(toks)}, median {med}" + (f", {at_cap} at the cap" if cap else "")
        ax.set_title(info, loc="left", fontsize=8)
        if cap:
            ax.axvline(cap, color="tab:red", linewidth=1.5)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
        ax.set_ylabel("samples", fontsize=8)
        ax.grid(alpha=0.3)
    cap_note = f"; red: max_new_tokens cap = {max(caps)}" if caps else ""
    axes[-1, 0].set_xlabel(f"CoT tokens per sample (dashed: median{cap_note})")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    return None


def _short(v: float) -> str:
    """Short tick label: 3 significant digits, scientific notation for small/large values."""
    return f"{v:.3g}"


def plot_loss(points: list[dict], path: Path, train_config: dict | None = None) -> str | None:
    """Training loss vs optimizer step (integer ticks).

    The learning rate goes on a second axis only when at least :data:`MIN_LR_POINTS` points were
    logged; otherwise, and in any case when ``train_config`` (the run's ``train_config.json``) gives
    them, the peak rate, schedule and warmup asked for are written in the title line instead.
    Returns the skip reason or ``None``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    if not points:
        return "the loss log has no (step, loss) rows"
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot([p["step"] for p in points], [p["loss"] for p in points], color="tab:blue",
            marker="o" if len(points) < 50 else None, markersize=4, label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss", color="tab:blue")
    if len(points) < MIN_LR_POINTS:
        ax.set_xticks([p["step"] for p in points])  # the logged steps themselves
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
    lr = [(p["step"], p["lr"]) for p in points if isinstance(p["lr"], (int, float))]
    cfg = train_config or {}
    asked = []
    if isinstance(cfg.get("lr"), (int, float)):
        asked.append(f"peak lr {cfg['lr']:.1e}")
    if cfg.get("scheduler"):
        asked.append(f"{cfg['scheduler']} schedule")
    if isinstance(cfg.get("warmup_ratio"), (int, float)) and cfg["warmup_ratio"] > 0:
        asked.append(f"{100 * cfg['warmup_ratio']:g} % warmup")
    if len(lr) >= MIN_LR_POINTS:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in lr], [v for _, v in lr], color="tab:gray", linestyle="--", linewidth=1)
        ax2.set_ylabel("learning rate (logged)", color="tab:gray")
        ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.1e}"))
        ax2.set_ylim(bottom=0)
    elif lr:
        asked.append(f"too few points for an lr curve: {len(lr)}")
    title = "Training loss"
    ax.set_title(title + (f"\n({', '.join(asked)})" if asked else ""), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return None


def make_plots(report: dict, out_dir: str | os.PathLike, loss_points: list[dict] | None = None,
               hist_bins: int = 30, train_config: dict | None = None) -> dict[str, dict]:
    """Draw every plot into ``out_dir/plots/`` (matplotlib, Agg backend).

    Returns ``{key: {"path": PNG path relative to out_dir}}`` for drawn plots and
    ``{key: {"skipped": reason}}`` for plots without data. Keys: ``accuracy_vs_tokens:<bench>``,
    ``cot_hist:<bench>``, ``ratio_control``, ``train_loss``.
    """
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, dict] = {}

    def record(key: str, path: Path, reason: str | None) -> None:
        result[key] = {"skipped": reason} if reason else {"path": _rel(path, out_dir)}

    for bench, rows in report["benchmarks"].items():
        label = BENCHMARK_LABELS.get(bench, bench)
        p = plot_dir / f"accuracy_vs_tokens_{bench}.png"
        record(f"accuracy_vs_tokens:{bench}", p, plot_accuracy_vs_tokens(rows, p, f"{label}: accuracy vs CoT length"))
        p = plot_dir / f"cot_tokens_hist_{bench}.png"
        record(f"cot_hist:{bench}", p, plot_cot_hist(rows, out_dir, p, f"{label}: CoT length per γ", hist_bins))
    p = plot_dir / "ratio_control.png"
    record("ratio_control", p, plot_ratio_control(report, p))
    p = plot_dir / "train_loss.png"
    record("train_loss", p, "no train/loss_log.jsonl" if loss_points is None
           else plot_loss(loss_points, p, train_config))
    return result


# --------------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------------

def write_report(run_dir: str | os.PathLike, cfg: ReportConfig | None = None) -> Path:
    """Write ``report.md``, ``report.json`` and ``plots/*.png`` for ``run_dir``; return report.md's path.

    Raises:
        FileNotFoundError: no evaluation results under ``run_dir``.
        DataError: a malformed input file.
    """
    cfg = cfg or ReportConfig()
    cfg.validate()
    run_dir = Path(run_dir)
    out_dir = Path(cfg.out) if cfg.out else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(run_dir, out_dir, cfg.compress_dir, cfg.loss_log)
    if cfg.plots:
        loss_path = Path(cfg.loss_log) if cfg.loss_log else run_dir / "train" / "loss_log.jsonl"
        train_cfg_path = loss_path.parent / "train_config.json"
        train_cfg = read_json(train_cfg_path) if train_cfg_path.is_file() else None
        report["plots"] = make_plots(report, out_dir, collect_loss(loss_path), cfg.hist_bins,
                                     train_cfg if isinstance(train_cfg, dict) else None)
    else:
        report["plots"] = {}
    for key, p in report["plots"].items():
        if "skipped" in p:
            logger.info("plot %s skipped: %s", key, p["skipped"])
    write_json_atomic(out_dir / "report.json", report)
    md = out_dir / "report.md"
    write_text_atomic(md, render_markdown(report))
    return md


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="run folder (with evaluate/, compress/, train/) or an evaluate folder itself")
    add_dataclass_args(parser, ReportConfig)


def run_cli(args: argparse.Namespace) -> int:
    cfg = dataclass_from_args(ReportConfig, args)
    from tokenskip.console import say

    md = write_report(args.run_dir, cfg)
    say(str(md))
    return 0
