"""Grading: pull the final answer out of a CoT and decide whether it matches the gold answer.

* Extraction (both benchmarks): the last ``\\boxed{…}`` (nested braces handled; boxes written one
  after the other, ``$\\boxed{2}$ and $\\boxed{3}$``, give ``2, 3``), else the text after the last
  "The final answer is" / "the answer is" / "Final answer:" (one line; ``$…$`` with escaped ``\\$``
  inside, markdown ``**bold**`` and the closing period removed), else — GSM8K only — the last number.
* GSM8K: exact numeric equality after removing ``$``, thousands commas, ``%``, units and LaTeX
  wrappers (``18`` = ``18.0`` = ``$18`` = ``18 dollars`` = ``1,800``/``1800``; ``3/4`` = ``0.75``).
  From an answer statement the value is its first number, so units and explanations after it do not
  count (``18 (9 x 2)`` → 18), unless the statement opens with a computation, which gives its result
  (``20 - 2 = 18`` → 18). Unlike the reference code (which grades GSM8K with its MATH grader), a
  prediction equal to gold/100 or gold×100 is *not* accepted: ``0.18`` ≠ ``18``.
* MATH / MATH-500: symbolic equivalence with ``math-verify`` (fractions, intervals, tuples, ``x=3``
  vs ``3``, ``\\text{}`` units, degrees); a choice label before a value (``\\textbf{(B) }7``) may match
  either. math-verify compares numbers at float precision (it says ``\\frac{1}{2^{98}}`` =
  ``\\frac{1}{2^{99}}``), so when both answers are plain numbers its "equal" is checked again: exact
  equality for rationals, 50-digit evaluation for other exact numbers, and a decimal the model wrote
  must equal the exact value rounded to the decimals written.

math-verify's own time limit uses ``signal.alarm``, which raises ``ValueError`` outside the main
thread. Here every math-verify comparison runs in a small pool of child processes (started lazily on
first use, then reused) under a hard wall-clock limit that holds in any thread or worker process and
even when sympy is stuck in C code: on timeout the child is killed, a warning is logged and the answer
counts as incorrect. Answers equal after light normalization, or both plain decimals, are decided in
process without a child.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from tokenskip.task.benchmarks import grader_kind, last_boxed
from tokenskip.errors import GradingError
from tokenskip.task.prompts import ANSWER_PHRASE

logger = logging.getLogger(__name__)

#: Wall-clock limit for one math-verify comparison (parse gold + parse prediction + verify), seconds.
#: Same figure as math-verify's own per-operation default (5 s).
DEFAULT_TIMEOUT_S = 5.0
#: Child processes in the default pool; each holds sympy + math-verify (~65 MB resident).
DEFAULT_MAX_WORKERS = 2
#: Relative tolerance for GSM8K numeric equality, so 1/3 = 0.333333 (rounding only; 0.18 ≠ 18).
GSM8K_REL_TOL = 1e-6

_FINAL_PHRASE = re.compile(r"final\s+answer\s*:|(?:the\s+)?(?:final\s+)?answer\s+is\b\s*:?", re.IGNORECASE)


@dataclass
class Grade:
    """Result of grading one model output.

    Attributes:
        answer: extracted final answer (``None`` when nothing could be extracted).
        correct: whether ``answer`` matches the gold answer.
        cot: the CoT part of the output (see :func:`split_cot`); CoT tokens are counted on this.
    """

    answer: str | None
    correct: bool
    cot: str


# ----------------------------------------------------------------------------------------- extraction


def split_cot(text: str) -> str:
    """The CoT part of a model output: the text before the first literal
    :data:`~tokenskip.task.prompts.COT_SPLIT` (``"\\n\\nThe final answer is:"``), or the whole text, unstripped.

    This is the reference's split (``output.split("\\n\\nThe final answer is:")[0]``), so CoT token
    counts, ActRatio and SFT targets match the paper's; a sentence such as "so the final answer is 18."
    stays in the CoT. Answer *extraction* keeps its lenient phrase search (:func:`extract_answer`).
    """
    from tokenskip.task.prompts import COT_SPLIT

    # an output that opens with the answer line (nocot) has no CoT at all
    return ("\n\n" + text).split(COT_SPLIT, 1)[0][2:]


def _find_unescaped(s: str, token: str, start: int) -> int:
    """Index of the first ``token`` in ``s`` from ``start`` not escaped by a backslash (``\\$`` is a dollar
    sign, not a math delimiter); -1 when there is none."""
    i = s.find(token, start)
    while i > 0 and s[i - 1] == "\\":
        i = s.find(token, i + 1)
    return i


def _answer_after_phrase(rest: str) -> str | None:
    """The answer written right after a "final answer is" phrase: one line, markdown bold, math
    delimiters and the closing period removed (``$\\frac{1}{2}$.`` → ``\\frac{1}{2}``, ``$18`` → ``18``,
    ``$\\$18.90$`` → ``\\$18.90``, ``**1/2**.`` → ``1/2``)."""
    s = rest.strip().split("\n", 1)[0].replace("**", "").strip()
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(open_):
            end = _find_unescaped(s, close, len(open_))
            # no closing delimiter: a currency sign ("the answer is $18.")
            s = s[len(open_): end] if end >= 0 else s[len(open_):]
            break
    else:
        m = re.search(r"\.(?:\s|$)", s)  # end of the sentence; "3.5" has no space after its dot
        if m:
            s = s[: m.start()]
    s = s.strip().rstrip(".,;:").strip()
    return s or None


def _gsm8k_numbers(text: str) -> list[str]:
    """Every number in ``text`` after GSM8K clean-up, as strings like ``-3``, ``1800``, ``0.75``, ``3/4``."""
    s = text.replace("\u2212", "-").replace("\u2013", "-")
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}", r" \1 ", s)
    s = re.sub(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*([\d.,]+)\s*\}", r"\1/\2", s)
    s = re.sub(r"\\[dt]?frac(\d)(\d)", r"\1/\2", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", " ", s)
    s = re.sub(r"(?<=[A-Za-z}])\s*\^\s*\{?\d+\}?|[²³]", " ", s)  # unit exponents: "18 m^2" is 18, not 2
    s = re.sub(r"\\[,;:! ]|\\\$|\\%|[$%~]", "", s)  # thin spaces glue digits ("1\,800"), so drop them
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators
    # a minus sign right after a word or ")" is subtraction, not a sign: "5-3" -> 5, 3
    return re.findall(r"(?<![\w).])-?(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+(?:\.\d+)?)?", s)


def _to_fraction(num: str) -> Fraction | None:
    try:
        if "/" in num:
            a, b = num.split("/", 1)
            return Fraction(a) / Fraction(b)
        return Fraction(num)
    except (ValueError, ZeroDivisionError):
        return None


_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
#: What may stand between boxes that together state one answer: spaces, ``$``, commas, "and", ``\\quad``.
_BOX_GAP = re.compile(r"(?:\s|\$|,|;|&|\band\b|\\q?quad\b|\\text\s*\{\s*(?:and|,)?\s*\})*")


def final_boxes(text: str) -> list[str]:
    """Contents of the boxes that state the final answer: the last ``\\boxed{…}``/``\\fbox{…}`` plus the
    boxes right before it separated only by spaces, ``$``, commas or "and" (``$\\boxed{2}$ and
    $\\boxed{3}$`` → ``["2", "3"]``; ``first \\boxed{5}, then \\boxed{7}`` → ``["7"]``: a later box
    revises an earlier one). Empty boxes are skipped; ``[]`` when there is none."""
    spans = []  # (start of "\\boxed", end after "}", content)
    for m in _BOX_START.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0 and text[m.end():i - 1].strip():
            spans.append((m.start(), i, text[m.end():i - 1].strip()))
    spans = [sp for k, sp in enumerate(spans) if not (k and sp[0] < spans[k - 1][1])]  # nested boxes: outer only
    if not spans:
        return []
    group = [spans[-1]]
    for sp in reversed(spans[:-1]):
        if not _BOX_GAP.fullmatch(text[sp[1]:group[0][0]]):
            break
        group.insert(0, sp)
    return [c for _, _, c in group]


def extract_answer(text: str, benchmark: str) -> str | None:
    """The final answer in a model output.

    Order: content of the last ``\\boxed{…}`` (several adjacent boxes joined by ``", "``, see
    :func:`final_boxes`); else the text after the last "The final answer is" / "the answer is" /
    "Final answer:" (one line; ``$…$``, ``**bold**`` and the closing period removed); else, for GSM8K
    only, the last number in the text.

    Args:
        text: full model output (CoT + answer).
        benchmark: a grader kind (``numeric``, ``symbolic``) or a benchmark name (``gsm8k``, ``math``...;
            see :mod:`tokenskip.task.benchmarks`).
    Returns:
        The answer string, or ``None`` when nothing is found.
    Raises:
        ValueError: unknown benchmark or grader kind.
    """
    kind = grader_kind(benchmark)
    boxes = final_boxes(text)
    if boxes:
        return ", ".join(boxes)
    boxed = last_boxed(text)  # the brace-less "\\boxed 5" form
    if boxed:
        return boxed
    phrases = list(_FINAL_PHRASE.finditer(text))
    if phrases:
        ans = _answer_after_phrase(text[phrases[-1].end():])
        if ans:
            return ans
    if kind == "numeric":
        nums = _gsm8k_numbers(text)
        return nums[-1] if nums else None
    return None


# ----------------------------------------------------------------------------------------- comparison


#: The leading arithmetic of an answer statement: numbers, operators, "=", currency and LaTeX operators.
_LEADING_MATH = re.compile(r"(?:[\s$\d.,+\-\u2212\u2013*/\u00d7\u00f7\u00b7=\u2248():%^{}]|(?<![A-Za-z])x(?![A-Za-z])"
                           r"|\\(?:times|cdot|div|[dt]?frac|left|right|approx|\$|%|[,;:! ]))*")
_EQUALS = re.compile(r"=|\u2248|\\approx")


def _gsm8k_value(answer: str) -> Fraction | None:
    """The value an answer statement gives: the result of a leading computation (``20 - 2 = 18 apples``
    → 18), else its first number, so units and explanations after it do not count (``18 (9 x 2)`` →
    18, ``18 dollars per day, from 9 eggs at $2 each`` → 18). A statement that does not open with a
    number (``x = 18``, ``\\text{18 cookies}``) is read whole by the same rule."""
    head = _LEADING_MATH.match(answer).group(0)
    if not re.search(r"\d", head):
        head = answer
    parts = _EQUALS.split(head)
    for part in reversed(parts):  # the result: the last side of the equation that holds a number
        nums = _gsm8k_numbers(part)
        if nums:
            return _to_fraction(nums[0])
    return None


def _gsm8k_match(pred: str, gold: str) -> bool:
    g = _gsm8k_value(gold)
    if g is None:  # non-numeric gold (a custom JSONL): plain text equality
        return _light_latex(pred) == _light_latex(gold)
    p = _gsm8k_value(pred)
    if p is None:
        return False
    return p == g or abs(p - g) <= Fraction(GSM8K_REL_TOL) * max(1, abs(g))


def _light_latex(s: str) -> str:
    """Normalization that never makes two different answers equal: spacing, ``\\left``/``\\right``,
    ``\\dfrac``/``\\tfrac``, ``\\text{}`` wrappers, degree marks, ``\\$``, final period."""
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"\\(?:left|right)\b", "", s)
    s = re.sub(r"\\[dt]frac\b", r"\\frac", s)
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", s)
    s = re.sub(r"\\[,;:! ]|\\\$|\s+", "", s)
    return s


_PLAIN_DECIMAL = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")


def _math_fast(pred: str, gold: str) -> bool | None:
    """Decide without math-verify when that is safe; ``None`` = needs math-verify."""
    p, g = _light_latex(pred), _light_latex(gold)
    if p == g and p:
        return True
    if _PLAIN_DECIMAL.fullmatch(p) and _PLAIN_DECIMAL.fullmatch(g):
        return Fraction(p) == Fraction(g)
    return None


def answers_match(pred: str, gold: str, benchmark: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether an already-extracted answer ``pred`` equals ``gold``.

    Args:
        pred: extracted answer (see :func:`extract_answer`).
        gold: gold answer string (GSM8K: a number; MATH: LaTeX without ``$``).
        benchmark: a grader kind (``numeric``, ``symbolic``) or a benchmark name (``gsm8k``, ``math``...).
        timeout_s: MATH only: wall-clock limit for the math-verify comparison, seconds. On timeout the
            answer counts as incorrect and a warning is logged.
    Raises:
        ValueError: unknown benchmark or grader kind.
        GradingError: the math-verify child process cannot start (e.g. math-verify not installed).
    """
    kind = grader_kind(benchmark)
    if not pred or not pred.strip():
        return False
    if kind == "numeric":
        return _gsm8k_match(pred, gold)
    choice = _CHOICE.fullmatch(pred.strip())
    if choice and choice.group("value").strip():  # "\\textbf{(B) }7": the label or the value may be the gold
        label = next(g for g in choice.group("a", "b", "c") if g)
        return any(_math_match(c, gold, timeout_s) for c in (choice.group("value").strip(), f"({label})"))
    return _math_match(pred, gold, timeout_s)


