"""Report stage on synthetic run folders written in the evaluate/compress/train output format."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from tokenskip.cli import main as cli_main
from tokenskip.contract.io import DataError
from tokenskip.contract.stats import percentile
from tokenskip.stages import report as rep
from tokenskip.stages.report.collect import ReportRow, build_report, collect_rows
from tokenskip.stages.report.plots import (
    overlap,
    place_labels,
    plot_accuracy_vs_tokens,
    plot_cot_hist,
    plot_loss,
    plot_ratio_control,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


LABELS = {"original": ("Original", 0, "black", False), "prompt": ("Prompt", 10, "tab:orange", True),
          "truncation": ("Truncation", 20, "tab:red", False), "tokenskip": ("TokenSkip", 30, "tab:blue", True)}
BENCH_LABELS = {"gsm8k": "GSM8K", "math": "MATH-500"}


def _metrics(benchmark, method, ratio, n, accuracy, avg, act_ratio, latency=0.25, mode="amortized"):
    # as evaluate writes it: labels and order come from the method and benchmark registries
    return {"schema_version": 1, "benchmark": benchmark, "benchmark_label": BENCH_LABELS.get(benchmark),
            "method": method, "method_label": LABELS[method][0], "method_rank": LABELS[method][1],
            "method_style": [LABELS[method][2], "o"], "ratio_requested": LABELS[method][3],
            "ratio": ratio, "n": n,
            "accuracy": accuracy, "avg_cot_tokens": avg, "median_cot_tokens": avg, "act_ratio": act_ratio,
            "sample_latency_s": latency, "latency_mode": mode, "tokens_per_s": 100.0,
            "model": "smollm2-135m-instruct", "adapter": None if method != "tokenskip" else "run/train/adapter",
            "dtype": "float32", "backend": "hf", "settings": {"max_new_tokens": 512}}


def _write_cell(folder: Path, metrics: dict, cot_tokens: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    with (folder / "predictions.jsonl").open("w") as f:
        for i, t in enumerate(cot_tokens):
            f.write(json.dumps({"id": f"q{i}", "prompt": "p", "output": "o", "cot": "c", "cot_tokens": t,
                                "pred": "1", "gold": "1", "correct": True, "latency_s": 0.2,
                                "finish_reason": "stop"}) + "\n")


# (method, γ, accuracy, avg tokens, act_ratio); prompt γ=0.5 has no act_ratio (→ "—")
CELLS = [
    ("original", None, 0.615, 200.0, None),
    ("prompt", 0.5, 0.58, 180.0, None),
    ("prompt", 0.7, 0.6, 190.0, 0.95),
    ("truncation", 0.5, 0.2, 100.0, 0.5),
    ("truncation", 0.7, 0.35, 140.0, 0.7),
    ("tokenskip", 0.5, 0.55, 110.0, 0.55),
    ("tokenskip", 1.0, 0.62, 204.0, 1.02),
    ("tokenskip", 0.7, 0.59, 150.0, 0.75),
]


def make_run(root: Path, benchmarks=("gsm8k", "math"), compress=True, loss=True, manifest=True) -> Path:
    run = root / "myrun"
    for b, bench in enumerate(benchmarks):
        for method, ratio, acc, avg, act in CELLS:
            acc = round(acc - 0.1 * b, 4)  # different numbers per benchmark
            sub = "original" if ratio is None else f"{method}/ratio-{ratio}"
            n = 4
            toks = [int(avg) - 10, int(avg) - 5, int(avg) + 5, int(avg) + 10]
            _write_cell(run / "evaluate" / bench / sub, _metrics(bench, method, ratio, n, acc, avg, act), toks)
    if compress:
        (run / "compress").mkdir(parents=True)
        ratios = {}
        for g in (0.9, 0.7, 0.5):
            achieved = [g - 0.02, g, g + 0.03, g + 0.01]
            ratios[str(g)] = {"n": 4, "mean_achieved_ratio": sum(achieved) / 4, "mean_abs_error": 0.015,
                              "p95_abs_error": 0.028, "overshoot_share": 0.5}
            with (run / "compress" / f"ratio-{g}.jsonl").open("w") as f:
                for i, a in enumerate(achieved):
                    f.write(json.dumps({"id": f"t{i}", "ratio": g, "original_tokens": 100,
                                        "kept_tokens": round(100 * a), "achieved_ratio": a}) + "\n")
        (run / "compress" / "summary.json").write_text(json.dumps(
            {"scorer": "llmlingua2", "model": "tiny-scorer", "ratios": ratios}))
    if loss:
        (run / "train").mkdir(parents=True)
        with (run / "train" / "loss_log.jsonl").open("w") as f:
            for s in range(1, 21):
                row = {"step": s, "loss": 2.0 / s ** 0.5, "lr": 5e-5 * (1 - s / 20), "epoch": s / 10}
                f.write(json.dumps(row) + "\n")
    if manifest:
        (run / "manifest.json").write_text(json.dumps({"name": "smoke-run", "stages": {}}))
    return run


def _table(md: str, heading: str) -> list[str]:
    """Table lines (header excluded) under a '## heading'."""
    section = md.split(f"## {heading}\n", 1)[1]
    lines = [ln for ln in section.split("\n## ", 1)[0].splitlines() if ln.startswith("| ")]
    return lines[1:]  # drop header; separator starts with '|-' so not included


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One full synthetic run reported once, shared by the read-only tests below."""
    run = make_run(tmp_path_factory.mktemp("full"))
    md_path = rep.write_report(run)
    return run, md_path, md_path.read_text()


