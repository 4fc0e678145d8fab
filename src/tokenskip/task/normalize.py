"""Light normalization of answer strings, shared by the grader (:mod:`tokenskip.task.grading`) and the
math-verify child processes (:mod:`tokenskip.task.verifier`): it never makes two different answers equal."""

from __future__ import annotations

import re

#: A plain decimal number as written by a model or a dataset (``-3``, ``0.75``, ``.5``, ``18.``).
PLAIN_DECIMAL = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")


def light_latex(s: str) -> str:
    """Normalization that never makes two different answers equal: spacing, ``\\left``/``\\right``,
    ``\\dfrac``/``\\tfrac``, ``\\text{}`` wrappers, degree marks, ``\\$``, final period."""
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"\\(?:left|right)\b", "", s)
    s = re.sub(r"\\[dt]frac\b", r"\\frac", s)
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", s)
    s = re.sub(r"\\[,;:! ]|\\\$|\s+", "", s)
    return s