#: A multiple-choice label before a value: ``\\textbf{(B) }7``, ``\\text{(B)} 7``, ``(B) 7``.
_CHOICE = re.compile(r"\s*(?:\\text(?:bf|rm)?\s*\{\s*\((?P<a>[A-E])\)\s*\}|\((?P<b>[A-E])\)|(?P<c>[A-E])\))\s*(?P<value>.*)",
                     re.DOTALL)


def _math_match(pred: str, gold: str, timeout_s: float) -> bool:
    fast = _math_fast(pred, gold)
    if fast is not None:
        return fast
    return bool(default_pool().compare(gold, pred, timeout_s))


def grade(prediction_text: str, gold: str, benchmark: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Grade:
    """Extract the answer from a full model output and compare it to ``gold`` (see :func:`answers_match`)."""
    answer = extract_answer(prediction_text, benchmark)
    correct = answer is not None and answers_match(answer, gold, benchmark, timeout_s=timeout_s)
    return Grade(answer=answer, correct=correct, cot=split_cot(prediction_text))


def is_correct(prediction_text: str, gold: str, benchmark: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether the full model output ``prediction_text`` ends in the gold answer.

    Extraction as in :func:`extract_answer`, comparison as in :func:`answers_match`; no answer found
    counts as incorrect.
    """
    return grade(prediction_text, gold, benchmark, timeout_s=timeout_s).correct


# ------------------------------------------------------------------------------ math-verify child pool


#: Digits for comparing exact non-rational numbers (``\\sqrt{8}`` vs ``2\\sqrt{2}``), and their relative tolerance.
_EXACT_DIGITS = 50
_EXACT_REL_TOL = 1e-40


def _numbers_agree(gold_parsed: list, pred_parsed: list, gold: str, pred: str) -> bool:
    """Second check of a math-verify "equal" when both answers are plain numbers (runs in the child).

    math-verify compares numbers after rounding to ``float_rounding=6`` digits, so ``1/2^98`` equals
    ``1/2^99`` and ``1/2004!`` equals ``1/2006!`` there. Here: two rationals must be equal exactly;
    other exact numbers must agree to :data:`_EXACT_DIGITS` digits; a decimal written by one side must
    equal the other side's exact value rounded to the decimals written (``0.333333`` = ``1/3``,
    ``0.0000001`` ≠ ``1/2^30``). Anything else (sets, intervals, equations, expressions with symbols)
    keeps math-verify's verdict.
    """
    import sympy

    def first_number(parsed):
        e = next((x for x in parsed if isinstance(x, sympy.Expr)), None)
        if e is None or not e.is_number:
            return None
        return e.doit()

    a, b = first_number(gold_parsed), first_number(pred_parsed)
    if a is None or b is None:
        return True
    if a.has(sympy.Float) or b.has(sympy.Float):
        decimals = [m for m in (_PLAIN_DECIMAL.fullmatch(_light_latex(x)) for x in (gold, pred)) if m]
        if not decimals:
            return True
        places = max(len(m.group(0).partition(".")[2]) for m in decimals)
        exact = [sympy.Rational(_light_latex(x)) if _PLAIN_DECIMAL.fullmatch(_light_latex(x)) else e
                 for x, e in ((gold, a), (pred, b))]
        diff = abs(sympy.N(exact[0] - exact[1], _EXACT_DIGITS))
        return bool(diff <= sympy.Rational(1, 2) * sympy.Rational(10) ** -places)
    if a.is_Rational and b.is_Rational:
        return bool(a == b)
    diff = abs(sympy.N(a - b, _EXACT_DIGITS))
    return bool(diff <= _EXACT_REL_TOL * max(abs(sympy.N(a, _EXACT_DIGITS)), abs(sympy.N(b, _EXACT_DIGITS))))


def _worker_main(setup_code: str = "") -> None:  # runs in the child process
    """Child loop: read ``[gold, pred]`` JSON lines on stdin, answer ``{"ok": bool}`` lines."""
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the protocol
    logging.basicConfig(level=logging.ERROR)
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)  # "timeout disabled" notices: the parent limits time
    import math_verify

    if setup_code:  # test hook (e.g. a deliberately slow verifier)
        exec(setup_code, {"math_verify": math_verify})
    proto.write("ready\n")
    proto.flush()
    for line in sys.stdin:
        try:
            gold, pred = json.loads(line)
            wrap = "$\\boxed{{{}}}$".format
            g = math_verify.parse(wrap(gold), parsing_timeout=None)
            p = math_verify.parse(wrap(pred), parsing_timeout=None)
            ok = bool(math_verify.verify(g, p, timeout_seconds=None))
            reply = {"ok": ok and _numbers_agree(g, p, gold, pred)}
        except Exception as e:  # noqa: BLE001 - any failure of one comparison is "not equal"
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()


class _Worker:
    """One child process speaking the line protocol of :func:`_worker_main`."""

    def __init__(self, setup_code: str, startup_timeout_s: float):
        src_dir = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([src_dir] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.setdefault("OMP_NUM_THREADS", "1")
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        code = "import sys; from tokenskip.task.grading import _worker_main; _worker_main(sys.argv[1])"
        self.proc = subprocess.Popen([sys.executable, "-c", code, setup_code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        self._buf = b""
        try:
            line = self._readline(startup_timeout_s)
        except (TimeoutError, EOFError) as e:
            self.kill()
            raise GradingError(f"math-verify worker did not start ({type(e).__name__}); its stderr:\n"
                               f"{self._stderr_text()}") from None
        if line != "ready":
            self.kill()
            raise GradingError(f"math-verify worker sent {line!r} instead of 'ready'")

    def _stderr_text(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read()[-4000:].decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def _readline(self, timeout_s: float) -> str:
        """One line from the child; ``TimeoutError`` past ``timeout_s``, ``EOFError`` if it died."""
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode("utf-8")

    def request(self, gold: str, pred: str, timeout_s: float) -> dict:
        self.proc.stdin.write((json.dumps([gold, pred]) + "\n").encode("utf-8"))
        self.proc.stdin.flush()
        return json.loads(self._readline(timeout_s))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self._stderr):
            try:
                f.close()
            except OSError:
                pass


class VerifierPool:
    """Child processes that run math-verify comparisons under a hard wall-clock limit.

    Thread-safe; at most ``max_workers`` comparisons run at once (callers beyond that wait). A child is
    started on first need and reused; a child that times out or dies is killed and replaced later.

    Args:
        max_workers: number of child processes.
        startup_timeout_s: limit for a child to import math-verify, seconds (not counted in a comparison's limit).
        setup_code: Python run in each child after importing ``math_verify`` (tests use it to slow it down).
    """

    def __init__(self, max_workers: int = DEFAULT_MAX_WORKERS, startup_timeout_s: float = 120.0,
                 setup_code: str = ""):
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.startup_timeout_s, self.setup_code = startup_timeout_s, setup_code
        self._slots = threading.BoundedSemaphore(max_workers)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._pid = os.getpid()

    def _take(self) -> _Worker:
        with self._lock:
            if self._pid != os.getpid():  # forked: the children belong to the parent process
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                return self._idle.pop()
        return _Worker(self.setup_code, self.startup_timeout_s)

    def compare(self, gold: str, pred: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool | None:
        """math-verify equivalence of ``pred`` to ``gold`` (both LaTeX without ``$``).

        Returns:
            ``True``/``False``, or ``None`` when the comparison ran past ``timeout_s`` seconds or the child
            died (a warning is logged; callers count it as incorrect).
        Raises:
            GradingError: a child process cannot start.
        """
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s}")
        with self._slots:
            worker = self._take()
            try:
                reply = worker.request(gold, pred, timeout_s)
            except TimeoutError:
                worker.kill()
                logger.warning("math-verify comparison exceeded %.1f s; counted as incorrect (gold=%r, pred=%r)",
                               timeout_s, gold[:200], pred[:200])
                return None
            except (EOFError, OSError, ValueError) as e:  # died (crash, out of memory) or garbled reply
                worker.kill()
                logger.warning("math-verify worker failed (%s: %s); counted as incorrect (gold=%r, pred=%r)",
                               type(e).__name__, e, gold[:200], pred[:200])
                return None
            except BaseException:  # Ctrl-C mid-comparison: do not leave a busy child behind
                worker.kill()
                raise
            with self._lock:
                self._idle.append(worker)
        if "error" in reply:
            logger.debug("math-verify error on gold=%r pred=%r: %s", gold, pred, reply["error"])
        return bool(reply["ok"])

    def close(self) -> None:
        """Stop the idle children (busy ones stop when their comparison returns or times out)."""
        with self._lock:
            idle, self._idle = self._idle, []
        if self._pid == os.getpid():
            for w in idle:
                w.kill()


_default_pool: VerifierPool | None = None
_default_lock = threading.Lock()


def default_pool() -> VerifierPool:
    """The process-wide :class:`VerifierPool` used by :func:`answers_match` (created on first use)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = VerifierPool()
            atexit.register(_default_pool.close)
        return _default_pool
