"""The compression ratio γ: validation, its text form (markers, folder and file names), the paper's grid.

γ = kept ÷ original CoT tokens, counted in the target model's tokenizer (paper §3). Every module that
prints, parses or checks a γ goes through these functions, so ``0.5`` is written the same way in a
prompt marker, a folder name (``ratio-0.5``) and a report table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The paper's γ grid (docs/method.md steps 3-4): 1.0 is the uncompressed CoT.
PAPER_RATIOS: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def validate_ratio(ratio) -> float:
    """``ratio`` as a float if it is a valid compression ratio γ ∈ (0, 1].

    Raises:
        ValueError: not a number, not finite, or outside (0, 1].
    """
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"compression ratio γ must be a number in (0, 1], got {ratio!r}") from None
    if not math.isfinite(r) or not 0.0 < r <= 1.0:
        raise ValueError(f"compression ratio γ must be in (0, 1], got {ratio!r}")
    return r


def format_ratio(ratio) -> str:
    """γ as text: ``0.5``, ``0.75``, ``1.0`` (4 decimals at most, always a decimal point).

    Raises:
        ValueError: ``ratio`` is not a valid γ (see :func:`validate_ratio`).
    """
    s = f"{round(validate_ratio(ratio), 4):g}"
    return s if "." in s else s + ".0"


def parse_ratio(text: str) -> float:
    """The γ written by :func:`format_ratio` (``"0.5"`` -> 0.5). Raises ``ValueError`` if it is not one."""
    return validate_ratio(text)


def validate_ratios(ratios, what: str = "ratios") -> list[float]:
    """A list of distinct γ (as floats, order kept).

    Raises:
        ValueError: empty, an invalid γ, or two entries that print the same (``0.5`` and ``0.50``).
    """
    out = [validate_ratio(r) for r in ratios]
    if not out:
        raise ValueError(f"{what}: needs at least one γ")
    if len({format_ratio(r) for r in out}) != len(out):
        raise ValueError(f"{what}: duplicate γ in {out}")
    return out


def paper_grid(include_one: bool = True) -> list[float]:
    """The paper's γ grid, largest first; without 1.0 for baselines that have nothing to do at γ = 1."""
    return [r for r in PAPER_RATIOS if include_one or r < 1.0]


@dataclass(frozen=True)
class GammaControl:
    """How a γ is decoded with a calibrated TokenSkip adapter (:mod:`tokenskip.finetune.calibration`).

    Attributes:
        scale: the LoRA scale ``s`` its delta is multiplied by (0: the target model itself).
        marker_ratio: the γ written in the prompt's marker (``None``: no marker, the plain prompt, at scale 0).
        adapter: the adapter folder to decode with (the copy scaled by ``s``; ``None``: no adapter, at scale 0).
    """

    scale: float
    marker_ratio: float | None
    adapter: str | None