def test_table_numbers_order_and_links(full_run):
    run, md_path, md = full_run
    assert md_path == run / "report.md"
    assert md.startswith("# TokenSkip report: smoke-run")
    rows = _table(md, "GSM8K")
    labels = [_cells(r)[0] for r in rows]
    assert labels == ["Original", "Prompt (γ=0.7)", "Prompt (γ=0.5)", "Truncation (γ=0.7)",
                      "Truncation (γ=0.5)", "TokenSkip (γ=1.0)", "TokenSkip (γ=0.7)", "TokenSkip (γ=0.5)"]
    by_label = {_cells(r)[0]: _cells(r) for r in rows}
    assert by_label["Original"][1:6] == ["61.5", "200.0", "—", "0.250", "4"]
    assert by_label["Prompt (γ=0.5)"][3] == "—"  # act_ratio null in metrics.json
    assert by_label["TokenSkip (γ=1.0)"][1:4] == ["62.0", "204.0", "1.02"]
    assert by_label["TokenSkip (γ=0.5)"][1:4] == ["55.0", "110.0", "0.55"]
    assert "Latency (s/sample, amortized)" in md
    # MATH table has its own numbers (accuracy − 10 points in the synthetic data)
    math_rows = {_cells(r)[0]: _cells(r) for r in _table(md, "MATH-500")}
    assert math_rows["Original"][1] == "51.5"
    # every link resolves to the right predictions file
    for line in rows + _table(md, "MATH-500"):
        target = re.search(r"\]\(([^)]+)\)", _cells(line)[7]).group(1)
        assert (md_path.parent / target).is_file()
    assert "(evaluate/gsm8k/tokenskip/ratio-0.5/predictions.jsonl)" in by_label["TokenSkip (γ=0.5)"][7]
    # the adapter is named per row: only TokenSkip rows were generated with it
    assert {label: cells[6] for label, cells in by_label.items()} == {
        label: "`run/train/adapter`" if label.startswith("TokenSkip") else "none" for label in labels}
    assert "max new tokens: `512`" in md


def test_compressor_section_and_report_json(full_run):
    run, md_path, md = full_run
    comp = _table(md, "Ratio control")
    assert [_cells(r)[0] for r in comp] == ["0.9", "0.7", "0.5"]
    c07 = _cells(comp[1])
    assert c07[1:6] == ["4", "0.705", "0.015", "0.028", "50.0"]
    assert c07[6] == "0.683–0.727"  # p5/p95 of the rows' achieved ratios (0.68, 0.70, 0.71, 0.73)
    data = json.loads((run / "report.json").read_text())
    assert data["name"] == "smoke-run" and data["schema_version"] == 1
    rebuilt = [ReportRow.from_dict(d) for d in data["benchmarks"]["gsm8k"]]
    fresh = collect_rows(run / "evaluate", run)
    assert rebuilt == [r for r in fresh if r.benchmark == "gsm8k"]
    assert rebuilt[0].accuracy == 0.615 and rebuilt[0].act_ratio is None
    assert data["compress"]["ratios"][0]["ratio"] == 0.9
    assert data["train"]["steps"] == 20 and data["train"]["last_loss"] == pytest.approx(2.0 / 20 ** 0.5)
    assert data["notes"] == []


