"""A recipe: the YAML file of a run, read and checked (unknown keys are errors), and the rules that
turn its top-level keys and stage sections into each stage's config."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tokenskip.contract.config import ConfigError, dataclass_from_dict, to_dict
from tokenskip.contract.io import file_hash
from tokenskip.errors import TokenskipError
from tokenskip.stages import NAMES as STAGES

logger = logging.getLogger(__name__)

#: keys at the top of a recipe that are copied into every stage that has such a field
INHERITED = ("model", "threads", "dtype", "device", "seed", "benchmark", "prompt_style", "backend", "system_prompt",
             "cot_format", "enable_thinking")
#: settings that change how fast a stage runs, never what it writes: left out of fingerprints
RUNTIME_KEYS = ("threads", "ray_address", "ray_actors", "ray_cpus_per_actor", "ray_gpus_per_actor")
#: the keys of a recipe's top-level ``ray:`` mapping, each copied to the ``ray_<key>`` setting of every stage
#: that has one (:class:`tokenskip.contract.config.ClusterSettings`)
RAY_KEYS = ("engine", "address", "actors", "cpus_per_actor", "gpus_per_actor", "shard_size")
#: Settings where the paper's (reference) setting and this project's differ; a plan prints them per stage.
MODE_KEYS = ("prompt_style", "compat", "reference_family", "answer_line", "validation_share", "lora_dropout",
             "batch_size", "grad_accum", "force_answer", "scale_max_new_tokens", "max_model_len")


class RecipeError(TokenskipError, ValueError):
    """A recipe that cannot be used; the message names the file and the key."""


# --------------------------------------------------------------------------- the recipe

@dataclass
class Recipe:
    """The top level of a recipe (see the module docstring); every other key is an error.

    Attributes:
        name: run folder name; run_dir: its parent folder.
        stages: ``{stage name: section}``; each section is checked against its stage's config class.
        model, threads, dtype, device, seed, benchmark, prompt_style, backend, system_prompt: defaults of every
            stage that has such a field (``prompt_style: reference`` makes generate, build_sft and evaluate use the
            reference's prompts; ``backend: vllm`` makes generate and evaluate decode with vLLM; ``system_prompt``
            is the system turn of warmup, generate, build_sft and evaluate alike, so the target model is trained
            and asked with the same one — the paper's Qwen runs used "You are a helpful assistant.").
        cot_format, enable_thinking: a reasoning model's CoT format (``think``: the CoT is the ``<think>`` block)
            and its chat template's ``enable_thinking``, for generate, build_sft and evaluate alike
            (:mod:`tokenskip.task.think`).
        ray: with ``backend: ray``, where the replicated engine runs (:data:`RAY_KEYS`: ``engine``, ``address``,
            ``actors``, ``cpus_per_actor``, ``gpus_per_actor``, ``shard_size``; docs/scale-out.md).
    """

    name: str = ""
    stages: dict = field(default_factory=dict)
    run_dir: str = "runs"
    model: str | None = None
    threads: int | str | None = None  # N or auto (tokenskip.engines.hardware)
    dtype: str | None = None
    device: str | None = None
    seed: int | None = None
    benchmark: str | None = None
    prompt_style: str | None = None  # chat-template or reference (paper-exact prompts, issue 13)
    backend: str | None = None  # hf, vllm or openai: the generation engine of generate and evaluate
    system_prompt: str | None = None  # the system turn of every stage that writes or reads prompts
    cot_format: str | None = None  # auto, plain or think (reasoning models: the CoT is the <think> block)
    enable_thinking: bool | None = None  # the chat template's enable_thinking (Qwen3 style)
    ray: dict | None = None  # backend ray: engine, address, actors, cpus/gpus per actor, shard size

    def validate(self) -> None:
        if not self.name:
            raise ValueError("missing 'name'")
        if not isinstance(self.stages, dict) or not self.stages:
            raise ValueError("missing 'stages' mapping")
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; valid: {list(STAGES)}")
        for name, sec in self.stages.items():
            if sec is not None and not isinstance(sec, dict):
                raise ValueError(f"stages.{name}: expected a mapping of settings, got {sec!r}")
        if self.ray is not None:
            if not isinstance(self.ray, dict):
                raise ValueError(f"ray: expected a mapping of {list(RAY_KEYS)}, got {self.ray!r}")
            unknown = sorted(set(self.ray) - set(RAY_KEYS))
            if unknown:
                raise ValueError(f"ray: unknown key(s) {unknown}; valid: {list(RAY_KEYS)}")

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        """Check and build a recipe from its YAML mapping (keys starting with ``_`` are the loader's).

        Raises:
            RecipeError: an unknown top-level key (named), a value of the wrong type, no name or stages.
        """
        src = data.get("_path", "recipe")
        fields = {k: v for k, v in data.items() if not k.startswith("_")}
        return build_config(cls, fields, f"{src}: top level", data.get("_lines"))


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read a YAML recipe and apply ``--set key.sub=value`` overrides (values parsed as YAML).

    Returns the recipe mapping (checked by :meth:`Recipe.from_dict`), with ``_path`` added.

    Raises:
        RecipeError: unreadable YAML, an unknown top-level key, missing ``name``/``stages``, unknown
            stage, bad override.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        recipe = yaml.safe_load(text)
        lines = yaml_lines(text) if isinstance(recipe, dict) else {}
    except yaml.YAMLError as e:   # one line: file, line, column and the problem (a tab, a bad indent...)
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        hint = " (YAML indents with spaces, not tabs)" if "\\t" in problem or "\t" in problem else ""
        raise RecipeError(f"{where}: invalid YAML: {problem}{hint}") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level")
    for ov in overrides or []:
        if "=" not in ov:
            raise RecipeError(f"--set {ov!r}: expected key.path=value")
        key, value = ov.split("=", 1)
        node = recipe
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {key}: {p!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(value)
        lines[key] = "--set"   # the value is no longer the file's
    recipe["_path"] = str(path)
    recipe["_lines"] = lines
    Recipe.from_dict(recipe)
    return recipe


def stage_section(recipe: Recipe, stage: str) -> dict:
    sec = recipe.stages.get(stage)
    return {} if sec is None else dict(sec)


def stage_enabled(recipe: Recipe, stage: str) -> bool:
    return stage in recipe.stages and stage_section(recipe, stage).get("enabled", True) is not False


def with_inherited(recipe: Recipe, cls, sec: dict) -> dict:
    names = {f.name for f in fields(cls)}
    out = {k: getattr(recipe, k) for k in INHERITED if getattr(recipe, k) is not None and k in names}
    out.update({f"ray_{k}": v for k, v in (recipe.ray or {}).items() if f"ray_{k}" in names})
    out.update(sec)
    return out


def settings_of(cfg) -> dict:
    """A config's settings for its fingerprint, without those its ``unused_settings()`` names (e.g. generate's
    sampling settings under greedy decoding), so they do not re-plan runs they cannot change."""
    out = to_dict(cfg)
    for k in getattr(cfg, "unused_settings", tuple)():
        out.pop(k, None)
    return out


def build_config(cls, data: dict, where: str, lines: dict[str, int | str] | None = None):
    """``cls`` from a recipe section; a bad setting is a :class:`RecipeError` of one line,
    ``<file>:<line>: stages.<stage>.<setting>: <what is wrong>`` (see :func:`recipe_error`).

    ``where`` is ``"<file>: <section path>"``; ``lines`` maps setting paths to their line in the file
    (:func:`yaml_lines`), or to ``"--set"`` for a setting given on the command line.
    """
    try:
        return dataclass_from_dict(cls, data)
    except ConfigError as e:
        raise RecipeError(recipe_error(where, e, lines or {})) from None
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{where}: {e}") from None


def recipe_error(where: str, e: ConfigError, lines: dict[str, int | str]) -> str:
    """One line naming the file, the line and the setting: ``recipe.yaml:33: stages.compress.limit: expected an
    integer, got 10.5`` (the section's own line when the setting has none in the file, e.g. a default that a
    ``validate()`` refuses in combination)."""
    src, _, section = where.partition(": ")
    key = f"{section}.{e.field}" if e.field and section != "top level" else (e.field or section)
    msg = str(e)
    if e.field and msg.startswith(f"{e.field}: "):
        msg = msg[len(e.field) + 2:]
    line = lines.get(key) or lines.get(section)
    if line == "--set":
        return f"{src}: --set {key}: {msg}"
    return f"{src}:{line}: {key}: {msg}" if line else f"{src}: {key}: {msg}"


def yaml_lines(text: str) -> dict[str, int]:
    """Every key path of a YAML mapping (``stages.compress.limit``) -> its 1-based line; list items of mappings
    (``stages.evaluate.methods[0].method``) too."""
    out: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                path = f"{prefix}.{k.value}" if prefix else str(k.value)
                out[path] = k.start_mark.line + 1
                walk(v, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, f"{prefix}[{i}]")

    walk(yaml.compose(text), "")
    return out


def without_runtime(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: without_runtime(v) for k, v in obj.items() if k not in RUNTIME_KEYS}
    if isinstance(obj, list):
        return [without_runtime(v) for v in obj]
    return obj


def data_hash(value: Any) -> str | None:
    return file_hash(value) if isinstance(value, str) and Path(value).is_file() else None
