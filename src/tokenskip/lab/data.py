"""Stage *lab_data*: seeded word problems from reasoning-gym, with step-by-step solutions, as GSM8K-style JSONL.

The CPU lab needs a task the packaged 135M model can learn to solve and whose answer needs a CoT
(at least two arithmetic steps). ``reasoning-gym`` (pinned in the ``lab`` extra) generates such
problems procedurally from a seed; this stage writes them as three disjoint splits and writes a
worked solution for each from the generator's metadata (not from a model), in plain language with
varied phrasing and the restatements real CoTs have.

Task families (``--tasks``, several are mixed round-robin):

* ``leg_counting`` — "how many legs are there in total if you have 3 crabs, 2 ducks?": one
  multiplication per kind of animal, then a sum (≥ 3 steps with the default 2–3 kinds).
* ``chain_sum`` — "4 + 27 - 13 =": one addition/subtraction per operator, left to right
  (≥ 2 steps with the default 3–4 terms).

Output (``--out DIR``), each file written atomically, byte-identical for the same settings::

    train.jsonl, validation.jsonl, test.jsonl   rows {id, question, answer, task, meta}
    summary.json                                counts per split and task, settings

``answer`` is GSM8K's format — the worked solution, a newline and ``#### <number>`` — so every split
loads as the ``gsm8k`` benchmark (numeric grading) with ``Problem.solution`` = the worked solution.
Splits are disjoint by question (animal counts in any order count as one question): the generator's
stream is read once, duplicates are dropped, and the first distinct questions go to test, then
validation, then train, so a larger train split never changes the test split.

Example::

    tokenskip lab-data --out data/lab --train 2000 --validation 200 --test 300 --seed 1
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tokenskip.contract.config import to_dict
from tokenskip.contract.io import SCHEMA_VERSION, write_json_atomic, write_jsonl_atomic
from tokenskip.contract.layout import LAB_DATA_SUMMARY

logger = logging.getLogger(__name__)

SPLITS = ("test", "validation", "train")   # order in which distinct questions are dealt out
REASONING_GYM_VERSION = "0.1.25"           # the pinned version of the `lab` extra


@dataclass
class LabDataConfig:
    """Settings of ``tokenskip lab-data``. Defaults: the task of the lab probe (docs/lab.md)."""

    out: str = field(default="", metadata={"help": "output folder (train/validation/test.jsonl, summary.json)"})
    tasks: list[str] = field(default_factory=lambda: ["leg_counting"], metadata={
        "help": "reasoning-gym task families, mixed round-robin (leg_counting, chain_sum)"})
    train: int = field(default=2000, metadata={"help": "questions in the train split"})
    validation: int = field(default=200, metadata={"help": "questions in the validation split"})
    test: int = field(default=300, metadata={"help": "questions in the test split"})
    seed: int = field(default=1, metadata={"help": "seed of the generator and of the solutions' phrasing"})
    min_animals: int = field(default=2, metadata={"help": "leg_counting: fewest kinds of animal per question"})
    max_animals: int = field(default=3, metadata={"help": "leg_counting: most kinds of animal per question"})
    max_instances: int = field(default=6, metadata={"help": "leg_counting: most animals of one kind"})
    min_terms: int = field(default=3, metadata={"help": "chain_sum: fewest terms (3 terms = 2 steps)"})
    max_terms: int = field(default=4, metadata={"help": "chain_sum: most terms"})
    max_digits: int = field(default=2, metadata={"help": "chain_sum: most digits per term"})
    redundancy: float = field(default=1.0, metadata={
        "help": "probability of each sentence a solution does not need (the opening plan, the closing "
                "restatement): 1 = always (longer CoTs, more to compress), 0 = never (shorter, faster)"})

    def validate(self) -> None:
        if not self.out:
            raise ValueError("lab-data: --out is required")
        unknown = [t for t in self.tasks if t not in TASKS]
        if not self.tasks or unknown:
            raise ValueError(f"lab-data: --tasks must name some of {sorted(TASKS)}, got {self.tasks}")
        for name in ("train", "validation", "test"):
            if getattr(self, name) < 0:
                raise ValueError(f"lab-data: --{name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.min_animals <= self.max_animals:
            raise ValueError(f"lab-data: need 1 <= --min-animals <= --max-animals, got "
                             f"{self.min_animals}, {self.max_animals}")
        if not 2 <= self.min_terms <= self.max_terms:
            raise ValueError(f"lab-data: need 2 <= --min-terms <= --max-terms, got {self.min_terms}, {self.max_terms}")
        if self.max_instances < 1 or self.max_digits < 1:
            raise ValueError("lab-data: --max-instances and --max-digits must be >= 1")
        if not 0.0 <= self.redundancy <= 1.0:
            raise ValueError(f"lab-data: --redundancy must be in [0, 1], got {self.redundancy}")


# ---------------------------------------------------------------- solutions (pure)

def _plural(name: str, count: int) -> str:
    # the generator's own rule ("3 woodlouses"), so the solution names the animals as the question does
    return f"{name}s" if count > 1 else name


def _a(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _optional(rng: random.Random, redundancy: float) -> bool:
    # no draw at 1.0, so the phrasing of the other sentences does not depend on whether the knob exists
    return redundancy >= 1.0 or rng.random() < redundancy


def leg_counting_solution(animals: dict[str, int], legs: dict[str, int], rng: random.Random,
                          redundancy: float = 1.0) -> str:
    """A worked solution: one ``count x legs = product`` line per kind of animal, then the sum (of three or
    more groups: one addition per step, "48 + 20 = 68, then 68 + 36 = 104"; with the sum in one step the
    warmed-up 135M target got most of its wrong answers from additions such as "48 + 20 + 36").

    Args:
        animals: kind -> how many (the generator's ``metadata["animals"]``, in question order).
        legs: kind -> legs of one animal (reasoning-gym's ``ANIMALS`` table).
        rng: picks the phrasing of each sentence.
        redundancy: probability of the opening and the closing sentence (the steps are always there).
    Returns:
        Text whose last sentence states the total; every ``a x b = c`` and the final sum hold exactly.
    """
    lines = [rng.choice([
        "We need the total number of legs, so let's count the legs of each kind of animal and add them up.",
        "To find the total, work out the legs for each type of animal first, then add everything together.",
        "Let's go through the animals one kind at a time.",
        "Each kind of animal has its own number of legs, so count them group by group.",
    ])] if _optional(rng, redundancy) else []
    products = []
    for name, count in animals.items():
        n, total = legs[name], count * legs[name]
        products.append(total)
        many = _plural(name, count)
        lines.append(rng.choice([
            f"{_a(name).capitalize()} has {n} legs, so {count} {many} {'have' if count > 1 else 'has'} {count} x {n} = "
            f"{total} legs.",
            f"Each {name} has {n} legs. With {count} {many}, that is {count} x {n} = {total} legs.",
            f"{count} {many}: {count} x {n} = {total} legs, since one {name} has {n} legs.",
            f"There {'are' if count > 1 else 'is'} {count} {many} and {_a(name)} has {n} legs, "
            f"which gives {count} x {n} = {total} legs.",
        ]))
    total = sum(products)
    if len(products) == 1:
        lines.append(rng.choice([f"That is the only kind of animal, so the total is {total} legs.",
                                 f"There are no other animals, so the total is {total}."]))
        return "\n".join(lines)
    terms = " + ".join(str(p) for p in products)
    if len(products) > 2:  # always one addition per step: the 135M model gets "a + b + c = d" in one step wrong
        running, steps = products[0], []
        for p in products[1:]:
            steps.append(f"{running} + {p} = {running + p}")
            running += p
        lines.append(rng.choice(["Now add the groups step by step: ", "Adding them one at a time: ",
                                 "Add them up two at a time: "])
                     + rng.choice([", then ", ", and then ", "; next, "]).join(steps) + ".")
    else:
        lines.append(rng.choice([f"Adding them up gives {terms} = {total} legs in total.",
                                 f"Now add all the legs together: {terms} = {total}.",
                                 f"The total is {terms} = {total} legs."]))
    if _optional(rng, redundancy):
        lines.append(rng.choice([f"So there are {total} legs in total.", f"Therefore, the animals have {total} legs.",
                                 f"So the answer is {total} legs."]))
    return "\n".join(lines)


def chain_sum_solution(expression: str, rng: random.Random, redundancy: float = 1.0) -> str:
    """A worked solution of ``a ± b ± c ...``: one ``x ± y = z`` line per operator, left to right.

    Raises:
        ValueError: ``expression`` is not integers separated by `` + `` / `` - ``.
    """
    tokens = expression.split()
    if len(tokens) < 3 or len(tokens) % 2 == 0 or any(op not in "+-" for op in tokens[1::2]):
        raise ValueError(f"chain_sum: cannot read the expression {expression!r}")
    nums = [int(t) for t in tokens[0::2]]
    lines = [rng.choice([f"We work from left to right, starting with {nums[0]}.",
                         f"Let's compute {expression} one operation at a time.",
                         f"Start with the first number, {nums[0]}, and apply each operation in order."])
             ] if _optional(rng, redundancy) else []
    running = nums[0]
    for op, n in zip(tokens[1::2], nums[1:]):
        new = running + n if op == "+" else running - n
        verb = "adding" if op == "+" else "subtracting"
        lines.append(rng.choice([f"{running} {op} {n} = {new}.",
                                 f"Next, {verb} {n}: {running} {op} {n} = {new}.",
                                 f"Then {running} {op} {n} = {new}, after {verb} {n}."]))
        running = new
    if _optional(rng, redundancy):
        lines.append(rng.choice([f"So the result is {running}.", f"Therefore, {expression} = {running}.",
                                 f"The final value is {running}."]))
    return "\n".join(lines)


# ---------------------------------------------------------------- task families

@dataclass(frozen=True)
class LabTask:
    """One reasoning-gym family: its generator settings, its duplicate key and its solution writer."""

    name: str
    params: Callable[[LabDataConfig], dict]
    key: Callable[[dict], tuple]                       # item -> identity of the question
    solution: Callable[[dict, random.Random, float], str]     # (item, rng, redundancy) -> worked solution


def _leg_solution(item: dict, rng: random.Random, redundancy: float) -> str:
    from reasoning_gym.arithmetic.leg_counting import ANIMALS

    return leg_counting_solution(item["metadata"]["animals"], ANIMALS, rng, redundancy)


TASKS: dict[str, LabTask] = {
    "leg_counting": LabTask(
        "leg_counting",
        lambda c: {"min_animals": c.min_animals, "max_animals": c.max_animals, "max_instances": c.max_instances},
        lambda item: tuple(sorted(item["metadata"]["animals"].items())),
        _leg_solution),
    "chain_sum": LabTask(
        "chain_sum",
        lambda c: {"min_terms": c.min_terms, "max_terms": c.max_terms, "min_digits": 1, "max_digits": c.max_digits},
        lambda item: (item["metadata"]["expression"],),
        lambda item, rng, redundancy: chain_sum_solution(item["metadata"]["expression"], rng, redundancy)),
}


def _generator(task: LabTask, cfg: LabDataConfig, size: int):
    try:
        import reasoning_gym
    except ImportError:
        raise ImportError(f"lab-data needs reasoning-gym: pip install 'tokenskip[lab]' "
                          f"(reasoning-gym=={REASONING_GYM_VERSION})") from None
    return reasoning_gym.create_dataset(task.name, size=size, seed=cfg.seed, **task.params(cfg))


def make_splits(cfg: LabDataConfig) -> dict[str, list[dict]]:
    """``{"train": rows, "validation": rows, "test": rows}`` (see the module docstring); no file I/O.

    Raises:
        ValueError: the generator's settings allow fewer distinct questions than requested.
    """
    cfg.validate()
    wanted = {s: getattr(cfg, s) for s in SPLITS}
    total = sum(wanted.values())
    per_task = -(-total // len(cfg.tasks))
    # duplicates are rare with the defaults; 4x headroom (then an error) bounds the scan
    streams = {t: iter(_generator(TASKS[t], cfg, 4 * per_task + 16)) for t in cfg.tasks}
    seen: set[tuple] = set()
    items: list[tuple[str, dict]] = []
    while len(items) < total and streams:
        for t in list(streams):
            if len(items) >= total:
                break
            item = next(streams[t], None)
            if item is None:
                del streams[t]
                continue
            key = (t, *TASKS[t].key(item))
            if key not in seen:
                seen.add(key)
                items.append((t, item))
    if len(items) < total:
        raise ValueError(f"lab-data: only {len(items)} distinct questions for {total} requested; "
                         "lower the split sizes or widen the task settings")
    splits, start = {}, 0
    for split in SPLITS:
        chunk = items[start:start + wanted[split]]
        start += wanted[split]
        splits[split] = [_row(cfg, split, i, t, item) for i, (t, item) in enumerate(chunk)]
    return splits


def _row(cfg: LabDataConfig, split: str, index: int, task: str, item: dict) -> dict:
    rid = f"lab/{split}/{index}"
    solution = TASKS[task].solution(item, random.Random(f"{cfg.seed}:{rid}"), cfg.redundancy)
    meta = {k: v for k, v in item["metadata"].items() if k != "difficulty"}
    return {"id": rid, "question": item["question"].strip(), "answer": f"{solution}\n#### {item['answer']}",
            "task": task, "meta": meta}


# ---------------------------------------------------------------- runner

def run_lab_data(cfg: LabDataConfig) -> dict:
    """Write the three splits and ``summary.json`` under ``cfg.out``; returns the summary."""
    splits = make_splits(cfg)
    out = Path(cfg.out)
    for split, rows in splits.items():
        write_jsonl_atomic(out / f"{split}.jsonl", rows)
    summary = {"schema_version": SCHEMA_VERSION, "generator": f"reasoning-gym=={_installed_version()}",
               "n": {s: len(r) for s, r in splits.items()},
               "per_task": {s: dict(Counter(r["task"] for r in rows)) for s, rows in splits.items()},
               "config": to_dict(cfg)}
    write_json_atomic(out / LAB_DATA_SUMMARY, summary)
    logger.info("wrote %s questions to %s", summary["n"], out)
    return summary


def _installed_version() -> str:
    from importlib.metadata import version

    return version("reasoning-gym")


def show(cfg: LabDataConfig, summary) -> None:
    """What ``tokenskip lab-data`` prints."""
    print(f"lab-data: {summary['n']} -> {cfg.out}")