def test_plots_are_png_and_embedded(full_run):
    run, md_path, md = full_run
    data = json.loads((run / "report.json").read_text())
    expected = {"accuracy_vs_tokens:gsm8k", "accuracy_vs_tokens:math", "accuracy_vs_act_ratio:gsm8k",
                "accuracy_vs_act_ratio:math", "cot_hist:gsm8k", "cot_hist:math", "ratio_control", "train_loss"}
    assert set(data["plots"]) == expected
    for key, p in data["plots"].items():
        assert "path" in p, f"{key} skipped: {p}"
        png = md_path.parent / p["path"]
        w, h = _png_size(png)
        assert w > 100 and h > 100 and png.stat().st_size > 5000
        assert f"]({p['path']})" in md
    assert "skipped" not in md


def test_missing_compress_loss_and_manifest(tmp_path):
    run = make_run(tmp_path, benchmarks=("gsm8k",), compress=False, loss=False, manifest=False)
    md = rep.write_report(run).read_text()
    assert md.startswith("# TokenSkip report: myrun")
    assert "No compressor summary" in md and "No training loss log" in md
    assert "_Plot skipped: no train/loss_log.jsonl._" in md
    data = json.loads((run / "report.json").read_text())
    assert data["compress"] is None and data["train"] is None
    # ratio plot still drawn from the TokenSkip / Prompt ActRatios
    assert "path" in data["plots"]["ratio_control"]
    assert list(data["benchmarks"]) == ["gsm8k"]


def test_evaluate_folder_as_run_dir_and_out_flag(tmp_path, capsys):
    run = make_run(tmp_path, benchmarks=("math",), compress=False, loss=False)
    out = tmp_path / "elsewhere"
    assert cli_main(["report", str(run / "evaluate"), "--out", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(out / "report.md")
    md = (out / "report.md").read_text()
    rows = {_cells(r)[0]: _cells(r) for r in _table(md, "MATH-500")}
    link = re.search(r"\]\(([^)]+)\)", rows["TokenSkip (γ=0.7)"][7]).group(1)
    assert link.startswith("../myrun/evaluate/math/tokenskip/ratio-0.7/")
    assert (out / link).is_file()
    assert not (out / "plots").exists()
    # report written inside the evaluate folder itself, twice: its own plots/ is not taken for a benchmark
    for _ in range(2):
        md_path = rep.write_report(run / "evaluate")
    data = json.loads((run / "evaluate" / "report.json").read_text())
    assert list(data["benchmarks"]) == ["math"] and data["evaluate_dir"] == "."
    assert (run / "evaluate" / "plots" / "accuracy_vs_tokens_math.png").is_file()
    assert "(math/original/predictions.jsonl)" in md_path.read_text()


def test_inconsistencies_are_noted_not_fixed(tmp_path):
    run = make_run(tmp_path, benchmarks=("gsm8k",), compress=False, loss=False)
    cell = run / "evaluate" / "gsm8k" / "tokenskip" / "ratio-0.5"
    (cell / "predictions.jsonl").write_text((cell / "predictions.jsonl").read_text().split("\n", 1)[1])
    unfinished = run / "evaluate" / "gsm8k" / "tokenskip" / "ratio-0.6"
    unfinished.mkdir()
    (unfinished / "predictions.jsonl").write_text("")
    mixed = run / "evaluate" / "gsm8k" / "prompt" / "ratio-0.7" / "metrics.json"
    m = json.loads(mixed.read_text())
    m["latency_mode"] = "single"
    mixed.write_text(json.dumps(m))
    md = rep.write_report(run, rep.ReportConfig(plots=False)).read_text()
    assert "3 rows but metrics.json says n=4" in md
    assert "ratio-0.6/predictions.jsonl` has no metrics.json" in md
    rows = {_cells(r)[0]: _cells(r) for r in _table(md, "GSM8K")}
    assert "TokenSkip (γ=0.6)" not in rows
    assert rows["Prompt (γ=0.7)"][4] == "0.250 (single)" and rows["Original"][4] == "0.250 (amortized)"


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no evaluation results"):
        rep.write_report(tmp_path)
    run = make_run(tmp_path, benchmarks=("gsm8k",), compress=False, loss=False)
    path = run / "evaluate" / "gsm8k" / "original" / "metrics.json"
    m = json.loads(path.read_text())
    m["accuracy"] = 61.5  # a percentage where a fraction is expected
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"original/metrics.json: field 'accuracy': expected a fraction"):
        build_report(run, run)
    m["accuracy"] = "high"
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match="field 'accuracy'"):
        build_report(run, run)
    with pytest.raises(ValueError, match="hist_bins"):
        rep.ReportConfig(hist_bins=0).validate()


