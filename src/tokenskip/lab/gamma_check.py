"""``tokenskip gamma-check``: does a TokenSkip adapter prefer the γ-compressed CoT when asked for γ?

A cheap test of γ conditioning, run before (or instead of) a full evaluation: for CoTs of a compress
folder, the teacher-forced loss of the compressed and of the full version of each CoT is measured
under the prompt with the γ marker and under the prompt without it. An adapter that follows γ gives
the compressed CoT the lower loss under the γ prompt and the full one under the plain prompt; the
lab probe's adapter (docs/lab.md) learned the compressed style but its marker barely
moved the choice, and greedy decoding then wrote the full CoT at every γ.

Loss = mean negative log-likelihood per completion token, in nats (completion = CoT + the answer line
+ end of turn, tokenized exactly as ``tokenskip train`` does).

Three diagnostics say *why* an adapter does or does not follow γ (issue 23, "diagnose first"):

* ``position_shift``: where along the compressed CoT the marker acts — the mean of (loss without the marker −
  loss with it) per token, in five bins of relative position (first fifth … last fifth). A marker that only
  matters for the first tokens (the rest of the prefix gives the level away under teacher forcing) shows a
  large first bin and ~0 after it.
* ``first_divergence``: at the first token where the compressed and the full CoT differ, teacher-forced on
  their common prefix under the γ prompt, the rank of the compressed CoT's token in the model's distribution
  (1 = greedy decoding would take it) and the share of CoTs where the full CoT's token ranks higher: greedy
  decoding follows γ only where the compressed token is rank 1.
* ``target_ratio``: the realised ratio of the γ-level training targets (kept ÷ full completion tokens in the
  target's tokenizer), mean and standard deviation: adjacent levels whose spreads overlap cannot be told apart
  from the data alone.

Example::

    tokenskip gamma-check --model runs/lab/merge --adapter runs/lab/train --compressed runs/lab/compress \\
        --ratios 0.5 --limit 32
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from tokenskip.contract.config import add_dataclass_args, dataclass_from_args, to_dict
from tokenskip.contract.io import write_json_atomic
from tokenskip.task.prompts import DEFAULT_MARKER_DELIMITER, answer_line, build_prompt, format_ratio, validate_ratio

logger = logging.getLogger(__name__)


@dataclass
class GammaCheckConfig:
    """Settings of ``tokenskip gamma-check``."""

    model: str = field(default="smollm2-135m-instruct",
                       metadata={"help": "target model (alias, folder, .gguf, Hub id)"})
    adapter: str | None = field(default=None,
                                metadata={"help": "TokenSkip LoRA adapter folder (none: the model alone)"})
    compressed: str = field(default="", metadata={"help": "folder written by 'tokenskip compress'"})
    ratios: list[float] | None = field(default=None, metadata={"help": "γ to check (default: every ratio file)"})
    limit: int | None = field(default=32, metadata={"help": "CoTs per γ (the first ones of source.jsonl)"})
    out: str | None = field(default=None, metadata={"help": "write the result as JSON here"})
    system_prompt: str | None = field(default=None, metadata={"help": "system turn used in training, if any"})
    marker_delimiter: str = field(default=DEFAULT_MARKER_DELIMITER, metadata={"help": "delimiter of the γ marker"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads"})

    def validate(self) -> None:
        if not self.compressed:
            raise ValueError("gamma-check: --compressed is required")
        if self.ratios is not None:
            self.ratios = [validate_ratio(r) for r in self.ratios]
            if any(r >= 1.0 for r in self.ratios):
                raise ValueError("gamma-check: --ratios must be below 1.0 (γ = 1.0 has no compressed CoT)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"gamma-check: --limit must be >= 1, got {self.limit}")


def token_losses(model, tokenizer, prompt: str, completion: str, eot: str):
    """Teacher-forced ``(ids, nlls, logits)`` of ``completion + eot`` after ``prompt``: the completion's token
    ids, each one's NLL in nats, and the logits that predicted each (a ``len(ids) × vocab`` float tensor)."""
    import torch

    from tokenskip.finetune.sft_rows import tokenize_example

    ex = tokenize_example(tokenizer, prompt, completion, eot)
    ids = torch.tensor([ex["input_ids"]])
    mask = torch.tensor(ex["completion_mask"][1:], dtype=torch.bool)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    return ids[0, 1:][mask].tolist(), nll[mask].tolist(), logits[mask]


