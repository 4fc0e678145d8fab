"""Stage registry: the one list of pipeline stages, iterated by ``cli.py`` and the pipeline.

Each :class:`Stage` names its recipe key, its command, its module (which holds the config class, the
runner ``run_<stage>(cfg)`` and optionally ``show(cfg, result)``, what its command prints), its folder under a
run and how the pipeline wires it to the stages before it. ``tokenskip <command>`` is derived from the config
class (one flag per field, :func:`tokenskip.contract.config.add_dataclass_args`).
Modules are imported only when a stage is used, so ``tokenskip --help`` stays fast and a missing optional
engine breaks no other command. Order = the pipeline's order.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from tokenskip.contract.layout import LAB_TEST, LAB_TRAIN, LAB_VALIDATION, MODEL_CONFIG


@dataclass(frozen=True)
class Wire:
    """A config path the pipeline fills from an upstream stage's folder when the recipe leaves it unset.

    Attributes:
        field: the config field (``data``, ``adapter``, ``compressed``...).
        stage: the upstream stage whose folder it points into.
        path: the file or folder under that stage's folder (``""``: the folder itself).
        only_if_planned: fill it only when ``stage`` is enabled in the plan (the lab's splits: a recipe
            without the lab keeps its own data); otherwise always (a missing folder is then reported by the
            input check before anything runs).
    """

    field: str
    stage: str
    path: str = ""
    only_if_planned: bool = False


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: what it is, where it writes, and how the pipeline wires it.

    Attributes:
        name: recipe key (``stages.<name>``) and manifest key.
        command: ``tokenskip <command>``.
        module: module holding ``config``, ``runner`` and, optionally, ``show(cfg, result)`` (what the command
            prints) and ``summary_lines(result) -> list[str]`` (the lines the pipeline prints after the stage).
        config: config dataclass name in ``module``.
        runner: ``run_<stage>`` function name in ``module`` (takes the config; the evaluate stage's
            pipeline runner takes the list of its configs).
        folder: output folder under a run folder (``""``: the run folder itself).
        help: one line for ``tokenskip --help``.
        keeps_rows: its row files carry their own settings fingerprints, so a changed stage keeps its
            folder and reuses the rows still valid (others start from an empty folder).
        lab: a CPU-lab stage, planned only in recipes that name it (other recipes' plans are unchanged).
        wires: paths filled from upstream folders (only from stages in the plan).
        inputs: upstream stages whose fingerprints enter this stage's fingerprint.
        data_input: the ``data`` field's file (hash, or the lab split's stage) enters the fingerprint.
        makes_model: its folder is the model of every later non-lab stage (the lab's merged target).
        shape: ``single`` (one config), ``grid`` (evaluate: benchmarks × methods) or ``report``.
        base_model: runs on the recipe's own ``model`` even when a stage before it ``makes_model`` (the lab's
            warm-up and merge make the target from the base model); the others run on the target.
        cli_runner: the function ``tokenskip <command>`` runs on the one config it builds (default: ``runner``);
            the module may define ``show(cfg, result)`` to print what the command reports.
    """

    name: str
    command: str
    module: str
    config: str
    runner: str
    folder: str
    help: str
    keeps_rows: bool = False
    lab: bool = False
    wires: tuple[Wire, ...] = ()
    inputs: tuple[str, ...] = ()
    data_input: bool = False
    makes_model: bool = False
    shape: str = "single"
    cli_runner: str = ""
    base_model: bool = False

    def load(self):
        return importlib.import_module(self.module)

    @property
    def config_cls(self) -> type:
        return getattr(self.load(), self.config)

    @property
    def run(self):
        return getattr(self.load(), self.runner)

    @property
    def run_one(self):
        """The function the stage's command runs on its one config."""
        return getattr(self.load(), self.cli_runner or self.runner)


#: the lab's training split, the default ``data`` of the stages that read training questions
_LAB_TRAIN = Wire("data", "lab_data", LAB_TRAIN, only_if_planned=True)

