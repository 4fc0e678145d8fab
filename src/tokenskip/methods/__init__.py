"""Evaluation methods registry: what ``tokenskip evaluate --method NAME`` runs.

A method is a :class:`Method` subclass in its own module of this package; importing the package
registers every module in it, so adding a method is one file (see docs/development.md)::

    # src/tokenskip/methods/cot_free.py
    from tokenskip.methods import Method, register
    from tokenskip.task.prompts import build_prompt

    @register
    class NoCoT(Method):
        name, label, rank = "no-cot", "No CoT", 50

        def prompt(self, tokenizer, problem, ratio, cfg):
            return build_prompt(tokenizer, problem.question, None, cfg.system_prompt,
                                instruction="Answer directly within \\\\boxed{}.")

``tokenskip.stages.evaluate.run_evaluate`` is a loop over ``method.ratios(cfg)``: for each γ it builds the
prompts, the per-question token caps and generates through :meth:`Method.generate`; the run's folder,
rows, metrics and ActRatio are the same for every method.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

from tokenskip.contract.layout import eval_run_dir
from tokenskip.contract.ratios import format_ratio, paper_grid, validate_ratios

if TYPE_CHECKING:  # pragma: no cover
    from tokenskip.contract.records import Problem
    from tokenskip.engines import Generation, GenerationBackend


@dataclass
class RunPlan:
    """What one run of a method generates: prompts, token caps (one or per problem), extra row fields,
    settings that decide its rows (fingerprint) and extra metrics computed from its rows."""

    prompts: list[str]
    caps: object
    row_hook: Callable | None = None
    settings: dict = field(default_factory=dict)
    metrics: Callable[[list[dict]], dict] | None = None


class Method:
    """One evaluation method (base class: the plain base model, one run, no γ).

    Class attributes:
        name: ``--method`` value and folder name; label: report label; rank: report row order.
        uses_adapter: evaluated with the trained LoRA adapter (``--adapter``).
        needs_original: needs the ``original`` run of the same questions (it is run first when missing).
        grid: the γ it takes by default (``()``: a single run without γ); ``--ratios`` replaces it.
        ratio_requested: γ is asked of the model (so its ActRatio shows how well it obeys: the report's
            ratio-control plot), rather than enforced or absent.
        color / marker: matplotlib style of the method in the report's plots.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    rank: ClassVar[int] = 100
    uses_adapter: ClassVar[bool] = False
    needs_original: ClassVar[bool] = False
    grid: ClassVar[tuple[float, ...]] = ()
    ratio_requested: ClassVar[bool] = False
    color: ClassVar[str] = "tab:gray"
    marker: ClassVar[str] = "D"

    def runs(self, cfg) -> list:
        """The keys of this method's runs (default: its γ, see :meth:`ratios`)."""
        return self.ratios(cfg.ratios)

    def folder(self, out, benchmark: str, key) -> Path:
        """Folder of the run ``key`` (default ``<out>/<benchmark>/<method>[/ratio-<γ>]``)."""
        return eval_run_dir(out, benchmark, self.name, key)

    def ratio_of(self, key) -> float | None:
        """The γ recorded in the run's metrics (default: the key itself)."""
        return key

    def adapter_for(self, cfg, key) -> str | None:
        """The adapter folder run ``key`` decodes with: ``cfg.adapter`` for an adapter method, else none (a method
        may pick one per run: a calibrated TokenSkip adapter's copy scaled for γ)."""
        return cfg.adapter if self.uses_adapter else None

    def describe(self, key) -> str:
        """Short run label for progress bars and console lines (``tokenskip γ=0.5``)."""
        return self.name if key is None else f"{self.name} γ={format_ratio(key)}"

    def plan(self, tokenizer, problems, key, cfg, original: dict[str, dict] | None) -> RunPlan:
        """The run ``key``: by default from :meth:`prompt`, :meth:`caps`, :meth:`row_hook`, :meth:`settings`."""
        caps = self.caps(problems, key, cfg, original)
        return RunPlan([self.prompt(tokenizer, p, key, cfg) for p in problems], caps,
                       self.row_hook(key, caps, problems, original), self.settings(cfg))

    def ratios(self, requested: Sequence[float] | None) -> list[float | None]:
        """The runs of this method: ``[None]`` for a method without γ, else ``requested`` or :attr:`grid`."""
        if not self.grid:
            return [None]
        return validate_ratios(requested, f"--method {self.name} --ratios") if requested else list(self.grid)

    def prompt(self, tokenizer, problem: "Problem", ratio: float | None, cfg) -> str:
        """The prompt of one problem at γ (default: the paper's instruction, no marker), in ``cfg.prompt_style``
        (the chat template, or the reference's hand-written strings)."""
        from tokenskip.task.prompts import styled_prompt

        return styled_prompt(tokenizer, problem.question, None, cfg.system_prompt, style=cfg.prompt_style,
                             model=cfg.model)

    def caps(self, problems: Sequence["Problem"], ratio: float | None, cfg, original: dict[str, dict] | None):
        """Token cap(s) on generation: one int, or one per problem (default: ``max_new_tokens``)."""
        return cfg.resolved_max_new_tokens

    def settings(self, cfg) -> dict:
        """Method-specific settings that change the rows (part of the rows' fingerprint)."""
        return {}

    def row_hook(self, ratio: float | None, caps, problems, original) -> Callable[["Problem", dict], dict] | None:
        """Extra fields for each predictions row (default: none)."""
        return None

    def can_sample(self, cfg) -> bool:
        """Whether this method decodes with ``cfg``'s sampling settings (``--temperature``); methods that force
        an answer line decode greedily and say no."""
        return True

    def generate(self, backend: "GenerationBackend", prompts: Sequence[str], caps, adapter: str | None,
                 cfg) -> list["Generation"]:
        """Outputs for ``prompts``: one decode with the caps, greedy unless ``cfg`` samples (``--temperature``)."""
        sampling = cfg.sampling_kwargs() if hasattr(cfg, "sampling_kwargs") else {}
        return backend.generate(prompts, caps, adapter=adapter, **sampling)


_REGISTRY: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` a ``--method`` choice."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def method_names() -> list[str]:
    """Registered method names, in report order."""
    _load_all()
    return [m.name for m in sorted(_REGISTRY.values(), key=lambda m: (m.rank, m.name))]


def get_method(name: str) -> Method:
    """The registered method ``name``. Raises ``ValueError`` listing the valid names."""
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"--method must be one of {method_names()}, got {name!r}")
    return _REGISTRY[name]


__all__ = ["Method", "RunPlan", "register", "get_method", "method_names", "paper_grid"]
