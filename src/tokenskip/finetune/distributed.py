"""Training on N processes: the dry run of an ``accelerate launch`` config (DDP, DeepSpeed ZeRO, FSDP).

``tokenskip train`` runs unchanged under ``accelerate launch --num_processes N`` (DDP; on CPUs gloo, with
``examples/accelerate/cpu_ddp.yaml`` and ``train --device cpu``: accelerate's ``--cpu`` would start one process):
:func:`tokenskip.finetune.train_config.resolve_grad_accum` divides the gradient accumulation by the
world size, so the effective batch (paper: 8) and the loss curve stay those of one process. The GPU recipes
point at ``examples/accelerate/*.yaml``; :func:`check_accelerate_config` reads such a file with accelerate's
own config class and, for DeepSpeed, builds the plugin and its DeepSpeed config — without DeepSpeed installed
(nothing of DeepSpeed is imported), so a typo or a stage the code does not expect fails here, not on a
rented GPU node.
"""

from __future__ import annotations

from pathlib import Path

#: the DeepSpeed settings the trainer fills from its own arguments (``auto`` in the config): batch sizes and
#: accumulation come from ``--batch-size`` / ``--per-device-batch-size`` and the world size
TRAINER_FILLED = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def check_accelerate_config(path: str | Path) -> dict:
    """Dry-run an accelerate config file: parse it, check what tokenskip relies on, and build the DeepSpeed
    plugin's config when it names DeepSpeed.

    Returns:
        ``{"distributed_type", "num_processes", "mixed_precision", "deepspeed"}``; ``deepspeed`` is the
        DeepSpeed JSON config accelerate would hand to DeepSpeed (``None`` for DDP/FSDP).
    Raises:
        FileNotFoundError: no such file. ValueError: a setting tokenskip cannot train with (names the file and
        the key): a ZeRO stage other than 2 or 3, batch settings pinned instead of ``auto``, no processes.
    """
    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"accelerate config not found: {path}")
    cfg = load_config_from_file(str(path))
    kind = str(getattr(cfg.distributed_type, "value", cfg.distributed_type))
    if not cfg.num_processes or cfg.num_processes < 1:
        raise ValueError(f"{path}: num_processes: expected >= 1, got {cfg.num_processes!r}")
    report = {"distributed_type": kind, "num_processes": cfg.num_processes,
              "mixed_precision": str(getattr(cfg.mixed_precision, "value", cfg.mixed_precision)), "deepspeed": None}
    if kind == "DEEPSPEED":
        report["deepspeed"] = _deepspeed_config(path, dict(cfg.deepspeed_config or {}))
    return report


def _deepspeed_config(path: Path, ds: dict) -> dict:
    """The DeepSpeed JSON config that accelerate's ``DeepSpeedPlugin`` builds from the YAML's ``deepspeed_config``
    (no DeepSpeed import). Raises ``ValueError`` naming the file and key for what tokenskip cannot use."""
    from accelerate.utils import DeepSpeedPlugin

    if "deepspeed_config_file" in ds:
        raise ValueError(f"{path}: deepspeed_config.deepspeed_config_file: keep the settings inline (the dry run "
                         "checks those)")
    stage = ds.get("zero_stage")
    if stage not in (2, 3):
        raise ValueError(f"{path}: deepspeed_config.zero_stage: expected 2 or 3 (LoRA: 2), got {stage!r}")
    plugin = DeepSpeedPlugin(zero_stage=stage, gradient_clipping=ds.get("gradient_clipping"),
                             offload_optimizer_device=ds.get("offload_optimizer_device", "none"),
                             offload_param_device=ds.get("offload_param_device", "none"),
                             zero3_init_flag=bool(ds.get("zero3_init_flag", False)),
                             zero3_save_16bit_model=bool(ds.get("zero3_save_16bit_model", False)))
    config = dict(plugin.deepspeed_config)
    for key in TRAINER_FILLED:
        if config.get(key) != "auto":
            raise ValueError(f"{path}: deepspeed {key}: must be auto (tokenskip derives it from --batch-size and "
                             f"the world size), got {config.get(key)!r}")
    return config
