"""build-sft: γ mixture (uniform, seeded), prompt/completion records, validation split, gold source."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from tokenskip.contract.io import DataError, read_jsonl
from tokenskip.finetune.sft import PAPER_RATIOS, Trajectory, assign_ratios, draw_ratio, split_groups
from tokenskip.stages.build_sft import SFTDataConfig, run_build_sft
from tokenskip.task.prompt_format import PromptFormat, load_prompt_format
from tokenskip.task.prompts import answer_line, build_prompt, format_ratio


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_compressed(folder, n=20, ratios=(0.9, 0.8, 0.7, 0.6, 0.5), cots=None, ids=None, drop=None):
    """A hand-made 'tokenskip compress' folder: source.jsonl + ratio-<γ>.jsonl (+ summary.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = ids or [f"q{i}" for i in range(n)]
    src = []
    for i, rid in enumerate(ids):
        cot = cots[i] if cots else f"Step one for {rid}. Step two adds {i} and {i}. So the total is {2 * i}."
        src.append({"id": rid, "question": f"What is {i} + {i}?", "answer": str(2 * i), "cot": cot,
                    "cot_tokens": len(cot.split())})
    write_jsonl(folder / "source.jsonl", src)
    for r in ratios:
        rows = []
        for s in src:
            if drop and (s["id"], r) in drop:
                continue
            words = s["cot"].split()
            keep = words[:max(1, round(r * len(words)))]
            rows.append({"id": s["id"], "question": s["question"], "answer": s["answer"], "ratio": r,
                         "cot": " ".join(keep), "original_tokens": len(words), "kept_tokens": len(keep),
                         "achieved_ratio": len(keep) / len(words), "scorer": "test", "overshoot": False})
        write_jsonl(folder / f"ratio-{format_ratio(r)}.jsonl", rows)
    (folder / "summary.json").write_text("{}")
    return src


def trajs(n):
    return [Trajectory(f"t{i}", f"t{i}", "q", "1", {r: "c" for r in PAPER_RATIOS}) for i in range(n)]


def test_gamma_mixture_is_uniform_and_seeded():
    n, k = 3000, len(PAPER_RATIOS)
    a = assign_ratios(trajs(n), PAPER_RATIOS, seed=42)
    counts = Counter(a.values())
    assert set(counts) == set(PAPER_RATIOS)
    expected = n / k
    chi2 = sum((counts[r] - expected) ** 2 / expected for r in PAPER_RATIOS)
    # chi-square with 5 degrees of freedom: P(chi2 > 20.5) ≈ 0.001
    assert chi2 < 20.5, (chi2, counts)
    assert assign_ratios(trajs(n), PAPER_RATIOS, seed=42) == a
    b = assign_ratios(trajs(n), PAPER_RATIOS, seed=7)
    changed = sum(a[i] != b[i] for i in a)
    # independent draws agree with probability 1/6
    assert abs(changed / n - 5 / 6) < 0.05
    # a trajectory's draw does not depend on the others in the set
    assert assign_ratios(trajs(10), PAPER_RATIOS, seed=42) == {f"t{i}": a[f"t{i}"] for i in range(10)}
    assert draw_ratio("t3", [0.5], 1) == 0.5


def test_missing_version_draws_among_available():
    t = Trajectory("x", "x", "q", "1", {1.0: "a", 0.5: "b"})
    for seed in range(30):
        assert assign_ratios([t], PAPER_RATIOS, seed)["x"] in (1.0, 0.5)


def test_validation_split_share_and_seed():
    groups = [f"g{i}" for i in range(1000)]
    val = split_groups(groups, 0.1, seed=42)
    assert len(val) == 100 and val <= set(groups)
    assert split_groups(list(reversed(groups)), 0.1, seed=42) == val
    assert split_groups(groups, 0.1, seed=1) != val
    assert split_groups(groups, 0.0, seed=42) == set()


def test_build_sft_self(tmp_path, smol_tokenizer):
    src = make_compressed(tmp_path / "c", n=40)
    cfg = SFTDataConfig(compressed=str(tmp_path / "c"), out=str(tmp_path / "sft"), validation_share=0.25)
    stats = run_build_sft(cfg, tokenizer=smol_tokenizer)
    train = read_jsonl(tmp_path / "sft" / "train.jsonl")
    val = read_jsonl(tmp_path / "sft" / "validation.jsonl")
    assert (len(train), len(val)) == (30, 10)
    assert stats["n"] == {"train": 30, "validation": 10, "total": 40}
    assert sum(stats["per_ratio"]["train"].values()) == 30
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    by_id = {s["id"]: s for s in src}
    ratios_seen = set()
    for row in train + val:
        s, g = by_id[row["id"]], row["ratio"]
        ratios_seen.add(g)
        assert row["prompt"] == build_prompt(smol_tokenizer, s["question"], ratio=g)
        assert row["prompt"].endswith("<|im_start|>assistant\n")
        assert ("<|eot_id|>" in row["prompt"]) == (g < 1.0)
        if g < 1.0:
            assert f"<|eot_id|>{format_ratio(g)}<|eot_id|>" in row["prompt"]
            comp = {r["id"]: r["cot"] for r in read_jsonl(tmp_path / "c" / f"ratio-{format_ratio(g)}.jsonl")}
            assert row["completion"] == comp[row["id"]] + answer_line(s["answer"])
        else:
            assert row["completion"] == s["cot"] + answer_line(s["answer"])
        assert row["completion"].endswith(f"$\\boxed{{{s['answer']}}}$")
    assert len(ratios_seen) >= 4
    fmt = load_prompt_format(tmp_path / "sft")  # the prompt format travels with the data, then the adapter
    assert fmt == PromptFormat(system_prompt=None, marker_delimiter="<|eot_id|>", ratios=(1.0, 0.9, 0.8, 0.7, 0.6, 0.5))
    assert fmt.messages("What is 1 + 1?", 0.5) == [{"role": "user", "content": train[0]["prompt"].split(
        "<|im_start|>user\n")[1].split("\n", 1)[0] + "\nWhat is 1 + 1?<|eot_id|>0.5<|eot_id|>"}]
    # rerun: byte-identical output
    before = {p: (tmp_path / "sft" / p).read_bytes() for p in ("train.jsonl", "validation.jsonl", "stats.json")}
    run_build_sft(SFTDataConfig(compressed=str(tmp_path / "c"), out=str(tmp_path / "sft"), validation_share=0.25),
              tokenizer=smol_tokenizer)
    assert before == {p: (tmp_path / "sft" / p).read_bytes() for p in before}


def test_missing_ratio_file_is_a_clear_error(tmp_path, smol_tokenizer):
    make_compressed(tmp_path / "c", n=4, ratios=(0.5,))
    cfg = SFTDataConfig(compressed=str(tmp_path / "c"), out=str(tmp_path / "sft"), ratios=PAPER_RATIOS)
    with pytest.raises(FileNotFoundError, match=r"γ = 0\.9, 0\.8, 0\.7, 0\.6.*ratio-0\.5\.jsonl"):
        run_build_sft(cfg, tokenizer=smol_tokenizer)
    # only the γ that exist (+1.0) can be drawn
    stats = run_build_sft(SFTDataConfig(compressed=str(tmp_path / "c"), out=str(tmp_path / "sft"), ratios=[1.0, 0.5],
                                    validation_share=0.0), tokenizer=smol_tokenizer)
    assert set(stats["per_ratio"]["train"]) == {"1.0", "0.5"}


def test_bad_row_names_file_line_field(tmp_path, smol_tokenizer):
    make_compressed(tmp_path / "c", n=3, ratios=(0.5,))
    p = tmp_path / "c" / "ratio-0.5.jsonl"
    rows = read_jsonl(p)
    del rows[1]["cot"]
    write_jsonl(p, rows)
    with pytest.raises(DataError, match=r"ratio-0\.5\.jsonl, line 2: field 'cot'"):
        run_build_sft(SFTDataConfig(compressed=str(tmp_path / "c"), out=str(tmp_path / "o"), ratios=[1.0, 0.5]),
                  tokenizer=smol_tokenizer)


GSM_ROWS = [{"question": f"Tom has {i} apples and buys {i} more. How many?",
             "answer": f"He has {i} + {i} = <<{i}+{i}={2 * i}>>{2 * i} apples.\n#### {2 * i}"} for i in range(1, 9)]


def test_gold_source_restricts_to_compressed_ids(tmp_path, smol_tokenizer):
    from tokenskip.task.data import load_problems

    data = tmp_path / "train.jsonl"
    write_jsonl(data, GSM_ROWS)
    problems = load_problems("gsm8k", str(data))
    # the folder was built from the gold solutions of the first 5 problems
    make_compressed(tmp_path / "c", ids=[p.id for p in problems[:5]], cots=[p.solution for p in problems[:5]])
    cfg = SFTDataConfig(compressed=str(tmp_path / "c"), out=str(tmp_path / "sft"), cot_source="gold",
                        benchmark="gsm8k", data=str(data), validation_share=0.0)
    run_build_sft(cfg, tokenizer=smol_tokenizer)
    rows = read_jsonl(tmp_path / "sft" / "train.jsonl")
    assert [r["id"] for r in rows] == [p.id for p in problems[:5]]
    for r, p in zip(rows, problems):
        if r["ratio"] == 1.0:
            assert r["completion"] == p.solution + answer_line(p.answer)
            assert "<<" not in r["completion"]

    # 'both': each problem twice, ids suffixed, and the split keeps both copies on one side
    make_compressed(tmp_path / "s", ids=[p.id for p in problems])  # self-generated CoTs
    both = SFTDataConfig(compressed=str(tmp_path / "s"), out=str(tmp_path / "both"), cot_source="both",
                         benchmark="gsm8k", data=str(data), validation_share=0.25)
    run_build_sft(both, tokenizer=smol_tokenizer)
    tr = read_jsonl(tmp_path / "both" / "train.jsonl")
    va = read_jsonl(tmp_path / "both" / "validation.jsonl")
    assert len(tr) + len(va) == 16 and len(va) == 4
    assert {r["id"].rsplit("#", 1)[0] for r in tr}.isdisjoint({r["id"].rsplit("#", 1)[0] for r in va})
    assert all(r["ratio"] == 1.0 for r in tr + va if r["id"].endswith("#gold"))  # no compressed gold here

    # gold with a folder of self-generated CoTs and γ < 1 requested: no compressed gold exists
    with pytest.raises(ValueError, match="not built from the gold solutions"):
        run_build_sft(SFTDataConfig(compressed=str(tmp_path / "s"), out=str(tmp_path / "g2"), cot_source="gold",
                                benchmark="gsm8k", data=str(data)), tokenizer=smol_tokenizer)


def test_cli_accepts_the_documented_flags(tmp_path, smol_tokenizer):
    from tokenskip.cli import main

    data = tmp_path / "train.jsonl"
    write_jsonl(data, GSM_ROWS)
    from tokenskip.task.data import load_problems

    problems = load_problems("gsm8k", str(data), limit=6)
    make_compressed(tmp_path / "c", ids=[p.id for p in problems], cots=[p.solution for p in problems])
    rc = main(["build-sft", "--compressed", str(tmp_path / "c"), "--cot-source", "gold", "--benchmark", "gsm8k",
               "--data", str(data), "--limit", "6", "--model", "smollm2-135m-instruct", "--out",
               str(tmp_path / "sft")])
    assert rc == 0
    stats = json.loads((tmp_path / "sft" / "stats.json").read_text())
    assert stats["n"]["total"] == 6 and stats["n"]["validation"] == 1
    assert math.isclose(sum(stats["per_ratio"]["train"].values()), 5)
    assert main(["build-sft", "--compressed", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2


def test_summary_marks_folder_as_gold(tmp_path, smol_tokenizer):
    """compress's summary.json says cot_source=gold: gold trajectories use its compressed rows."""
    data = tmp_path / "train.jsonl"
    write_jsonl(data, GSM_ROWS)
    make_compressed(tmp_path / "c", ids=[f"gsm8k/train/{i}" for i in range(4)], ratios=(0.5,))
    (tmp_path / "c" / "summary.json").write_text(json.dumps({"settings": {"cot_source": "gold"}}))
    stats = run_build_sft(SFTDataConfig(compressed=str(tmp_path / "c"), out=str(tmp_path / "o"), cot_source="gold",
                                    data=str(data), ratios=[1.0, 0.5], validation_share=0.0),
                      tokenizer=smol_tokenizer)
    assert stats["n"]["total"] == 4 and stats["per_ratio"]["train"]["0.5"] > 0


def test_default_ratios_are_what_the_compress_folder_holds(tmp_path, smol_tokenizer):
    from tokenskip.finetune.sft import available_ratios

    make_compressed(tmp_path / "c", n=12, ratios=(0.9, 0.7, 0.5))
    assert available_ratios(tmp_path / "c") == [1.0, 0.9, 0.7, 0.5]
    cfg = SFTDataConfig(compressed=str(tmp_path / "c"), out=str(tmp_path / "sft"), validation_share=0.0)
    stats = run_build_sft(cfg, tokenizer=smol_tokenizer)
    assert set(stats["per_ratio"]["train"]) == {"1.0", "0.9", "0.7", "0.5"}
    # planned before the folder exists (pipeline): left unresolved, then resolved when run
    late = SFTDataConfig(compressed=str(tmp_path / "later"), out=str(tmp_path / "sft2"))
    late.validate()
    assert late.ratios is None


def test_ratios_per_cot_draws_distinct_gammas_and_keeps_questions_together(tmp_path, smol_tokenizer):
    from tokenskip.finetune.sft import draw_ratios

    # k = 1 is the paper's draw, unchanged
    assert draw_ratios("t3", list(PAPER_RATIOS), 42, 1) == [draw_ratio("t3", list(PAPER_RATIOS), 42)]
    two = draw_ratios("t3", list(PAPER_RATIOS), 42, 2)
    assert len(set(two)) == 2 and set(two) <= set(PAPER_RATIOS) and two == sorted(two, reverse=True)
    assert draw_ratios("t3", list(PAPER_RATIOS), 42, 99) == sorted(PAPER_RATIOS, reverse=True)

    make_compressed(tmp_path / "c", n=20)
    cfg = SFTDataConfig(compressed=str(tmp_path / "c"), out=str(tmp_path / "sft"), validation_share=0.25,
                        ratios_per_cot=3)
    stats = run_build_sft(cfg, tokenizer=smol_tokenizer)
    train = read_jsonl(tmp_path / "sft" / "train.jsonl")
    val = read_jsonl(tmp_path / "sft" / "validation.jsonl")
    assert stats["n"] == {"train": 45, "validation": 15, "total": 60}
    ids = [r["id"] for r in train + val]
    assert len(set(ids)) == 60
    base = Counter(i.split("@")[0] for i in ids)
    assert set(base.values()) == {3}
    # the three rows of a question share its split, and carry three distinct γ
    assert not {i.split("@")[0] for i in (r["id"] for r in train)} & {i.split("@")[0] for i in (r["id"] for r in val)}
    for q in base:
        gs = [r["ratio"] for r in train + val if r["id"].split("@")[0] == q]
        assert len(set(gs)) == 3 and all(r["id"].endswith("@" + format_ratio(r["ratio"])) for r in train + val)
    with pytest.raises(ValueError, match="ratios-per-cot"):
        SFTDataConfig(compressed="c", out="o", ratios_per_cot=0).validate()