def test_percentile_matches_linear_interpolation():
    assert percentile([0.68, 0.70, 0.71, 0.73], 95) == pytest.approx(0.727)
    assert percentile([1.0], 5) == 1.0


def test_act_ratio_is_recomputed_when_its_original_run_changed(tmp_path):
    from tokenskip.contract.io import file_hash

    run = make_run(tmp_path, benchmarks=("gsm8k",), compress=False, loss=False)
    bench = run / "evaluate" / "gsm8k"
    orig_pred = bench / "original" / "predictions.jsonl"   # cot_tokens 190, 195, 205, 210 (sum 800)
    cell = bench / "prompt" / "ratio-0.5"                   # cot_tokens 170, 175, 185, 190 (sum 720)
    m = json.loads((cell / "metrics.json").read_text())
    # evaluated before the original run existed: null, and says it had no original
    (cell / "metrics.json").write_text(json.dumps({**m, "act_ratio": None, "act_ratio_original": None,
                                                   "ids": ["q0", "q1", "q2", "q3"]}))
    # evaluated against the original run as it is now: the stored value is shown as is
    fresh = bench / "prompt" / "ratio-0.7"
    m7 = json.loads((fresh / "metrics.json").read_text())
    (fresh / "metrics.json").write_text(json.dumps({**m7, "act_ratio": 0.95,
                                                    "act_ratio_original": file_hash(orig_pred)}))
    md = rep.write_report(run).read_text()
    rows = {_cells(r)[0]: _cells(r) for r in _table(md, "GSM8K")}
    assert rows["Prompt (γ=0.5)"][3] == "0.90"   # 720 / 800
    assert rows["Prompt (γ=0.7)"][3] == "0.95"
    assert "prompt/ratio-0.5/metrics.json`: ActRatio recomputed against the current original run (4 common" in md
    # the evaluation's own file is not rewritten
    assert json.loads((cell / "metrics.json").read_text())["act_ratio"] is None


# ---------------------------------------------------------------- what the plots show

@pytest.fixture
def figures(monkeypatch):
    """Keep each plot's matplotlib figure (instead of only its PNG) so its axes can be inspected."""
    import matplotlib

    matplotlib.use("Agg")
    kept = {}
    from tokenskip.stages.report import plots

    monkeypatch.setattr(plots, "_save", lambda fig, path: kept.__setitem__(Path(path).name, fig))
    yield kept
    import matplotlib.pyplot as plt

    plt.close("all")


def _boxes(texts):
    renderer = texts[0].figure.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in texts]


@pytest.mark.parametrize("scale, top", [(1.0, 70.0), (0.05, 10.0), (1.6, 100.0)])
def test_accuracy_plot_axis_in_percent_and_labels_apart(tmp_path, figures, scale, top):
    run = make_run(tmp_path, benchmarks=("gsm8k",), compress=False, loss=False)
    rows = [r.to_dict() for r in collect_rows(run / "evaluate", run)]
    for r in rows:  # 1.6 × 62 % would pass 100 %: clamp, the axis still ends at 100
        r["accuracy"] = min(1.0, r["accuracy"] * scale)
    assert plot_accuracy_vs_tokens(rows, tmp_path / "a.png", "t") is None
    ax = figures["a.png"].axes[0]
    assert ax.get_ylim() == (0.0, top)
    assert ax.get_ylabel() == "accuracy (%)"
    texts = [t for t in ax.texts if t.get_text().startswith("γ=")]
    assert len(texts) == 7  # every row with a γ is labelled
    frame = ax.get_window_extent(texts[0].figure.canvas.get_renderer())
    boxes = _boxes(texts)
    for i, b in enumerate(boxes):
        assert frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1, texts[i]
        for j in range(i):
            assert overlap(b, boxes[j]) == 0, (texts[i].get_text(), texts[j].get_text())


