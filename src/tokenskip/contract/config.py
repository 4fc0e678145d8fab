"""Stage configs as dataclasses, shared by the CLI (flags) and recipes (YAML).

Each stage declares one dataclass whose fields carry ``metadata={"help": ...}``. :func:`add_dataclass_args`
turns it into argparse flags (``field_name`` -> ``--field-name``) and :func:`dataclass_from_args` /
:func:`dataclass_from_dict` build it back, so a recipe section and a command line are the same thing.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def _unwrap_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _split_list(values, item_type):
    out = []
    for v in values if isinstance(values, (list, tuple)) else [values]:
        for part in str(v).replace(",", " ").split():
            out.append(item_type(part))
    return out


#: the dtype names of every stage's ``dtype`` setting (``auto``: the engine's choice for the machine)
DTYPES = ("float32", "bfloat16", "float16", "auto")
#: the one help text of ``dtype``, wherever a stage has it
DTYPE_HELP = ("model dtype: float32, bfloat16, float16 or auto = bfloat16 on AMX/AVX512-BF16 CPUs and bf16 GPUs, "
              "float16 on other GPUs, float32 otherwise (tokenskip.engines.hardware); training reads it as its "
              "precision (float32 weights with bf16 autocast on such CPUs, bf16/fp16 mixed precision on GPUs)")
THREADS_HELP = ("torch CPU threads: N or auto (the CPUs this process may use); default $TOKENSKIP_THREADS, "
                "else torch's choice")


def parse_threads(value) -> int | str | None:
    """Validate a ``threads`` setting: ``None``, ``"auto"`` or a positive int (``"2"`` is read as 2).

    Raises:
        ValueError: anything else.
    """
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"threads: expected a positive integer or 'auto', got {value!r}") from None
    if n < 1 or isinstance(value, float) and value != n:
        raise ValueError(f"threads: expected a positive integer or 'auto', got {value!r}")
    return n



@dataclass
class ModelSettings:
    """The model a stage runs and how: one vocabulary for every stage that loads a model (generate, evaluate,
    compress, train, the lab's warm-up, serve, gamma-check), embedded by inheritance (trl's ``ModelConfig``
    habit), so ``model``/``dtype``/``device``/``threads`` mean the same everywhere and a recipe's top-level
    keys reach them all. A stage may override a field's default (e.g. ``model`` ``None`` where it is required).

    Attributes:
        model: alias (e.g. ``smollm2-135m-instruct``), ``.gguf`` file, local folder or Hub id.
        dtype: one of :data:`DTYPES`; ``auto`` is resolved by :mod:`tokenskip.engines.hardware`.
        device: torch device (``cpu``, ``cuda``, ``cuda:1``...); engines that pick their own platform
            (vLLM) read it only to resolve ``auto``.
        threads: torch CPU threads (:func:`parse_threads`).
    """

    model: str | None = field(default="smollm2-135m-instruct", metadata={
        "help": "model: alias, .gguf, local folder or Hub id"})
    dtype: str = field(default="auto", metadata={"help": DTYPE_HELP, "choices": list(DTYPES)})
    device: str = field(default="cpu", metadata={"help": "torch device (cpu, cuda, cuda:1...)"})
    threads: int | str | None = field(default=None, metadata={"help": THREADS_HELP})

    def __post_init__(self) -> None:
        self.threads = parse_threads(self.threads)  # "2" from a command line -> 2, once (validate() changes nothing)


#: the settings of :class:`ClusterSettings` (left out of fingerprints where no engine is replicated)
CLUSTER_KEYS = ("ray_engine", "ray_address", "ray_actors", "ray_cpus_per_actor", "ray_gpus_per_actor",
                "ray_shard_size")


@dataclass
class ClusterSettings:
    """Where a stage's replicated engine runs under ``backend: ray`` (:mod:`tokenskip.engines.ray_pool`): one
    vocabulary for generate, evaluate and compress, filled from a recipe's top-level ``ray:`` mapping
    (``ray: {engine: vllm, actors: 8}`` -> ``ray_engine``, ``ray_actors``) or ``--ray-*`` flags. Ignored by
    every other backend.

    Attributes:
        ray_engine: the engine each replica runs (``hf`` or ``vllm``).
        ray_address: cluster to join; ``None``: ``$RAY_ADDRESS``, else a local cluster on this machine.
        ray_actors: replicas (``None``: as many as the cluster's CPUs, or GPUs, allow).
        ray_cpus_per_actor: CPUs per replica, also its torch threads; ray_gpus_per_actor: GPUs per replica
            (the vLLM tensor-parallel size when it is > 1).
        ray_shard_size: problems per shard, the unit a killed run loses at most (default: the engine's chunk).
    """

    ray_engine: str = field(default="hf", metadata={"help": "backend ray: the engine of each replica",
                                                    "choices": ["hf", "vllm"]})
    ray_address: str | None = field(default=None, metadata={
        "help": "backend ray: cluster to join (ray://host:10001, auto); default $RAY_ADDRESS, else a local one"})
    ray_actors: int | None = field(default=None, metadata={
        "help": "backend ray: replicas (default: the cluster's CPUs / cpus per actor, or GPUs / gpus per actor)"})
    ray_cpus_per_actor: float = field(default=1.0, metadata={
        "help": "backend ray: CPUs per replica (its torch threads too)"})
    ray_gpus_per_actor: float = field(default=0.0, metadata={
        "help": "backend ray: GPUs per replica (>= the vLLM tensor parallel size)"})
    ray_shard_size: int | None = field(default=None, metadata={
        "help": "backend ray: problems per shard (default: the engine's chunk, 4 x batch size for HF, 256 vLLM)"})

    def validate_cluster(self) -> None:
        """Raise ``ValueError`` naming the ``ray_*`` setting that is out of range."""
        if self.ray_engine not in ("hf", "vllm"):
            raise ValueError(f"ray_engine: expected hf or vllm, got {self.ray_engine!r}")
        if self.ray_actors is not None and self.ray_actors < 1:
            raise ValueError(f"ray_actors: expected >= 1, got {self.ray_actors}")
        if self.ray_cpus_per_actor <= 0 or self.ray_gpus_per_actor < 0:
            raise ValueError("ray_cpus_per_actor must be > 0 and ray_gpus_per_actor >= 0, got "
                             f"{self.ray_cpus_per_actor} and {self.ray_gpus_per_actor}")
        if self.ray_shard_size is not None and self.ray_shard_size < 1:
            raise ValueError(f"ray_shard_size: expected >= 1, got {self.ray_shard_size}")

    def cluster_kwargs(self) -> dict:
        """The Ray backend's own arguments (:class:`tokenskip.engines.ray_pool.RayBackend`)."""
        return {"engine": self.ray_engine, "address": self.ray_address, "actors": self.ray_actors,
                "cpus_per_actor": self.ray_cpus_per_actor, "gpus_per_actor": self.ray_gpus_per_actor,
                "shard_size": self.ray_shard_size}


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per field of dataclass ``cls``.

    Lists accept spaces or commas (``--ratios 0.9 0.7`` or ``--ratios 0.9,0.7``), except fields with
    ``metadata={"split": False}``, whose items are kept whole (``--stop "User:" "\\n\\n"``); a list field with
    ``metadata={"empty_ok": True}`` also takes the flag alone, meaning an empty list; booleans get
    ``--flag`` / ``--no-flag``; a field with ``metadata={"positional": True}`` is a required operand instead
    of a flag. Defaults are left as ``None`` in argparse so that only flags the user
    typed override a recipe.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_ = f.metadata.get("help", "") + (f" (default: {default})" if default not in (None, "") else "")
        if f.metadata.get("positional"):   # a required operand (``tokenskip report RUN_DIR``)
            parser.add_argument(f.name, metavar=f.name.upper(), help=f.metadata.get("help", ""))
            continue
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": help_}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(tp) in (list, tuple):
            # metadata "empty_ok": the flag alone means an empty list ("--prefer-kinds" = prefer nothing)
            kw["nargs"] = "*" if f.metadata.get("empty_ok") else "+"
            kw["metavar"] = f.name.upper().rstrip("S") if f.name.endswith("s") else f.name.upper()
            parser.add_argument(flag, **kw)
        else:
            parser.add_argument(flag, type=tp if tp in (int, float, str) else str, **kw)


class ConfigError(ValueError):
    """A setting that does not fit its config: ``field`` names it (``None`` for an error about the whole config)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _field_of(message: str, names: set[str]) -> str | None:
    """The setting a ``validate()`` message is about: the first ``--flag`` it names that is a field."""
    import re

    for flag in re.findall(r"--([a-z][a-z0-9-]*)", message):
        if flag.replace("-", "_") in names:
            return flag.replace("-", "_")
    return None


def _coerce(value: Any, tp, name: str, split: bool = True) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (str,)
        if not split:  # items kept whole (stop strings may hold spaces and commas)
            return [item(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        try:
            return _split_list(value, item)
        except ValueError:
            raise ValueError(f"{name}: expected a list of {item.__name__}, got {value!r}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        raise ValueError(f"{name}: expected true or false, got {value!r}")
    if tp in (int, float):
        # no silent coercion: a recipe's `limit: 10.5` or `epochs: true` is an error, not 10 or 1.0 (a command
        # line's "10" is text and is read as 10)
        if isinstance(value, bool) or isinstance(value, (list, dict)):
            raise ValueError(f"{name}: expected {'an integer' if tp is int else 'a number'}, got {value!r}")
        try:
            number = float(value) if tp is float else _integer(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected {'an integer' if tp is int else 'a number'}, got {value!r}") from None
        return number
    if tp is str:
        if isinstance(value, (list, dict, bool)):
            raise ValueError(f"{name}: expected text, got {value!r}")
        return str(value)
    return value


def _integer(value) -> int:
    """``value`` as an int when it is one exactly (``3``, ``"3"``, ``3.0``); ``ValueError`` otherwise (``10.5``)."""
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError(value)
    return int(str(value).strip())


def dataclass_from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build ``cls`` from a dict (a recipe section), checking names and types.

    Raises:
        ConfigError (a ``ValueError``): an unknown key (with the valid ones listed), a value of the wrong type
            (no silent coercion: ``10.5`` for an int, ``true`` for a number), or a value the config's
            ``validate()`` refuses; ``where`` (e.g. ``"recipe.yaml: train"``) prefixes the message and ``.field``
            names the setting.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    unknown = sorted(set(data) - names)
    prefix = f"{where}: " if where else ""
    if unknown:
        raise ConfigError(f"{prefix}unknown setting(s) {unknown}; valid: {sorted(names)}", unknown[0])
    kwargs = {}
    for k, v in data.items():
        try:
            kwargs[k] = _coerce(v, hints[k], k, split=fields[k].metadata.get("split", True))
        except ValueError as e:
            raise ConfigError(prefix + str(e), k) from None
    try:
        obj = cls(**kwargs)
        if hasattr(obj, "validate"):  # checks values only; it never reads the disk or changes the object
            obj.validate()
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(prefix + str(e), _field_of(str(e), names) or _culprit(cls, kwargs)) from None
    return obj


def _culprit(cls: type, kwargs: dict) -> str | None:
    """The one given setting that ``validate()`` refuses: the key whose default, put back alone, makes the config
    valid (``None`` when no single key does, e.g. two settings that only clash together)."""
    found = []
    for key in kwargs:
        try:
            obj = cls(**{k: v for k, v in kwargs.items() if k != key})
            if hasattr(obj, "validate"):
                obj.validate()
        except (TypeError, ValueError):
            continue
        found.append(key)
    return found[0] if len(found) == 1 else None


def dataclass_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from the flags the user typed (unset flags keep the dataclass defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return dataclass_from_dict(cls, {k: v for k, v in vars(args).items() if k in names and v is not None})


def to_dict(obj) -> dict:
    """A config dataclass as a plain dict (for manifests and metrics)."""
    return dataclasses.asdict(obj)
