"""Report, part 3: the PNG plots (matplotlib, Agg backend) from the collected data."""

from __future__ import annotations

import math
import os
from pathlib import Path

from tokenskip.contract.layout import ORIGINAL, PLOT_RATIO_CONTROL, PLOT_TRAIN_LOSS
from tokenskip.stages.report.collect import bench_label, fmt_ratio, method_key, read_cot_tokens, rel_link, row_label

#: Fewer logged points than this and the learning-rate curve is not drawn: a cosine schedule with warmup
#: sampled at 3 steps is a triangle whose peak is not the peak rate asked for.
MIN_LR_POINTS = 8


def _save(fig, path: Path) -> None:
    """Write ``fig`` as a PNG and free it (one place, so tests can look at the figure instead)."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)


def _style(row: dict) -> tuple[str, str]:
    """``(color, marker)`` of a row's method, from its metrics.json (gray diamonds when absent)."""
    style = row.get("method_style")
    return (style[0], style[1]) if style else ("tab:gray", "D")


def overlap(a, b) -> float:
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
            cost = sum(overlap(box, o) for o in taken) + 1000.0 * outside
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


def plot_accuracy_vs_tokens(rows: list[dict], path: Path, title: str, x: str = "avg_cot_tokens") -> str | None:
    """Accuracy (%, 0–100 scale) vs average CoT tokens (``x="act_ratio"``: vs ActRatio, the paper's
    Figure 4 axes), one line per method, points labelled by γ.

    The y axis starts at 0 and ends at the next multiple of 10 above the best accuracy (+5 points of
    room, at most 100), so a 3 % model does not look like a 90 % one. Returns ``None`` after writing
    ``path``, or the reason the plot was skipped.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    pts = [r for r in rows if r["accuracy"] is not None and r.get(x) is not None]
    if not pts:
        return f"no row has both accuracy and {x}"
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    by_method: dict[str, list[dict]] = {}
    for r in pts:
        by_method.setdefault(r["method"], []).append(r)
    labels = []
    for method in sorted(by_method, key=lambda m: method_key(by_method[m][0])):
        group = sorted(by_method[method], key=lambda r: -(r["ratio"] or 1.0))
        color, marker = _style(group[0])
        xs = [r[x] for r in group]
        ys = [100.0 * r["accuracy"] for r in group]
        ax.plot(xs, ys, marker=marker, color=color, markersize=12 if marker == "*" else 6, clip_on=False,
                linestyle="-" if len(group) > 1 else "none", label=row_label(group[0]),
                zorder=2.5 if method == ORIGINAL else 2, alpha=0.9)  # the reference star stays visible
        labels += [(x, y, f"γ={fmt_ratio(r['ratio'])}", color) for r, x, y in zip(group, xs, ys)
                   if r["ratio"] is not None]
    top = min(100.0, 10.0 * math.ceil((max(100.0 * r["accuracy"] for r in pts) + 5.0) / 10.0))
    ax.set_ylim(0.0, top)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10], integer=True))
    ax.margins(x=0.15)  # room for the γ labels inside the frame
    ax.set_xlabel("ActRatio (CoT tokens ÷ the original's)" if x == "act_ratio" else "average CoT tokens per sample")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # below the frame: inside it the legend hides points (a 0 % model has all of them on the bottom edge)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, frameon=False)
    fig.tight_layout()
    place_labels(ax, labels)
    _save(fig, path)
    return None


def _ratio_control_series(report: dict) -> list[tuple]:
    """The series of :func:`plot_ratio_control`, each ``(label, color, marker, xs, ys, yerr, linestyle)`` with
    ``xs`` the requested γ: the compressor's mean achieved ratio on the training CoTs (``yerr``: the
    p5–p95 band of its rows as ``[below, above]``, else ±p95 |error|, else ``None``), then per benchmark
    the ActRatio of each method that was asked for γ (``yerr`` ``None``; one line style per benchmark).
    """
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
    benches = sorted(report["benchmarks"])
    for b, bench in enumerate(benches):
        requested = sorted({r["method"]: r for r in report["benchmarks"][bench] if r.get("ratio_requested")}.values(),
                           key=lambda r: -(r.get("method_rank") or 0))
        for method in (r["method"] for r in requested):
            g = sorted((r for r in report["benchmarks"][bench] if r["method"] == method and r["ratio"] is not None
                        and r["act_ratio"] is not None), key=lambda r: r["ratio"])
            if g:
                color, marker = _style(g[0])
                series.append((f"{row_label(g[0])} ActRatio ({bench_label(bench, report['benchmarks'][bench])})",
                               color, marker, [r["ratio"] for r in g], [r["act_ratio"] for r in g],
                               None, ("-", "--", ":", "-.")[b % 4]))
    return series


def plot_ratio_control(report: dict, path: Path) -> str | None:
    """Achieved vs requested γ: compressor (mean, with p5–p95 bars of the rows or ±p95 |error|),
    TokenSkip and prompt-baseline ActRatio per benchmark, and the y = x diagonal.

    The x axis covers the requested γ only, so it stays within (0, 1]; the y axis grows past 1 when a
    method's CoTs came out longer than the original's. Returns the skip reason or ``None``.
    """
    import matplotlib.pyplot as plt

    series = _ratio_control_series(report)
    if not series:
        return "no compressor summary and no row of a method asked for γ (TokenSkip, Prompt) with an act_ratio"
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
    """CoT length per sample for the original model and each γ of the trained adapter (rows with an
    ``adapter``: TokenSkip): one panel per series on a
    shared x axis (shared bins), with the series' median and the ``max_new_tokens`` cap marked (CoTs
    at the cap were cut off). Read from each row's ``predictions.jsonl``. Returns the skip reason or
    ``None``."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = []  # (label, tokens, cap, is the baseline)
    for r in rows:
        if (r["method"] == ORIGINAL or r.get("adapter")) and r["predictions_path"]:
            toks = read_cot_tokens(out_dir / r["predictions_path"])
            if toks:
                label = row_label(r) if r["ratio"] is None else f"{row_label(r)} γ={fmt_ratio(r['ratio'])}"
                groups.append((label, toks, r.get("max_new_tokens"), r["method"] == ORIGINAL))
    if not groups:
        return "no cot_tokens in the predictions of the Original or TokenSkip rows"
    caps = {c for _, _, c, _ in groups if c}
    lo = 0
    hi = max([max(t) for _, t, _, _ in groups] + list(caps))
    edges = [lo + (hi - lo + 1) * i / bins for i in range(bins + 1)]
    fig, axes = plt.subplots(len(groups), 1, sharex=True, squeeze=False,
                             figsize=(6.4, 1.2 + 1.1 * len(groups)))
    cmap = plt.get_cmap("viridis")
    for i, ((label, toks, cap, baseline), ax) in enumerate(zip(groups, axes[:, 0])):
        color = "black" if baseline else cmap(0.8 * i / max(len(groups) - 1, 1))
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
    ``accuracy_vs_act_ratio:<bench>``, ``cot_hist:<bench>``, ``ratio_control``, ``train_loss``.
    """
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, dict] = {}

    def record(key: str, path: Path, reason: str | None) -> None:
        result[key] = {"skipped": reason} if reason else {"path": rel_link(path, out_dir)}

    for bench, rows in report["benchmarks"].items():
        label = bench_label(bench, rows)
        p = plot_dir / f"accuracy_vs_tokens_{bench}.png"
        record(f"accuracy_vs_tokens:{bench}", p, plot_accuracy_vs_tokens(rows, p, f"{label}: accuracy vs CoT length"))
        p = plot_dir / f"accuracy_vs_act_ratio_{bench}.png"
        record(f"accuracy_vs_act_ratio:{bench}", p,
               plot_accuracy_vs_tokens(rows, p, f"{label}: accuracy vs ActRatio", x="act_ratio"))
        p = plot_dir / f"cot_tokens_hist_{bench}.png"
        record(f"cot_hist:{bench}", p, plot_cot_hist(rows, out_dir, p, f"{label}: CoT length per γ", hist_bins))
    p = plot_dir / PLOT_RATIO_CONTROL
    record("ratio_control", p, plot_ratio_control(report, p))
    p = plot_dir / PLOT_TRAIN_LOSS
    record("train_loss", p, "no train/loss_log.jsonl" if loss_points is None
           else plot_loss(loss_points, p, train_config))
    return result