def test_place_labels_separates_points_on_top_of_each_other(figures):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 1.001, 1.002, 2], [1, 1.001, 1.0, 2], "o")
    texts = place_labels(ax, [(1, 1, "γ=0.5", "k"), (1.001, 1.001, "γ=0.6", "k"),
                                  (1.002, 1.0, "γ=0.7", "k"), (2, 2, "γ=1.0", "k")])
    boxes = _boxes(texts)
    assert all(overlap(a, b) == 0 for i, a in enumerate(boxes) for b in boxes[:i])


def test_ratio_control_x_axis_within_unit_interval_with_p5_p95_bars(tmp_path, figures):
    run = make_run(tmp_path, benchmarks=("gsm8k",), loss=False)
    report = build_report(run, run)
    # a prompt row whose CoTs came out longer than the original's (ActRatio 1.35)
    report["benchmarks"]["gsm8k"][1]["act_ratio"] = 1.35
    assert plot_ratio_control(report, tmp_path / "r.png") is None
    ax = figures["r.png"].axes[0]
    lo, hi = ax.get_xlim()
    assert 0.0 < lo <= 0.5 and hi == 1.0
    assert ax.get_ylim()[1] >= 1.35  # the long prompt row stays in view
    # the compressor's p5–p95 bars: one vertical segment per γ, from p5 to p95 of the rows
    bars = [c for c in ax.collections if c.get_segments() and len(c.get_segments()) == 3]
    assert len(bars) == 1
    spans = sorted((round(s[0][1], 4), round(s[1][1], 4)) for s in bars[0].get_segments())
    c = report["compress"]["ratios"]
    assert spans == sorted((round(e["achieved_p05"], 4), round(e["achieved_p95"], 4)) for e in c)
    assert all(hi_ - lo_ > 0.02 for lo_, hi_ in spans)


def test_loss_plot_few_points_no_lr_curve_and_integer_steps(tmp_path, figures):
    points = [{"step": s, "loss": v, "lr": lr, "epoch": None}
              for s, v, lr in ((10, 1.2345678, 4.9e-5), (20, 1.1987654, 2.6e-5), (30, 1.1876543, 1e-6))]
    cfg = {"lr": 5e-5, "scheduler": "cosine", "warmup_ratio": 0.1}
    assert plot_loss(points, tmp_path / "l.png", cfg) is None
    fig = figures["l.png"]
    assert len(fig.axes) == 1  # no learning-rate axis for 3 points
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [10, 20, 30]
    assert "peak lr 5.0e-05" in ax.get_title() and "cosine" in ax.get_title()
    fig.canvas.draw()
    assert all(len(t.get_text()) <= 5 for t in ax.get_yticklabels())
    many = [{"step": s, "loss": 2.0 / s, "lr": 5e-5 * (1 - s / 40), "epoch": None} for s in range(1, 31)]
    assert plot_loss(many, tmp_path / "m.png", cfg) is None
    fig = figures["m.png"]
    assert len(fig.axes) == 2
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())


def test_cot_hist_one_panel_per_series_and_cap_marked(tmp_path, figures):
    run = make_run(tmp_path, benchmarks=("gsm8k",), compress=False, loss=False)
    rows = [r.to_dict() for r in collect_rows(run / "evaluate", run)]
    assert plot_cot_hist(rows, run, tmp_path / "h.png", "t", 30) is None
    axes = figures["h.png"].axes
    assert len(axes) == 4  # Original + TokenSkip at 3 γ, each in its own panel
    assert axes[0].get_title(loc="left").startswith("Original: n=4, median 205, 0 at the cap")
    for ax in axes:  # a vertical line at x = 512 (max_new_tokens) in every panel
        assert any(list(line.get_xdata()) == [512, 512] for line in ax.get_lines())
    assert "max_new_tokens cap = 512" in axes[-1].get_xlabel()
