"""Report stage: collect a run folder's results into ``report.md``, ``report.json`` and PNG plots.

In three parts, read top to bottom: :mod:`~tokenskip.stages.report.collect` (files -> plain data),
:mod:`~tokenskip.stages.report.markdown` (data -> ``report.md``), :mod:`~tokenskip.stages.report.plots` (data -> PNGs);
this module holds the settings and the runner.

Reads only other stages' output files (never their code):

* ``evaluate/<benchmark>/original/metrics.json`` and
  ``evaluate/<benchmark>/<method>/ratio-<γ>/metrics.json`` (+ ``predictions.jsonl`` beside each);
* ``compress/summary.json`` and ``compress/ratio-<γ>.jsonl`` (optional);
* ``train/loss_log.jsonl`` and ``train/train_config.json`` (optional: the loss plot names the peak learning
  rate, schedule and warmup asked for); ``manifest.json`` (optional, for the run name).

``RUN_DIR`` may also be an evaluate folder itself (``tokenskip report W/eval``).

Every number in the report is copied from those files; a value a file does not give is shown as
``—``, never filled in. The one number computed here is ActRatio when a run's ``metrics.json`` was
written against another ``original`` run than the one now beside it (or before any existed): it is
recomputed from the two ``predictions.jsonl`` files (:func:`tokenskip.contract.records.act_ratio`). Method and
benchmark labels, row order and plot styles come from each ``metrics.json`` (``method_label``,
``method_rank``, ``method_style``, ``ratio_requested``, ``benchmark_label``); a file without them shows
its folder names. Each table row links to the ``predictions.jsonl`` it came from, so a number
can be traced to the samples behind it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from tokenskip.contract.io import read_json, write_json_atomic, write_text_atomic
from tokenskip.contract.layout import LOSS_LOG, REPORT_JSON, REPORT_MD, TRAIN_CONFIG
from tokenskip.stages.report.collect import build_report, collect_loss
from tokenskip.stages.report.markdown import render_markdown
from tokenskip.stages.report.plots import make_plots

logger = logging.getLogger(__name__)

__all__ = ["ReportConfig", "write_report", "run_report"]


@dataclass
class ReportConfig:
    """Settings of ``tokenskip report`` (on the command line the run folder is the positional ``RUN_DIR``;
    a pipeline sets ``run_dir`` to its run folder)."""

    run_dir: str = field(default="", metadata={"positional": True,
                                               "help": "run folder (with evaluate/, compress/, train/) or an "
                                                        "evaluate folder itself"})
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
        loss_path = Path(cfg.loss_log) if cfg.loss_log else run_dir / "train" / LOSS_LOG
        train_cfg_path = loss_path.parent / TRAIN_CONFIG
        train_cfg = read_json(train_cfg_path) if train_cfg_path.is_file() else None
        report["plots"] = make_plots(report, out_dir, collect_loss(loss_path), cfg.hist_bins,
                                     train_cfg if isinstance(train_cfg, dict) else None)
    else:
        report["plots"] = {}
    for key, p in report["plots"].items():
        if "skipped" in p:
            logger.info("plot %s skipped: %s", key, p["skipped"])
    write_json_atomic(out_dir / REPORT_JSON, report)
    md = out_dir / REPORT_MD
    write_text_atomic(md, render_markdown(report))
    return md


def run_report(cfg: ReportConfig) -> Path:
    """Stage runner: :func:`write_report` for ``cfg.run_dir``; returns report.md's path."""
    if not cfg.run_dir:
        raise ValueError("report: the run folder (RUN_DIR) is required")
    return write_report(cfg.run_dir, cfg)


def show(cfg: ReportConfig, path) -> None:
    """What ``tokenskip report`` prints: the path of report.md."""
    from tokenskip.contract.console import say

    say(str(path))