STAGES: tuple[Stage, ...] = (
    Stage("lab_data", "lab-data", "tokenskip.lab.data", "LabDataConfig", "run_lab_data", "lab_data",
          "write the CPU lab's seeded train/validation/test problems (reasoning-gym)", lab=True, base_model=True),
    Stage("warmup", "warmup", "tokenskip.lab.warmup", "WarmupConfig", "run_warmup", "warmup",
          "fine-tune the base model on the lab's worked solutions (LoRA)", lab=True,
          wires=(Wire("data", "lab_data"),), inputs=("lab_data",), base_model=True),
    Stage("merge", "merge", "tokenskip.lab.merge", "MergeConfig", "run_merge", "merge",
          "merge a LoRA adapter into its base model (full model folder)", lab=True,
          wires=(Wire("adapter", "warmup", "adapter"),), inputs=("warmup",), makes_model=True, base_model=True),
    Stage("generate", "generate", "tokenskip.stages.generate", "GenerateConfig", "run_generate", "generate",
          "write CoTs of the target model for a split (e.g. GSM8K train)", keeps_rows=True,
          wires=(_LAB_TRAIN,), data_input=True),
    Stage("compress", "compress", "tokenskip.stages.compress", "CompressConfig", "run_compress", "compress",
          "score token importance and prune CoTs to ratios γ", wires=(_LAB_TRAIN,), inputs=("generate",),
          data_input=True),
    Stage("build_sft", "build-sft", "tokenskip.stages.build_sft", "SFTDataConfig", "run_build_sft", "sft",
          "build the γ-mixed SFT data (prompt/completion records)",
          wires=(Wire("compressed", "compress"), _LAB_TRAIN), inputs=("compress",), data_input=True),
    Stage("train", "train", "tokenskip.stages.train", "TrainConfig", "run_train", "train",
          "LoRA fine-tune the target model on the SFT data", wires=(Wire("data", "build_sft"),), inputs=("build_sft",)),
    Stage("calibrate", "calibrate", "tokenskip.lab.calibrate", "CalibrateConfig", "run_calibrate", "calibrate",
          "fit the γ → LoRA-scale calibration of a TokenSkip adapter on validation questions (stored with the "
          "adapter)", lab=True, wires=(Wire("adapter", "train"), Wire("data", "lab_data", LAB_VALIDATION,
                                                                          only_if_planned=True)),
          inputs=("merge", "train", "lab_data")),
    Stage("evaluate", "evaluate", "tokenskip.stages.evaluate", "EvaluateConfig", "run_evaluations", "evaluate",
          "evaluate a method (original/prompt/truncation/tokenskip/budget) on a test split", keeps_rows=True,
          cli_runner="run_evaluate",
          wires=(Wire("data", "lab_data", LAB_TEST, only_if_planned=True),), shape="grid"),
    Stage("report", "report", "tokenskip.stages.report", "ReportConfig", "run_report", "",
          "write report.md/report.json and plots for a run folder", keeps_rows=True, shape="report"),
)

BY_NAME = {s.name: s for s in STAGES}
NAMES = tuple(BY_NAME)
LAB_STAGES = tuple(s.name for s in STAGES if s.lab)


def get_stage(name: str) -> Stage:
    """The stage called ``name`` (``build_sft`` or ``build-sft``). Raises ``KeyError`` listing valid names."""
    key = name.replace("-", "_")
    if key not in BY_NAME:
        raise KeyError(f"unknown stage {name!r}; valid: {list(NAMES)}")
    return BY_NAME[key]


# --------------------------------------------------------------------------- questions the pipeline asks
# The pipeline imports nothing but this registry and the contract; what it must know of a method, a model
# or a data reference before anything runs is answered here (each answer imports the module that knows).

def method_uses_adapter(method: str) -> bool:
    """Whether evaluation method ``method`` needs a LoRA adapter (``False`` for an unknown name: the
    evaluate config's own check names it)."""
    from tokenskip.methods import get_method

    try:
        return get_method(method).uses_adapter
    except ValueError:
        return False


def looks_like_path(value: str) -> bool:
    """Whether a ``data`` setting names a file (rather than a Hub dataset id)."""
    from tokenskip.task.data import looks_like_path as names_a_file

    return names_a_file(value)


def model_problem(name: str) -> str | None:
    """Why model ``name`` cannot be loaded here, or ``None`` if it can (or cannot be told offline)."""
    import os

    from tokenskip.engines.models import resolve_model

    try:
        ref = resolve_model(name)
    except FileNotFoundError as e:
        return str(e)
    if Path(ref.path).exists():
        return None
    if name.startswith((".", "/")) or os.sep + os.sep in name or name.count("/") != 1:
        return f"model {name!r}: no such folder, alias or Hub id"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, MODEL_CONFIG), str):
            return f"model {name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    return None
