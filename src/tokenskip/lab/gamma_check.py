"""``tokenskip gamma-check``: does a TokenSkip adapter prefer the γ-compressed CoT when asked for γ?

A cheap test of γ conditioning, run before (or instead of) a full evaluation: for CoTs of a compress
folder, the teacher-forced loss of the compressed and of the full version of each CoT is measured
under the prompt with the γ marker and under the prompt without it. An adapter that follows γ gives
the compressed CoT the lower loss under the γ prompt and the full one under the plain prompt; the
lab probe's adapter (docs/lab.md) learned the compressed style but its marker barely
moved the choice, and greedy decoding then wrote the full CoT at every γ.

Loss = mean negative log-likelihood per completion token, in nats (completion = CoT + the answer line
+ end of turn, tokenized exactly as ``tokenskip train`` does).

Example::

    tokenskip gamma-check --model runs/lab/merge --adapter runs/lab/train --compressed runs/lab/compress \\
        --ratios 0.5 --limit 32
"""

from __future__ import annotations

import argparse
import logging
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

    model: str = field(default="smollm2-135m-instruct", metadata={"help": "target model (alias, folder, .gguf, Hub id)"})
    adapter: str | None = field(default=None, metadata={"help": "TokenSkip LoRA adapter folder (none: the model alone)"})
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


def completion_nll(model, tokenizer, prompt: str, completion: str, eot: str) -> float:
    """Mean NLL (nats per token) of ``completion + eot`` after ``prompt``, teacher-forced."""
    import torch

    from tokenskip.finetune.sft_rows import tokenize_example

    ex = tokenize_example(tokenizer, prompt, completion, eot)
    ids = torch.tensor([ex["input_ids"]])
    mask = torch.tensor(ex["completion_mask"][1:], dtype=torch.bool)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    return float(nll[mask].mean())


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
            "marker_shift": statistics.fmean(gap)}


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
        pairs = []
        for rid in [i for i in source if i in compressed[r]][:cfg.limit]:
            s = source[rid]
            texts = {"compressed": compressed[r][rid].strip() + answer_line(s["answer"]),
                     "full": s["cot"].strip() + answer_line(s["answer"])}
            prompts = {"gamma_prompt": build_prompt(tokenizer, s["question"], r, cfg.system_prompt,
                                                    marker_delimiter=cfg.marker_delimiter),
                       "plain_prompt": build_prompt(tokenizer, s["question"], None, cfg.system_prompt)}
            pairs.append({p: {k: completion_nll(model, tokenizer, prompts[p], t, eot) for k, t in texts.items()}
                          for p in prompts})
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
    return 0
