"""The math-verify comparisons of the grader (:mod:`tokenskip.task.grading`), run under a hard time limit.

math-verify's own time limit uses ``signal.alarm``, which raises ``ValueError`` outside the main
thread. Here every math-verify comparison runs in a small pool of child processes (started lazily on
first use, then reused) under a hard wall-clock limit that holds in any thread or worker process and
even when sympy is stuck in C code: on timeout the child is killed, a warning is logged and the answer
counts as incorrect.

math-verify compares numbers at float precision (it says ``\\frac{1}{2^{98}}`` = ``\\frac{1}{2^{99}}``),
so when both answers are plain numbers the child checks its "equal" again (:func:`_numbers_agree`).

Line protocol (parent → child): ``[gold, pred]`` JSON lines on the child's stdin; the child answers
``ready`` once math-verify is imported, then one ``{"ok": bool}`` line (plus ``"error"`` when the
comparison raised) per request on its stdout.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tokenskip.errors import GradingError
from tokenskip.task.normalize import PLAIN_DECIMAL, light_latex

logger = logging.getLogger(__name__)

#: Wall-clock limit for one math-verify comparison (parse gold + parse prediction + verify), seconds.
#: Same figure as math-verify's own per-operation default (5 s).
DEFAULT_TIMEOUT_S = 5.0
#: Child processes in the default pool; each holds sympy + math-verify (~65 MB resident).
DEFAULT_MAX_WORKERS = 2

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
        decimals = [m for m in (PLAIN_DECIMAL.fullmatch(light_latex(x)) for x in (gold, pred)) if m]
        if not decimals:
            return True
        places = max(len(m.group(0).partition(".")[2]) for m in decimals)
        exact = [sympy.Rational(light_latex(x)) if PLAIN_DECIMAL.fullmatch(light_latex(x)) else e
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
        import tokenskip

        src_dir = str(Path(tokenskip.__file__).resolve().parent.parent)  # the folder holding the package
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([src_dir] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.setdefault("OMP_NUM_THREADS", "1")
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        code = "import sys; from tokenskip.task.verifier import _worker_main; _worker_main(sys.argv[1])"
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
    """The process-wide :class:`VerifierPool` used by :func:`tokenskip.task.grading.answers_match` (created on first
    use)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = VerifierPool()
            atexit.register(_default_pool.close)
        return _default_pool
