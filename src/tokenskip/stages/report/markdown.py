"""Report, part 2: ``report.md`` from the collected data (:mod:`tokenskip.stages.report.collect`)."""

from __future__ import annotations

from tokenskip.stages.report.collect import MISSING, ReportRow, bench_label, fmt_ratio


def _fmt(v: float | int | None, digits: int) -> str:
    return MISSING if v is None else f"{v:.{digits}f}"


def _uniq(rows: list[dict], key: str) -> str:
    vals = sorted({str(r[key]) for r in rows if r.get(key) is not None})
    return ", ".join(f"`{v}`" for v in vals) if vals else MISSING


def render_table(rows: list[dict]) -> str:
    """The paper-style Markdown table for one benchmark's rows (already in table order).

    Columns: method (γ), accuracy (%, 1 decimal; a sampled run shows pass@1 ± its std over the N samples and
    ``(pass@1, N samples)``), avg CoT tokens (1 decimal), ActRatio (2 decimals),
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
        acc_text = _fmt(acc, 1)
        if acc is not None and r.samples and r.accuracy_std is not None:
            acc_text += f" ± {100.0 * r.accuracy_std:.1f} (pass@1, {r.samples} samples)"
        lines.append(f"| {r.label} | {acc_text} | {_fmt(r.avg_cot_tokens, 1)} | {_fmt(r.act_ratio, 2)} "
                     f"| {lat} | {n} | {adapter} | {link} |")
    return "\n".join(lines)


def render_budget_table(rows: list[dict]) -> str:
    """Budget mode per budget N: accuracy (%), mean CoT tokens, share of CoTs within N (%), mean γ chosen."""
    lines = ["| Budget N (CoT tokens) | Accuracy (%) | Mean CoT tokens | Within budget (%) | Mean γ | n "
             "| Predictions |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        acc = None if r["accuracy"] is None else 100.0 * r["accuracy"]
        within = None if r["within_budget"] is None else 100.0 * r["within_budget"]
        link = f"[predictions.jsonl]({r['predictions_path']})" if r["predictions_path"] else MISSING
        lines.append(f"| {r['budget']} | {_fmt(acc, 1)} | {_fmt(r['avg_cot_tokens'], 1)} | {_fmt(within, 1)} "
                     f"| {_fmt(r['mean_ratio'], 2)} | {MISSING if r['n'] is None else r['n']} | {link} |")
    return "\n".join(lines)



def render_compress_table(compress: dict) -> str:
    """Requested γ vs what the compressor achieved (ratios in the target model's tokens)."""
    lines = ["| Requested γ | n | Mean achieved ratio | Mean \\|error\\| | p95 \\|error\\| | Overshoot share (%) "
             "| Achieved p5–p95 |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for e in compress["ratios"]:
        over = None if e["overshoot_share"] is None else 100.0 * e["overshoot_share"]
        band = (f"{e['achieved_p05']:.3f}–{e['achieved_p95']:.3f}" if e["achieved_p05"] is not None else MISSING)
        lines.append(f"| {fmt_ratio(e['ratio'])} | {MISSING if e['n'] is None else e['n']} "
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
    for bench, rows in sorted(report["benchmarks"].items()):
        out += [f"## {bench_label(bench, rows)}", "",
                f"Model: {_uniq(rows, 'model')} · backend: {_uniq(rows, 'backend')} · "
                f"dtype: {_uniq(rows, 'dtype')} · max new tokens: {_uniq(rows, 'max_new_tokens')}. "
                "The Adapter column names the LoRA adapter each row was generated with "
                "(`none`: the base model).", "",
                render_table(rows), "",
                _image(plots, f"accuracy_vs_tokens:{bench}", f"{bench}: accuracy vs average CoT tokens"), "",
                _image(plots, f"accuracy_vs_act_ratio:{bench}", f"{bench}: accuracy vs ActRatio"), "",
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