def completion_nll(model, tokenizer, prompt: str, completion: str, eot: str) -> float:
    """Mean NLL (nats per token) of ``completion + eot`` after ``prompt``, teacher-forced."""
    _, nlls, _ = token_losses(model, tokenizer, prompt, completion, eot)
    return statistics.fmean(nlls)


def position_profile(with_marker: list[float], without: list[float], bins: int = 5) -> list[float]:
    """Mean per-token loss difference ``without − with_marker`` in ``bins`` equal bins of relative position
    (bin ``b`` holds the tokens ``i`` with ``int(i * bins / n) == b``); an empty bin is ``nan``."""
    n = len(with_marker)
    out = []
    for b in range(bins):
        d = [without[i] - with_marker[i] for i in range(n) if int(i * bins / n) == b]
        out.append(statistics.fmean(d) if d else float("nan"))
    return out


def divergence_rank(compressed_ids: list[int], full_ids: list[int], logits) -> dict | None:
    """At the first position ``k`` where the two token sequences differ: the rank (1 = the most likely) of the
    compressed token among ``logits[k]`` (the logits that predicted ``compressed_ids``) and whether the full
    CoT's token has the higher logit. ``None`` when one sequence is a prefix of the other."""
    k = next((i for i, (a, b) in enumerate(zip(compressed_ids, full_ids)) if a != b), None)
    if k is None:
        return None
    row = logits[k]
    c, f = row[compressed_ids[k]], row[full_ids[k]]
    return {"position": k, "rank": int((row > c).sum()) + 1, "full_preferred": bool(f > c)}


def _pair(model, tokenizer, source: dict, cot: str, ratio: float, cfg: GammaCheckConfig, eot: str) -> dict:
    """The losses and diagnostics of one CoT at one γ (see the module docstring)."""
    texts = {"compressed": cot.strip() + answer_line(source["answer"]),
             "full": source["cot"].strip() + answer_line(source["answer"])}
    prompts = {"gamma_prompt": build_prompt(tokenizer, source["question"], ratio, cfg.system_prompt,
                                            marker_delimiter=cfg.marker_delimiter),
               "plain_prompt": build_prompt(tokenizer, source["question"], None, cfg.system_prompt)}
    runs = {(p, k): token_losses(model, tokenizer, prompts[p], x, eot) for p in prompts for k, x in texts.items()}
    row = {p: {k: statistics.fmean(runs[p, k][1]) for k in texts} for p in prompts}
    comp_ids, comp_nll, comp_logits = runs["gamma_prompt", "compressed"]
    row["position_shift"] = position_profile(comp_nll, runs["plain_prompt", "compressed"][1])
    row["divergence"] = divergence_rank(comp_ids, runs["gamma_prompt", "full"][0], comp_logits)
    row["target_ratio"] = len(comp_ids) / len(runs["gamma_prompt", "full"][0])
    return row


def summarize_pairs(rows: list[dict]) -> dict:
    """Means of the four losses and the share of CoTs whose compressed version wins under the γ prompt.

    Args:
        rows: ``{"gamma_prompt": {"compressed": nll, "full": nll}, "plain_prompt": {...}}`` per CoT.
    Returns:
        ``{"n", "gamma_prompt": {"compressed", "full"}, "plain_prompt": {...}, "compressed_preferred",
        "marker_shift"}``. ``compressed_preferred`` = share of CoTs whose compressed version has the lower
        loss under the γ prompt; ``marker_shift`` = mean over CoTs of (full − compressed | γ prompt) −
        (full − compressed | plain prompt), in nats: > 0 means the marker moves the model toward the
        compressed CoT, 0 means the marker is ignored.
    """
    def mean(key, which):
        return statistics.fmean(r[key][which] for r in rows)

    gap = [(r["gamma_prompt"]["full"] - r["gamma_prompt"]["compressed"])
           - (r["plain_prompt"]["full"] - r["plain_prompt"]["compressed"]) for r in rows]
    return {"n": len(rows),
            "gamma_prompt": {"compressed": mean("gamma_prompt", "compressed"), "full": mean("gamma_prompt", "full")},
            "plain_prompt": {"compressed": mean("plain_prompt", "compressed"), "full": mean("plain_prompt", "full")},
            "compressed_preferred": statistics.fmean(r["gamma_prompt"]["compressed"] < r["gamma_prompt"]["full"]
                                                     for r in rows),
            "marker_shift": statistics.fmean(gap), **_diagnostics(rows)}


