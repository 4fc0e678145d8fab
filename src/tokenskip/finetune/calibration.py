"""γ control by a calibrated LoRA scale (CoT-Valve style, arXiv 2502.09601).

One TokenSkip adapter trained on γ ∈ {1.0, 0.5} writes γ-0.5 CoTs under the γ-0.5 marker but does not tell
finer levels apart. Scaling its LoRA delta by ``s`` ∈ [0, 1] moves the model between the target itself
(``s = 0``: the full CoT) and the adapter as trained (``s = 1``: about γ 0.5). A calibration measured on a
validation split (``tokenskip calibrate``) maps the requested γ to ``s`` monotonically and is stored with the
adapter (``gamma_calibration.json``), so a user still asks for γ.

* :func:`scaled_adapter` — a copy of a peft LoRA adapter folder whose ``lora_alpha`` (and every value of
  ``alpha_pattern``) is multiplied by ``s``: peft's scaling is ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA),
  linear in ``alpha``, so the merged weight is ``W + s · B·A`` exactly. Cached under the engines' cache folder.
* :class:`GammaCalibration` — the measured curve (scale, ActRatio, accuracy) and :meth:`~GammaCalibration.scale_for`,
  the piecewise-linear inverse of ActRatio(scale) made monotone non-increasing (pool adjacent violators).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tokenskip.contract.io import DataError, read_json, temp_dir_beside, write_json_atomic
from tokenskip.contract.layout import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    ADAPTER_WEIGHTS_BIN,
    GAMMA_CALIBRATION,
    PROMPT_FORMAT,
    SCALED_ADAPTERS,
    adapter_hash,
)
from tokenskip.contract.ratios import GammaControl

#: files of an adapter folder that a scaled copy carries unchanged (hard-linked, else copied)
_WEIGHTS = (ADAPTER_WEIGHTS, ADAPTER_WEIGHTS_BIN)


# ---------------------------------------------------------------- the scaled adapter

def scaled_config(config: dict, scale: float) -> dict:
    """``adapter_config.json`` with the LoRA delta scaled by ``scale`` (``lora_alpha`` and ``alpha_pattern``).

    Raises:
        ValueError: a negative scale, or a config whose delta is not linear in ``alpha`` (DoRA) or that holds
            fully trained modules (``modules_to_save``, trainable tokens), which a scale cannot interpolate.
    """
    if not scale >= 0:
        raise ValueError(f"LoRA scale must be >= 0, got {scale}")
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"only LoRA adapters can be scaled, got peft_type {config.get('peft_type')!r}")
    if config.get("use_dora"):
        raise ValueError("a DoRA adapter cannot be scaled exactly (its magnitude normalisation is not linear)")
    for key in ("modules_to_save", "trainable_token_indices"):
        if config.get(key):
            raise ValueError(f"an adapter with {key} cannot be scaled (those weights are replaced, not added)")
    out = dict(config)
    out["lora_alpha"] = config.get("lora_alpha", 8) * scale
    if config.get("alpha_pattern"):
        out["alpha_pattern"] = {k: v * scale for k, v in config["alpha_pattern"].items()}
    return out


def format_scale(scale: float) -> str:
    """A LoRA scale as a folder-name part: ``0.25``, ``1.0``, ``1.1`` (4 decimals at most, always a decimal point;
    the same text as :func:`tokenskip.contract.ratios.format_ratio` for scales in (0, 1]).

    Raises:
        ValueError: a negative or non-finite scale.
    """
    if not 0 <= float(scale) < float("inf"):
        raise ValueError(f"LoRA scale must be a finite number >= 0, got {scale}")
    text = f"{round(float(scale), 4):g}"
    return text if "." in text else text + ".0"


def _scale_key(scale: float) -> str:
    return f"{scale:.6f}".rstrip("0").rstrip(".") or "0"


def scaled_adapter(adapter_dir: str | Path, scale: float) -> Path:
    """A peft LoRA adapter folder equal to ``adapter_dir`` with its delta scaled by ``scale``.

    Scale 1.0 returns ``adapter_dir`` itself. Other scales are cached in
    ``<cache>/scaled-adapters/<adapter hash>-s<scale>/`` (:func:`tokenskip.engines.models.cache_dir`), written
    atomically (temporary folder, then rename): the scaled ``adapter_config.json``, the weights hard-linked (copied
    across file systems) and the prompt format. A calibration file is never carried over (the copy is not
    calibrated itself).

    Raises:
        FileNotFoundError: no ``adapter_config.json`` in ``adapter_dir``; ValueError: see :func:`scaled_config`.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"LoRA adapter folder {str(adapter_dir)!r} has no {ADAPTER_CONFIG}")
    if float(scale) == 1.0:
        return adapter_dir
    config = scaled_config(read_json(adapter_dir / ADAPTER_CONFIG), float(scale))
    from tokenskip.engines.models import cache_dir

    digest = hashlib.sha256(adapter_hash(adapter_dir).encode()).hexdigest()[:16]
    final = cache_dir() / SCALED_ADAPTERS / f"{digest}-s{_scale_key(float(scale))}"
    if (final / ADAPTER_CONFIG).is_file():
        return final
    tmp = temp_dir_beside(final)
    try:
        for name in (*_WEIGHTS, PROMPT_FORMAT):
            if (adapter_dir / name).is_file():
                _link_or_copy(adapter_dir / name, tmp / name)
        write_json_atomic(tmp / ADAPTER_CONFIG, config)
        try:
            os.rename(tmp, final)
        except OSError:  # another process made it first: theirs is the same
            if not (final / ADAPTER_CONFIG).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---------------------------------------------------------------- the calibration

