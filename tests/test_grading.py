"""Grading: answer extraction, GSM8K numeric equality, MATH equivalence via math-verify, time limits."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tokenskip.task import verifier
from tokenskip.task.grading import (
    answers_match,
    extract_answer,
    grade,
    is_correct,
    split_cot,
)
from tokenskip.task.verifier import VerifierPool

# (prediction, gold): must match
GSM8K_MATCH = [
    ("18", "18"),
    ("18.0", "18"),
    ("18.00", "18"),
    ("$18", "18"),
    ("\\$18", "18"),
    ("18 dollars", "18"),
    ("\\$18.00", "18"),
    ("1,800", "1800"),
    ("1800", "1,800"),
    ("1,234,567", "1234567"),
    ("1\\,800", "1800"),
    ("25%", "25"),
    ("25\\%", "25"),
    ("3/4", "0.75"),
    ("\\frac{3}{4}", "0.75"),
    ("\\dfrac{3}{4}", "3/4"),
    ("0.75", "3/4"),
    ("-3", "-3"),
    ("x = 18", "18"),
    ("18 \\text{ apples}", "18"),
    ("\\text{18 cookies}", "18"),
    ("5 + 13 = 18", "18"),
    ("18.", "18"),
    ("18 m^2", "18"),
    ("18 \\text{ cm}^2", "18"),
    ("18 km/h", "18"),
    ("0.5", ".5"),
    ("−4", "-4"),
    ("x=-4", "-4"),
    ("90^\\circ", "90"),
    ("90°", "90"),
    ("1/3", "0.3333333"),
    ("12.50", "12.5"),
    ("\\$1,250.00", "1250"),
    ("007", "7"),
    ("\\boxed{18}", "18"),
    ("$\\$ 18$", "18"),
    ("18 hours", "18.0"),
    ("\\mathrm{18}", "18"),
    ("\\frac12", "0.5"),
]

# (prediction, gold): must NOT match
GSM8K_MISMATCH = [
    ("0.18", "18"),        # the reference grader's gold/100 fault
    ("1800", "18"),        # ... and gold x 100
    ("18", "0.18"),
    ("18", "1800"),
    ("-3", "3"),
    ("3", "-3"),
    ("25", "0.25"),
    ("25%", "0.25"),
    ("17", "18"),
    ("18.5", "18"),
    ("18.01", "18"),
    ("180", "18"),
    ("1,800", "18"),
    ("1.8", "18"),
    ("3/4", "0.7"),
    ("\\frac{4}{3}", "0.75"),
    ("0.33", "1/3"),
    ("", "18"),
    ("   ", "18"),
    ("eighteen", "18"),
    ("no answer", "18"),
    ("5-3", "-3"),         # subtraction, not a negative number
    ("18 - 5", "-5"),
    ("1/0", "0"),
    ("12", "21"),
    ("999999", "1000000"),
    ("1000001", "1000000"),
    ("0", "18"),
    ("18 m^2", "2"),
    ("2 \\times 9 = 18", "9"),
    ("$-18", "18"),
    ("-\\$18", "18"),
    ("18", "-18"),
    ("0.001", "1"),
    ("100", "1"),
    ("10", "100"),
    ("4.5", "45"),
    ("45", "4.5"),
    ("\\frac{1}{2}", "2"),
    ("2/1", "0.5"),
]

# (prediction, gold): must match under MATH (math-verify)
MATH_MATCH = [
    ("\\frac{1}{2}", "\\frac{1}{2}"),
    ("\\dfrac{14}{3}", "\\frac{14}{3}"),
    ("\\tfrac{14}{3}", "\\frac{14}{3}"),
    ("14/3", "\\frac{14}{3}"),
    ("0.5", "\\frac{1}{2}"),
    ("\\frac12", "0.5"),
    ("3", "x=3"),
    ("x=3", "3"),
    ("x = 5", "x=5"),
    ("\\text{Evelyn}", "Evelyn"),
    ("Evelyn", "\\text{Evelyn}"),
    ("(C)", "\\text{(C)}"),
    ("90", "90^\\circ"),
    ("90^\\circ", "90"),
    ("90^{\\circ}", "90^\\circ"),
    ("10", "10\\text{ cm}"),
    ("10 \\text{ cm}", "10"),
    ("\\left(3, \\frac{\\pi}{2}\\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("[-2,7)", "[-2, 7)"),
    ("(-\\infty, 3]", "(-\\infty,3]"),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("11\\sqrt{2}", "11\\sqrt2"),
    ("70\\sqrt{2}", "70 \\sqrt{2}"),
    ("(x+1)^2", "x^2+2x+1"),
    ("-2, 1", "1,-2"),
    ("\\{2,1\\}", "\\{1,2\\}"),
    ("6-5i", "6 - 5i"),
    ("-\\frac{\\pi}{6}", "-\\frac{\\pi}{6}"),
    ("1,000", "1000"),
    ("1.25", "\\frac{5}{4}"),
    ("0.15", "\\frac{3}{20}"),
    ("\\$18", "18"),
    ("2220", "2220"),
    ("3\\sqrt{13}", "\\sqrt{117}"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "x^5-x^4+x^3-x^2+x-1"),
    ("\\pi", "\\pi"),
    ("-50", "-50"),
    ("3, 5, 7", "3,5,7"),
    ("2x+3", "y = 2x+3"),
]

# (prediction, gold): must NOT match under MATH
MATH_MISMATCH = [
    ("\\frac{1}{3}", "\\frac{1}{2}"),
    ("0.18", "18"),
    ("18", "0.18"),
    ("3", "-3"),
    ("-3", "3"),
    ("(-\\infty, 3)", "(-\\infty, 3]"),
    ("[-2, 7]", "[-2, 7)"),
    ("(2,1)", "(1,2)"),
    ("\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("3.14", "\\pi"),
    ("60^\\circ", "\\frac{\\pi}{3}"),
    ("\\text{west}", "\\text{east}"),
    ("even", "\\text{odd}"),
    ("\\sqrt{3}", "\\sqrt{2}"),
    ("2\\sqrt{3}", "\\sqrt{8}"),
    ("x^2+1", "(x+1)^2"),
    ("6+5i", "6-5i"),
    ("5i", "5"),
    ("1, 2", "1, 2, 3"),
    ("\\frac{14}{3}", "\\frac{3}{14}"),
    ("x=4", "3"),
    ("4", "x=3"),
    ("1.26", "\\frac{5}{4}"),
    ("1.2", "1.25"),
    ("2221", "2220"),
    ("-\\frac{\\pi}{6}", "\\frac{\\pi}{6}"),
    ("11\\sqrt{3}", "11\\sqrt2"),
    ("10", "100"),
    ("3, 5", "3, 5, 7"),
    ("\\{1,2\\}", "\\{1,3\\}"),
    ("", "5"),
    ("  ", "5"),
    ("(3, \\frac{\\pi}{3})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("x^5 + x^4", "x^5 - x^4"),
    ("-50", "50"),
    ("53_8", "52_8"),
    ("\\frac{243}{625}", "\\frac{243}{626}"),
    ("13536", "13535"),
    ("0", "1"),
    ("\\infty", "-\\infty"),
    ("y", "x"),
]


@pytest.mark.parametrize("pred,gold", GSM8K_MATCH)
def test_gsm8k_match(pred, gold):
    assert answers_match(pred, gold, "gsm8k") is True


@pytest.mark.parametrize("pred,gold", GSM8K_MISMATCH)
def test_gsm8k_mismatch(pred, gold):
    assert answers_match(pred, gold, "gsm8k") is False


@pytest.mark.parametrize("pred,gold", MATH_MATCH)
def test_math_match(pred, gold):
    assert answers_match(pred, gold, "math") is True


@pytest.mark.parametrize("pred,gold", MATH_MISMATCH)
def test_math_mismatch(pred, gold):
    assert answers_match(pred, gold, "math500") is False


def test_case_lists_are_big_enough():
    assert min(len(GSM8K_MATCH), len(GSM8K_MISMATCH), len(MATH_MATCH), len(MATH_MISMATCH)) >= 40


@pytest.mark.parametrize("text,gsm8k,math", [
    ("so \\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}", "\\frac{1}{\\sqrt{2}}"),
    ("first \\boxed{5}, then \\boxed{7}.", "7", "7"),
    ("\\boxed{\\{1,\\{2\\}\\}}", "\\{1,\\{2\\}\\}", "\\{1,\\{2\\}\\}"),
    ("Steps...\n\nThe final answer is: $\\boxed{18}$", "18", "18"),
    ("Steps 3 and 4.\nThe final answer is 18.", "18", "18"),
    ("So the answer is $18", "18", "18"),
    ("So the answer is $18.", "18", "18"),
    ("The final answer is 3.5.", "3.5", "3.5"),
    ("The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}", "\\frac{1}{2}"),
    ("Final Answer: The final answer is $x=3$. I hope it is correct.", "x=3", "x=3"),
    ("Final answer: 42", "42", "42"),
    ("The answer is 5. Wait, the final answer is 6", "6", "6"),
    ("He buys 3 apples and 4 pears, 7 in all", "7", None),
    ("The total is 1,800 dollars.", "1800", None),
    ("He owes -5 now", "-5", None),
    ("no numbers here at all", None, None),
    ("", None, None),
    ("\\boxed{} then the answer is 9", "9", "9"),
])
def test_extract_answer(text, gsm8k, math):
    assert extract_answer(text, "gsm8k") == gsm8k
    assert extract_answer(text, "math") == math


def test_extract_answer_unknown_benchmark():
    with pytest.raises(ValueError, match="unknown benchmark"):
        extract_answer("\\boxed{1}", "aime")


def test_is_correct_on_full_outputs():
    out = "Natalia sold 48 clips in April and 24 in May.\n48 + 24 = 72\n\nThe final answer is: $\\boxed{72}$"
    assert is_correct(out, "72", "gsm8k")
    assert not is_correct(out, "7.2", "gsm8k")
    assert is_correct("We get 48 + 24 = 72 clips.", "72", "gsm8k")  # last-number fallback
    assert not is_correct("We get 48 + 24 = 72 clips.", "72", "math")  # no fallback for MATH
    assert is_correct("so $r=3$, $\\theta=\\pi/2$: $\\boxed{(3, \\frac{\\pi}{2})}$",
                      "\\left( 3, \\frac{\\pi}{2} \\right)", "math500")
    assert not is_correct("I don't know.", "5", "math")


def test_grade_record():
    g = grade("2 + 2 = 4\n\nThe final answer is: $\\boxed{4}$", "4", "gsm8k")
    assert (g.answer, g.correct, g.cot) == ("4", True, "2 + 2 = 4")
    g = grade("nothing", "4", "math")
    assert (g.answer, g.correct, g.cot) == (None, False, "nothing")


@pytest.mark.parametrize("text,cot", [
    ("step 1\nstep 2\n\nThe final answer is: $\\boxed{4}$", "step 1\nstep 2"),
    # the reference's literal split: a sentence with the phrase stays in the CoT (issue 13, item 3)
    ("9 + 9 = 18, so the final answer is 18.", "9 + 9 = 18, so the final answer is 18."),
    ("9 + 9 = 18, so the final answer is 18.\n\nThe final answer is: $\\boxed{18}$",
     "9 + 9 = 18, so the final answer is 18."),
    ("  step\n the FINAL ANSWER IS 4", "  step\n the FINAL ANSWER IS 4"),
    ("a\n\nThe final answer is: 1\n\nThe final answer is: 2", "a"),
    ("a\nThe final answer is: 1", "a\nThe final answer is: 1"),  # one newline: not the split
    ("  no marker here \n", "  no marker here \n"),
])
def test_split_cot(text, cot):
    assert split_cot(text) == cot


def test_lenient_extraction_kept_with_the_literal_split():
    g = grade("9 + 9 = 18, so the final answer is 18.", "18", "gsm8k")
    assert (g.answer, g.correct, g.cot) == ("18", True, "9 + 9 = 18, so the final answer is 18.")


# ------------------------------------------------------------------------------------------ time limits

PATHOLOGICAL = "9^{9^{9^{9}}}"  # math-verify/sympy tries to evaluate it and does not come back


def _timed(fn, *args, **kwargs):
    t0 = time.monotonic()
    return fn(*args, **kwargs), time.monotonic() - t0


def test_timeout_in_a_thread_with_pathological_input(caplog):
    assert answers_match("0.5", "\\frac{1}{4}+\\frac{1}{4}", "math")  # starts the child outside the timing
    with caplog.at_level(logging.WARNING, logger="tokenskip.task.verifier"), ThreadPoolExecutor(1) as ex:
        result, took = ex.submit(_timed, answers_match, PATHOLOGICAL, "1", "math", timeout_s=1.0).result(timeout=60)
    assert result is False
    assert took < 15.0  # 1 s limit + possibly a child restart on a busy 2-core machine; unlimited, it runs for minutes
    assert any("exceeded 1.0 s" in r.getMessage() for r in caplog.records)
    # the pool recovers: a fresh child gives right answers again
    assert answers_match("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", "math")


def test_timeout_with_slow_verifier_from_threads(caplog):
    slow = "import time\nmath_verify.verify = lambda *a, **k: time.sleep(60)"
    pool = VerifierPool(max_workers=2, setup_code=slow)
    try:
        with caplog.at_level(logging.WARNING, logger="tokenskip.task.verifier"), ThreadPoolExecutor(2) as ex:
            futs = [ex.submit(_timed, pool.compare, "\\frac12", "0.5", 1.0) for _ in range(2)]
            results = [f.result(timeout=120) for f in futs]
    finally:
        pool.close()
    for result, took in results:
        assert result is None  # timed out
        assert took < 15.0  # two children start in parallel, then the 1 s limit
    assert sum("exceeded 1.0 s" in r.getMessage() for r in caplog.records) == 2


def test_is_correct_false_on_timeout_via_default_pool(monkeypatch):
    slow_pool = VerifierPool(max_workers=1,
                             setup_code="import time\nmath_verify.parse = lambda *a, **k: time.sleep(60)")
    monkeypatch.setattr(verifier, "_default_pool", slow_pool)
    try:
        t0 = time.monotonic()
        done = threading.Event()
        out = {}

        def call():
            out["r"] = is_correct("\\boxed{\\frac{1}{2}}", "0.25+0.25", "math", timeout_s=1.0)
            done.set()

        th = threading.Thread(target=call)
        th.start()
        assert done.wait(60), "is_correct hung"
        assert out["r"] is False
        assert time.monotonic() - t0 < 30
    finally:
        slow_pool.close()


def test_pool_rejects_bad_timeout():
    with pytest.raises(ValueError, match="timeout_s"):
        VerifierPool().compare("1", "1", timeout_s=0)


def test_timeout_inside_a_worker_process():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a fresh interpreter, as in data-loader or evaluation worker processes
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        ok = ex.submit(answers_match, "\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", "math").result(timeout=120)
        t0 = time.monotonic()
        hung = ex.submit(answers_match, PATHOLOGICAL, "1", "math", 1.0).result(timeout=120)
        took = time.monotonic() - t0
    assert (ok, hung) == (True, False)
    assert took < 15.0  # 1 s limit + possibly a child restart on a busy 2-core machine; unlimited, it runs for minutes


# ------------------------------------------------------------------ issue 10: inputs that broke the grader

@pytest.mark.parametrize("text,bench,answer", [
    ("The answer is $\\$18$.", "gsm8k", "\\$18"),  # an escaped dollar does not end the math span
    ("Final Answer: The final answer is $\\$18.90$. I hope it is correct.", "math", "\\$18.90"),
    ("The final answer is $\\$1,\\!200$ in total.", "math", "\\$1,\\!200"),
    ("The answer is \\(\\$5\\).", "math", "\\$5"),
    ("The answer is **1/2**.", "math", "1/2"),  # markdown bold
    ("**The final answer is 42**", "gsm8k", "42"),
    ("so $\\boxed{2}$ and $\\boxed{3}$", "math", "2, 3"),  # several boxes state one answer
    ("$x=\\boxed{-1}$, $\\boxed{4}$", "math", "-1, 4"),
    ("first \\boxed{5}, then I recheck: \\boxed{7}", "math", "7"),  # a later box revises
    ("\\boxed{\\textbf{(B) }7}", "math", "\\textbf{(B) }7"),
])
def test_extract_answer_issue10(text, bench, answer):
    assert extract_answer(text, bench) == answer


@pytest.mark.parametrize("text,gold,bench,correct", [
    # 1. escaped dollars
    ("The answer is $\\$18$.", "18", "gsm8k", True),
    ("Final Answer: The final answer is $\\$18.90$. I hope it is correct.", "\\$18.90", "math", True),
    ("Final Answer: The final answer is $\\$18.90$. I hope it is correct.", "18.90", "math", True),
    ("Final Answer: The final answer is $\\$18.90$. I hope it is correct.", "\\$18.80", "math", False),
    # 2. units and explanations after a GSM8K answer do not count; a trailing computation gives its result
    ("The answer is 18 (9 x 2).", "18", "gsm8k", True),
    ("The answer is 18 (9 x 2).", "2", "gsm8k", False),
    ("She makes 18 dollars. The answer is 18 dollars per day, from 9 eggs at $2 each.", "18", "gsm8k", True),
    ("The answer is $18 per day for 7 days.", "18", "gsm8k", True),
    ("The answer is $18 per day for 7 days.", "7", "gsm8k", False),
    ("The answer is 20 - 2 = 18", "18", "gsm8k", True),
    ("The answer is 20 - 2 = 18", "20", "gsm8k", False),
    ("The answer is 9 x 2 = 18 apples, since each box holds 9.", "18", "gsm8k", True),
    ("The answer is 9 \\times 2 = \\$18.", "18", "gsm8k", True),
    ("The answer is 16, because 18 - 2 = 16.", "16", "gsm8k", True),
    ("The answer is 1,250 meters (5 laps of 250 m).", "1250", "gsm8k", True),
    ("The answer is x = 18 because 9 + 9 = 18", "18", "gsm8k", True),
    ("The final answer is: $\\boxed{18 \\text{ (9 x 2)}}$", "18", "gsm8k", True),
    # 3. markdown bold, several boxes, a choice label in the box
    ("The answer is **1/2**.", "\\frac12", "math", True),
    ("The answer is **1/2**.", "\\frac13", "math", False),
    ("The answer is **18**.", "18", "gsm8k", True),
    ("so $\\boxed{2}$ and $\\boxed{3}$", "2, 3", "math", True),
    ("so $\\boxed{3}$ and $\\boxed{2}$", "2, 3", "math", True),
    ("so $\\boxed{2}$ and $\\boxed{4}$", "2, 3", "math", False),
    ("\\boxed{\\textbf{(B) }7}", "7", "math", True),
    ("\\boxed{\\textbf{(B) }7}", "\\text{(B)}", "math", True),
    ("\\boxed{\\textbf{(B) }7}", "8", "math", False),
    ("\\boxed{(C) \\frac{1}{2}}", "\\frac{1}{2}", "math", True),
    # 4. no float-precision false positives; legitimate numeric equivalences kept
    ("\\boxed{\\frac{1}{2^{98}}}", "\\frac{1}{2^{99}}", "math", False),
    ("\\boxed{\\frac{1}{2004!}}", "\\frac{1}{2006!}", "math", False),
    ("\\boxed{\\frac{\\sqrt{2}}{2^{98}}}", "\\frac{\\sqrt{2}}{2^{99}}", "math", False),
    ("\\boxed{0.0000001}", "\\frac{1}{2^{30}}", "math", False),
    ("\\boxed{10^{-7}}", "10^{-8}", "math", False),
    ("\\boxed{\\frac{1}{2^{98}}}", "2^{-98}", "math", True),
    ("\\boxed{\\frac{1}{2004!}}", "\\frac{1}{2004!}", "math", True),
    ("\\boxed{\\frac{2005}{2005!}}", "\\frac{1}{2004!}", "math", True),
    ("\\boxed{0.333333}", "\\frac{1}{3}", "math", True),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", "math", True),
    ("\\boxed{\\frac{\\sqrt{3}}{3}}", "\\frac{1}{\\sqrt{3}}", "math", True),
])
def test_is_correct_issue10(text, gold, bench, correct):
    assert is_correct(text, gold, bench) is correct