def _diagnostics(rows: list[dict]) -> dict:
    """``position_shift`` (mean per bin), ``first_divergence`` and ``target_ratio`` over the rows that carry
    them (rows made by :func:`run_gamma_check`; hand-made rows without them give ``{}``)."""
    out: dict = {}
    shifts = [r["position_shift"] for r in rows if "position_shift" in r]
    if shifts:
        cols = [[s[b] for s in shifts if not math.isnan(s[b])] for b in range(len(shifts[0]))]
        out["position_shift"] = [statistics.fmean(c) if c else float("nan") for c in cols]
    div = [r["divergence"] for r in rows if r.get("divergence")]
    if div:
        out["first_divergence"] = {"n": len(div), "mean_rank": statistics.fmean(d["rank"] for d in div),
                                   "compressed_top1": statistics.fmean(d["rank"] == 1 for d in div),
                                   "full_preferred": statistics.fmean(d["full_preferred"] for d in div)}
    ratios = [r["target_ratio"] for r in rows if "target_ratio" in r]
    if ratios:
        out["target_ratio"] = {"mean": statistics.fmean(ratios),
                               "sd": statistics.stdev(ratios) if len(ratios) > 1 else 0.0}
    return out


def run_gamma_check(cfg: GammaCheckConfig, model=None, tokenizer=None) -> dict:
    """Measure the losses for each γ; returns ``{γ text: summarize_pairs(...)}`` plus the settings.

    Raises:
        FileNotFoundError / DataError: a missing or malformed compress folder (see
            :func:`tokenskip.stages.build_sft.read_compressed`).
    """
    cfg.validate()
    from tokenskip.engines.models import configure_threads, load_model
    from tokenskip.finetune.sft import available_ratios, read_compressed
    from tokenskip.task.prompts import end_of_turn

    configure_threads(cfg.threads)
    ratios = cfg.ratios or [r for r in available_ratios(cfg.compressed) if r < 1.0]
    if not ratios:
        raise FileNotFoundError(f"gamma-check: no ratio-<γ>.jsonl in {cfg.compressed}")
    source, compressed = read_compressed(cfg.compressed, ratios)
    if model is None:
        model, tokenizer = load_model(cfg.model, adapter=cfg.adapter, merge_adapter=True)
    eot = end_of_turn(tokenizer)
    result: dict = {"settings": to_dict(cfg)}
    for r in ratios:
        ids = [i for i in source if i in compressed[r]][:cfg.limit]
        pairs = [_pair(model, tokenizer, source[i], compressed[r][i], r, cfg, eot) for i in ids]
        if pairs:
            result[format_ratio(r)] = summarize_pairs(pairs)
    if cfg.out:
        write_json_atomic(Path(cfg.out), result)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, GammaCheckConfig)


def run_cli(args: argparse.Namespace) -> int:
    res = run_gamma_check(dataclass_from_args(GammaCheckConfig, args))
    print(f"{'γ':<5} {'n':>4} {'γ prompt: compr.':>17} {'full':>7} {'plain: compr.':>14} {'full':>7} "
          f"{'compr. preferred':>17} {'marker shift':>13}")
    for key, m in res.items():
        if key != "settings":
            g, p = m["gamma_prompt"], m["plain_prompt"]
            print(f"{key:<5} {m['n']:>4} {g['compressed']:>17.3f} {g['full']:>7.3f} {p['compressed']:>14.3f} "
                  f"{p['full']:>7.3f} {m['compressed_preferred']:>17.0%} {m['marker_shift']:>+13.3f}")
    for key, m in res.items():
        if key == "settings":
            continue
        shift = " ".join(f"{x:+.3f}" for x in m.get("position_shift", []))
        fd, tr = m.get("first_divergence"), m.get("target_ratio")
        print(f"γ {key}: marker shift by fifth of the CoT [{shift}]"
              + (f"; first divergence: compressed token rank {fd['mean_rank']:.1f} (top-1 {fd['compressed_top1']:.0%},"
                 f" full token preferred {fd['full_preferred']:.0%})" if fd else "")
              + (f"; target ratio {tr['mean']:.3f} ± {tr['sd']:.3f}" if tr else ""))
    return 0