def _pool_non_increasing(values: list[float]) -> list[float]:
    """Pool adjacent violators: the closest non-increasing sequence (least squares, equal weights)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m2, c2 = blocks.pop()
            m1, c1 = blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return [m for m, c in blocks for _ in range(int(c))]


@dataclass
class GammaCalibration:
    """How a {1.0, 0.5} adapter's LoRA scale maps to the CoT ratio it writes, measured on a validation split.

    Attributes:
        marker_ratio: the γ marker written in the prompt at every scale > 0 (e.g. 0.5).
        points: ``[scale, ActRatio, accuracy]`` per measured scale (ActRatio against the target model's CoTs on
            the same questions; scale 0 is the target itself, ActRatio 1.0).
        split: where it was measured (``validation``); n: questions; machine: free text (CPU/GPU, dtype, engine).
        extra: anything else a writer wants to keep with it (free JSON object).
    """

    marker_ratio: float
    points: list[list[float]]
    split: str = "validation"
    n: int = 0
    machine: str = ""
    extra: dict = field(default_factory=dict)

    def curve(self) -> tuple[list[float], list[float]]:
        """Scales (ascending, distinct) and their ActRatio, capped at 1.0, made non-increasing in scale.

        The cap: an ActRatio above 1.0 (a small scale writing slightly longer CoTs than the target, noise on a
        validation split) says "no compression", nothing more; pooled with the target's own 1.0 it would lift
        that anchor above 1.0 and send γ = 1.0 to a scale > 0 instead of the target itself.
        """
        by_scale: dict[float, list[float]] = {}
        for s, a, *_ in self.points:
            by_scale.setdefault(float(s), []).append(float(a))
        scales = sorted(by_scale)
        return scales, _pool_non_increasing([min(1.0, sum(by_scale[s]) / len(by_scale[s])) for s in scales])

    def scale_for(self, gamma: float) -> float:
        """The LoRA scale that writes CoTs of about ``gamma`` × the full length (piecewise-linear inverse).

        γ at or above the ActRatio of the smallest scale → that scale (0.0 when scale 0 was measured: the
        target itself); γ below the smallest measured ActRatio → the largest measured scale.

        Raises:
            ValueError: γ outside (0, 1].
        """
        if isinstance(gamma, bool) or not 0.0 < float(gamma) <= 1.0:
            raise ValueError(f"γ must be in (0, 1], got {gamma!r}")
        gamma = float(gamma)
        scales, ratios = self.curve()
        if gamma >= ratios[0]:
            return scales[0]
        if gamma < ratios[-1]:
            return scales[-1]
        for i in range(1, len(scales)):
            hi, lo = ratios[i - 1], ratios[i]
            if lo <= gamma <= hi and hi > lo:
                return scales[i - 1] + (hi - gamma) / (hi - lo) * (scales[i] - scales[i - 1])
        raise AssertionError("unreachable: γ lies inside the measured range")  # pragma: no cover

    def gamma_range(self) -> tuple[float, float]:
        """``(low, high)``: the γ this calibration reaches between measured scales — the (pooled) ActRatio of the
        largest scale and of the smallest (1.0 when scale 0, the target itself, was measured), both capped at 1.0.
        :meth:`scale_for` clips a γ outside it to the nearest measured scale; the server refuses one instead."""
        _, ratios = self.curve()
        return min(ratios[-1], 1.0), min(ratios[0], 1.0)

    def control(self, adapter_dir: str | Path, gamma: float) -> GammaControl:
        """How γ is decoded with this calibration's adapter ``adapter_dir``: the scale :meth:`scale_for` rounded to
        4 decimals (so a γ always gets the same scaled folder and the same ``lora_scale`` in evaluate's settings and
        the server's replies), under :attr:`marker_ratio`, with the adapter scaled by it (:func:`scaled_adapter`,
        the folder itself at scale 1). At scale 0: the target itself, no adapter, the plain prompt (no marker).

        Raises:
            ValueError: γ outside (0, 1]; FileNotFoundError: ``adapter_dir`` holds no adapter.
        """
        scale = round(self.scale_for(gamma), 4)
        if scale == 0:
            return GammaControl(0.0, None, None)
        return GammaControl(scale, self.marker_ratio, str(scaled_adapter(adapter_dir, scale)))

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, adapter_dir: str | Path) -> Path:
        """Write ``gamma_calibration.json`` into the adapter folder (atomically); returns its path."""
        path = Path(adapter_dir) / GAMMA_CALIBRATION
        write_json_atomic(path, self.to_json())
        return path

    @classmethod
    def from_json(cls, obj, path: str | Path = "<memory>") -> GammaCalibration:
        """Read a calibration object. Raises :class:`DataError` naming ``path`` and the bad field."""
        if not isinstance(obj, dict):
            raise DataError(path, None, None, "expected a JSON object (γ calibration)")
        marker = obj.get("marker_ratio")
        if isinstance(marker, bool) or not isinstance(marker, (int, float)) or not 0 < marker <= 1:
            raise DataError(path, None, "marker_ratio", f"expected a number in (0, 1], got {marker!r:.60}")
        points = obj.get("points")
        if not isinstance(points, list) or not all(_is_point(p) for p in points):
            raise DataError(path, None, "points", "expected a list of [scale >= 0, ActRatio > 0, accuracy] "
                                                  f"triples, got {points!r:.80}")
        for name, kind in (("split", str), ("n", int), ("machine", str), ("extra", dict)):
            if name in obj and (not isinstance(obj[name], kind) or isinstance(obj[name], bool)):
                raise DataError(path, None, name, f"expected {kind.__name__}, got {obj[name]!r:.60}")
        try:
            return fit_calibration([list(map(float, p)) for p in points], float(marker),
                                   split=obj.get("split", "validation"), n=obj.get("n", 0),
                                   machine=obj.get("machine", ""), extra=obj.get("extra", {}))
        except ValueError as e:
            raise DataError(path, None, "points", str(e)) from e

    @classmethod
    def load(cls, adapter_dir: str | Path) -> GammaCalibration | None:
        """The calibration stored in an adapter folder, or ``None`` when it has none.

        Raises:
            DataError: a malformed file (names the file and the field).
        """
        path = Path(adapter_dir) / GAMMA_CALIBRATION
        return cls.from_json(read_json(path), path) if path.is_file() else None


def _is_point(p) -> bool:
    if not isinstance(p, (list, tuple)) or len(p) != 3:
        return False
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in p):
        return False
    s, a, acc = (float(x) for x in p)
    return s >= 0 and a > 0 and 0 <= acc <= 1


def fit_calibration(points, marker_ratio: float, split: str = "validation", n: int = 0, machine: str = "",
                    extra: dict | None = None) -> GammaCalibration:
    """A :class:`GammaCalibration` from measured ``(scale, ActRatio, accuracy)`` points (sorted by scale).

    Raises:
        ValueError: fewer than two distinct scales, a negative scale, a non-positive ActRatio, an accuracy
            outside [0, 1], or a marker outside (0, 1].
    """
    if not 0 < float(marker_ratio) <= 1:
        raise ValueError(f"marker_ratio must be in (0, 1], got {marker_ratio}")
    pts = [[float(s), float(a), float(acc)] for s, a, acc in points]
    if not all(_is_point(p) for p in pts):
        raise ValueError(f"each point must be (scale >= 0, ActRatio > 0, accuracy in [0, 1]), got {pts}")
    if len({p[0] for p in pts}) < 2:
        raise ValueError(f"a calibration needs at least two distinct scales, got {sorted({p[0] for p in pts})}")
    return GammaCalibration(float(marker_ratio), sorted(pts), split, int(n), machine, dict(extra or {}))
