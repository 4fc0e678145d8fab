"""The rollout core shared by *generate* and *evaluate*: prompts in, graded prediction rows and metrics out.

Both stages build prompts, then call :func:`run_rows` (generate the problems not yet on disk, grade each
output, append :class:`~tokenskip.contract.records.Prediction` rows to a resumable file) and :func:`write_metrics`
(summary -> ``metrics.json``). Neither stage imports the other; both import this module.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tokenskip.contract.config import CLUSTER_KEYS, ClusterSettings, ModelSettings
from tokenskip.contract.io import ResumableJsonl, file_hash, write_json_atomic
from tokenskip.contract.layout import METRICS
from tokenskip.contract.records import SAMPLE_SEP, Prediction, Problem, RunMetrics, sample_id
from tokenskip.engines import BACKENDS, EngineSpec, GenerationBackend, decoding_spec, engine_spec, plain_decode
from tokenskip.engines.hardware import DtypeChoice, resolve_dtype, resolve_threads
from tokenskip.task.benchmarks import GRADERS, Benchmark, get_benchmark
from tokenskip.task.think import (
    COT_FORMATS,
    ENABLE_THINKING_HELP,
    pin_enable_thinking,
    resolve_cot_format,
    validate_cot_format,
)

logger = logging.getLogger(__name__)


@dataclass
class GenerationConfig(ModelSettings, ClusterSettings):
    """Settings of a generation/evaluation run.

    Defaults follow the paper's reference code where it has one (greedy decoding; max_new_tokens 512
    for GSM8K and 1024 for MATH, from the benchmark registry), and this project's defaults otherwise
    (dtype auto, batch 8).
    """

    model: str | None = field(default=None, metadata={"help": "target model: alias, .gguf, local folder or Hub id"})
    benchmark: str = field(default="gsm8k", metadata={
        "help": "gsm8k, math (alias math500), math-train, aime2024, aime2025, gpqa-diamond, or custom (any JSONL: "
                "see --question-field, --answer-field, --grader)"})
    data: str | None = field(default=None, metadata={"help": "local JSONL file or Hub dataset id (default: the "
                                                             "benchmark's Hub id)"})
    question_field: str | None = field(default=None, metadata={"help": "custom benchmark: field of the question "
                                                                       "(default: question)"})
    answer_field: str | None = field(default=None, metadata={"help": "custom benchmark: field of the gold answer "
                                                                     "(default: answer)"})
    grader: str | None = field(default=None, metadata={
        "help": "grader kind: numeric (numbers, as GSM8K), symbolic (LaTeX via math-verify, as MATH), integer "
                "(0-999, as AIME) or choice (a letter A-D, as GPQA); required for custom, default: the benchmark's",
        "choices": list(GRADERS)})
    split: str | None = field(default=None, metadata={"help": "Hub split (train/test); ignored for local files"})
    limit: int | None = field(default=None, metadata={"help": "at most this many problems"})
    offset: int = field(default=0, metadata={"help": "skip this many problems first"})
    out: str | None = field(default=None, metadata={"help": "output folder"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "cap on generated tokens (default 512 GSM8K, "
                                                                       "1024 MATH: paper)"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generate call"})
    backend: str = field(default="hf", metadata={"help": "generation engine", "choices": list(BACKENDS)})
    latency_mode: str = field(default="amortized", metadata={
        "help": "amortized: batch wall time / batch size; single: each prompt decoded alone (true latency)",
        "choices": ["amortized", "single"]})
    system_prompt: str | None = field(default=None, metadata={"help": "optional system turn"})
    prompt_style: str = field(default="chat-template", metadata={
        "help": "chat-template: the tokenizer's chat template; reference: the TokenSkip reference's hand-written "
                "Qwen/Llama-3.1 prompt strings, byte for byte (paper recipes)",
        "choices": ["chat-template", "reference"]})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor parallel size (GPU)"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM GPU memory fraction"})
    enforce_eager: bool = field(default=False, metadata={
        "help": "vLLM: skip graph compilation (start-up ~20 s instead of 1-3 min on CPU; slower decoding)"})
    prefix_caching: bool | None = field(default=None, metadata={
        "help": "vLLM: reuse the KV cache of shared prompt prefixes (chat template + instruction); "
                "default: vLLM's own choice"})
    max_num_seqs: int | None = field(default=None, metadata={
        "help": "vLLM: most sequences decoded at once (default: vLLM's)"})
    kv_cache_space_gb: int | None = field(default=None, metadata={
        "help": "vLLM on CPU: KV cache size in GiB (default 2)"})
    max_model_len: int | None = field(default=None, metadata={
        "help": "vLLM context length in tokens (default: the model's own; Llama-3.1 would reserve 131k)"})
    base_url: str | None = field(default=None, metadata={"help": "--backend openai: the endpoint, e.g. http://127.0.0.1:8088/v1"})
    api_model: str | None = field(default=None, metadata={
        "help": "--backend openai: model name sent (default: the adapter folder's name, else the first of /v1/models)"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "--backend openai: environment variable "
                                                                         "holding the API key"})
    max_in_flight: int = field(default=8, metadata={"help": "--backend openai: requests in flight at once"})
    cot_format: str = field(default="auto", metadata={
        "help": "where the CoT is: think = inside <think>…</think>, the answer after it (reasoning models); plain = "
                "before 'The final answer is:' (the paper); auto = think for outputs with a block or a chat template "
                "whose generation prompt opens one", "choices": list(COT_FORMATS)})
    enable_thinking: bool | None = field(default=None, metadata={"help": ENABLE_THINKING_HELP})
    stop: list[str] = field(default_factory=list, metadata={
        "split": False, "empty_ok": True,
        "help": "extra stop strings (the output is cut before the first one; \\n and \\t are read as line break "
                "and tab); decoding always stops at the model's EOS and the chat template's end of turn"})

    def __post_init__(self) -> None:
        # the escapes typed on a command line, read once at construction (validate() changes nothing)
        self.stop = [x.replace("\\n", "\n").replace("\\t", "\t") for x in self.stop]
        super().__post_init__()

    def validate(self) -> None:
        """Check the values (no disk access, no changes). Raises ``ValueError`` naming the setting."""
        if not self.model:
            raise ValueError("--model is required")
        self.bench  # unknown benchmark / grader / misplaced field settings
        if self.benchmark.lower() == "custom" and not self.data:
            raise ValueError("--benchmark custom needs --data FILE.jsonl")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"--max-model-len must be >= 1, got {self.max_model_len}")
        if self.prompt_style not in ("chat-template", "reference"):
            raise ValueError(f"--prompt-style must be chat-template or reference, got {self.prompt_style!r}")
        if self.offset < 0 or (self.limit is not None and self.limit < 0):
            raise ValueError("--limit and --offset must be >= 0")
        if any(not x for x in self.stop):
            raise ValueError("--stop: stop strings must not be empty")
        validate_cot_format(self.cot_format, "--cot-format")
        if engine_spec(self.backend).needs_base_url and not self.base_url:
            raise ValueError(f"--backend {self.backend} needs --base-url (e.g. http://127.0.0.1:8088/v1)")
        if self.max_in_flight < 1:
            raise ValueError(f"--max-in-flight must be >= 1, got {self.max_in_flight}")
        self.validate_cluster()
        self.engine  # an inner engine a wrapping backend cannot replicate

    def unused_settings(self) -> tuple[str, ...]:
        """Settings that change nothing in this run, left out of a recipe's fingerprint: the ``ray_*`` ones unless
        the backend replicates an engine (so runs made before they existed stay done)."""
        return () if engine_spec(self.backend).wraps else CLUSTER_KEYS

    @property
    def engine(self) -> EngineSpec:
        """The spec whose device/dtype/adapter rules apply: the backend's, or the engine that ``backend: ray``
        replicates (``ray_engine``). Raises ``ValueError`` for an unknown name."""
        return decoding_spec(self.backend, self.ray_engine)

    @property
    def bench(self) -> Benchmark:
        """The :class:`~tokenskip.task.benchmarks.Benchmark` these settings name. Raises ``ValueError``."""
        return get_benchmark(self.benchmark, self.question_field, self.answer_field, self.grader)

    @property
    def resolved_max_new_tokens(self) -> int:
        return self.max_new_tokens or self.bench.max_new_tokens

    def dtype_choice(self) -> DtypeChoice:
        """The dtype this run uses (``auto`` resolved for ``device``/backend) and why."""
        return resolve_dtype(self.dtype, self.engine.dtype_device(self.device))

    def backend_kwargs(self, adapter: str | None = None, merge_adapter: bool = True) -> dict:
        kw = dict(model=self.model, dtype=self.dtype_choice().dtype, device=self.device, batch_size=self.batch_size,
                  adapter=adapter, merge_adapter=merge_adapter, latency_mode=self.latency_mode,
                  tensor_parallel_size=self.tensor_parallel_size,
                  gpu_memory_utilization=self.gpu_memory_utilization, threads=resolve_threads(self.threads),
                  base_url=self.base_url, api_model=self.api_model, api_key_env=self.api_key_env,
                  max_in_flight=self.max_in_flight, stop=tuple(self.stop), enforce_eager=self.enforce_eager)
        optional = dict(enable_prefix_caching=self.prefix_caching, max_num_seqs=self.max_num_seqs,
                        kv_cache_space_gb=self.kv_cache_space_gb, max_model_len=self.max_model_len)
        kw |= {k: v for k, v in optional.items() if v is not None}
        return kw | self.cluster_kwargs() if engine_spec(self.backend).wraps else kw

    def dtype_record(self) -> dict:
        """``dtype`` (resolved), ``dtype_requested`` and ``dtype_reason`` for ``metrics.json``."""
        c = self.dtype_choice()
        return {"dtype": c.dtype, "dtype_requested": self.dtype, "dtype_reason": c.reason}

    def data_identity(self) -> str:
        """What identifies the data source in a settings fingerprint: a local file's hash, else the Hub id."""
        if self.data and Path(self.data).is_file():
            return file_hash(self.data)
        return f"{self.data or 'hub'}:{self.split}"


def think_setup(cfg: GenerationConfig, tokenizer) -> str:
    """Pin ``cfg.enable_thinking`` in ``tokenizer``'s chat template (every prompt of the run then renders with it)
    and return the run's CoT format (``cfg.cot_format``, ``auto`` resolved from the template:
    :func:`tokenskip.task.think.resolve_cot_format`).

    Raises:
        ValueError: ``enable_thinking`` set for a template that does not read it.
    """
    pin_enable_thinking(tokenizer, cfg.enable_thinking)
    return resolve_cot_format(cfg.cot_format, tokenizer)


@dataclass
class SampledGenerationConfig(GenerationConfig):
    """:class:`GenerationConfig` plus sampled decoding: ``samples`` CoTs per problem (row ids ``<id>#s<k>``,
    :func:`~tokenskip.contract.records.sample_id`) at ``temperature`` / ``top_p``.

    ``samples`` 1 with ``temperature`` 0 is greedy decoding, one CoT per problem (the paper's default). The
    reasoning-model convention (DeepSeek-R1 distills' model card) is temperature 0.6, top-p 0.95 and
    pass@1 averaged over n samples per question (:func:`sample_spread`).
    """

    samples: int = field(default=1, metadata={
        "help": "CoTs per problem; > 1 needs --temperature > 0 (row ids <id>#s<k>; evaluate: pass@1 averaged over "
                "them, with its spread)"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature (0: greedy decoding; "
                                                              "reasoning models: 0.6, model card)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling: smallest token set of this probability "
                                                        "(reasoning models: 0.95)"})
    seed: int = field(default=0, metadata={"help": "sampling seed (HF: torch's; vLLM: the engine's)"})

    def validate(self) -> None:
        super().validate()
        if self.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {self.samples}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(f"--samples {self.samples} with --temperature 0 would write {self.samples} copies of "
                             "the same greedy CoT; give a temperature > 0 (e.g. 0.6)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def unused_settings(self) -> tuple[str, ...]:
        """Settings that change nothing in this run, left out of a recipe's fingerprint: the sampling ones when
        decoding is greedy (so greedy runs made before they existed, or with a recipe-wide ``seed``, stay done)."""
        return super().unused_settings() + (() if self.sampling else ("samples", "temperature", "top_p", "seed"))

    def backend_kwargs(self, adapter: str | None = None, merge_adapter: bool = True) -> dict:
        return super().backend_kwargs(adapter, merge_adapter) | ({"seed": self.seed} if self.sampling else {})

    def sampling_settings(self) -> dict:
        """The sampling settings for a rows' fingerprint: empty under greedy decoding (earlier runs keep theirs)."""
        return dict(samples=self.samples, temperature=self.temperature, top_p=self.top_p, seed=self.seed) \
            if self.sampling else {}

    def sampling_kwargs(self) -> dict:
        """Keyword arguments of a backend's ``generate`` for this decoding (empty: greedy)."""
        return {"temperature": self.temperature, "top_p": self.top_p} if self.sampling else {}

    def expand(self, problems: Sequence[Problem], prompts: Sequence[str]) -> tuple[list[Problem], list[str]]:
        """Each problem and prompt repeated ``samples`` times, ids ``<id>#s<k>`` (unchanged when ``samples`` is 1).
        The prompts repeat back to back, so vLLM's prefix cache serves the copies."""
        if self.samples == 1:
            return list(problems), list(prompts)
        return ([dataclasses.replace(p, id=sample_id(p.id, k)) for p in problems for k in range(self.samples)],
                [q for q in prompts for _ in range(self.samples)])

    def seed_torch(self) -> None:
        """Seed torch's RNG when sampling on a torch engine (HF); vLLM samples from its engine ``seed``."""
        if self.sampling and engine_spec(self.backend).torch_device:
            import torch

            torch.manual_seed(self.seed)


def sample_spread(rows: Sequence[dict], samples: int) -> dict:
    """pass@1 over ``samples`` sampled CoTs per question and its spread, for ``metrics.json``.

    Row ``<id>#s<k>`` belongs to sample ``k``; sample ``k``'s accuracy is over its questions. pass@1 = the
    mean of those accuracies (= the share of correct rows when every question has all samples); its spread
    is their standard deviation (sample std, n − 1; 0 for one sample), in accuracy units (fraction).

    Returns:
        ``{}`` when ``samples`` is 1, else ``{"samples", "pass_at_1", "accuracy_std", "accuracy_per_sample"}``.
    """
    if samples <= 1:
        return {}
    correct: dict[int, list[bool]] = {}
    for r in rows:
        head, _, k = r["id"].rpartition(SAMPLE_SEP)
        if head and k.isdigit():
            correct.setdefault(int(k), []).append(bool(r["correct"]))
    accs = [sum(v) / len(v) for _, v in sorted(correct.items()) if v]
    if not accs:
        return {"samples": samples, "pass_at_1": None, "accuracy_std": None, "accuracy_per_sample": []}
    return {"samples": samples, "pass_at_1": statistics.fmean(accs),
            "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "accuracy_per_sample": accs}


def data_identity(cfg: GenerationConfig) -> str:
    """See :meth:`GenerationConfig.data_identity`."""
    return cfg.data_identity()


def grade_row(problem: Problem, prompt: str, gen, grader: str, count_tokens: Callable[[str], int],
              cot_format: str = "auto") -> dict:
    """One predictions row (:class:`~tokenskip.contract.records.Prediction` as JSON) from a problem and its generation.

    CoT tokens are counted in the target model's tokenizer on the text before the literal
    "\\n\\nThe final answer is:" (the whole output when absent), the reference's split
    (:func:`tokenskip.task.grading.split_cot`; docs/method.md step 7).

    In the think format the CoT is the think block's content and only the text after it is graded; the row's
    ``think_closed`` says whether the block was closed (an unclosed one is graded wrong).

    Args:
        grader: grader kind (:data:`~tokenskip.task.benchmarks.GRADERS`) or a benchmark name.
        cot_format: ``auto``, ``plain`` or ``think`` (:func:`tokenskip.task.grading.split_output`).
    """
    from tokenskip.task.grading import grade

    g = grade(gen.text, problem.answer, grader, cot_format=cot_format)
    return Prediction(
        id=problem.id, question=problem.question, prompt=prompt, output=gen.text, cot=g.cot,
        cot_tokens=count_tokens(g.cot), pred=g.answer, gold=problem.answer, correct=bool(g.correct),
        latency_s=round(gen.latency_s, 6), num_tokens=gen.num_tokens, finish_reason=gen.finish_reason,
        output_token_ids=list(gen.token_ids), think_closed=g.think_closed).to_json()


def summarize(rows: Sequence[dict]) -> dict:
    """Aggregate metrics of predictions rows: accuracy (0..1), CoT tokens (mean, median), latency (s/sample),
    throughput (generated tokens ÷ generation seconds), and where rows are think outputs ``think_unclosed``
    (how many never closed their block)."""
    n = len(rows)
    if n == 0:
        return {"n": 0, "accuracy": None, "avg_cot_tokens": None, "median_cot_tokens": None,
                "avg_output_tokens": None, "sample_latency_s": None, "tokens_per_s": None}
    cot = [r["cot_tokens"] for r in rows]
    lat = sum(r["latency_s"] for r in rows)
    toks = sum(r.get("num_tokens", 0) for r in rows)
    think = [r["think_closed"] for r in rows if r.get("think_closed") is not None]
    return ({"think_unclosed": sum(not c for c in think)} if think else {}) | {
        "n": n,
        "accuracy": sum(bool(r["correct"]) for r in rows) / n,
        "avg_cot_tokens": sum(cot) / n,
        "median_cot_tokens": statistics.median(cot),
        "avg_output_tokens": toks / n,
        "sample_latency_s": lat / n,
        "tokens_per_s": toks / lat if lat > 0 else None,
    }


def row_settings(cfg: GenerationConfig, stage: str) -> dict:
    """The settings that decide a ``predictions.jsonl`` row, for ``generate`` and ``evaluate`` alike (the rows'
    :class:`~tokenskip.contract.io.ResumableJsonl` fingerprint: rows written under other settings are not
    reused). Each stage adds its own (evaluate: method, γ, adapter; generate: sampling). Settings added after
    the first runs enter only when set away from their default, so earlier runs keep their fingerprint.
    """
    bench = cfg.bench
    s = {"stage": stage, "model": cfg.model, "benchmark": bench.name, "data": cfg.data_identity(),
         "max_new_tokens": cfg.resolved_max_new_tokens, "dtype": cfg.dtype_choice().dtype, "backend": cfg.backend,
         "system_prompt": cfg.system_prompt}
    if engine_spec(cfg.backend).wraps:  # the replicated engine decides the rows, not where it runs
        s["ray_engine"], s["ray_shard_size"] = cfg.ray_engine, cfg.ray_shard_size
    if cfg.stop:  # only when set, so runs made before --stop existed keep their fingerprint
        s["stop"] = cfg.stop
    if cfg.prompt_style != "chat-template":  # likewise
        s["prompt_style"] = cfg.prompt_style
    if cfg.cot_format != "auto" or cfg.enable_thinking is not None:  # likewise
        s.update(cot_format=cfg.cot_format, enable_thinking=cfg.enable_thinking)
    if bench.name == "custom" or cfg.grader:  # the field names and the grader decide the rows
        s.update(question_field=cfg.question_field, answer_field=cfg.answer_field, grader=bench.grader)
    return s


def run_rows(problems: Sequence[Problem], prompts: Sequence[str], writer: ResumableJsonl, backend: GenerationBackend,
             grader: str, max_new_tokens: int | Sequence[int], adapter: str | None = None,
             row_hook: Callable[[Problem, dict], dict] | None = None, chunk: int | None = None,
             decode: Callable | None = None, desc: str = "generate", cot_format: str = "auto") -> list[dict]:
    """Generate the problems not yet in ``writer`` and append their rows as each chunk finishes.

    Pending prompts are sorted by length (less padding) and cut into chunks of ``chunk`` (default: the
    backend's ``capabilities.chunk_size``: batch size × 4 for HF, 256 for vLLM); rows are written as soon as their
    chunk is done, so a kill loses at most the chunks in flight. A local engine decodes the chunks one after
    another; an engine with ``capabilities.shards`` (the Ray pool) gets them all at once and returns each as it
    finishes, in any order. Returns all rows for ``problems`` (in input order).

    Args:
        grader: grader kind or benchmark name (see :func:`grade_row`).
        max_new_tokens: one cap (tokens) for all, or one per problem.
        row_hook: ``(problem, row) -> row`` applied before a row is written (e.g. extra fields).
        decode: ``(engine, prompts, caps, adapter) -> [Generation]`` (an evaluation method's decoding), run where
            the engine is (pickled to the Ray actors); default one ``engine.generate`` call.
        desc: label of the progress bar.
        cot_format: the CoT format the rows are graded in (see :func:`grade_row`).
    """
    caps = [max_new_tokens] * len(problems) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    todo = [i for i, p in enumerate(problems) if p.id not in writer.done_keys]
    if todo:
        logger.info("%d of %d problems to generate (%d already done)", len(todo), len(problems),
                    len(problems) - len(todo))
    todo.sort(key=lambda i: len(prompts[i]))
    chunk = chunk or backend.capabilities.chunk_size
    shards = [todo[s:s + chunk] for s in range(0, len(todo), chunk)]
    jobs = [([prompts[i] for i in idx], [caps[i] for i in idx]) for idx in shards]
    from tokenskip.contract.console import progress

    with progress(len(todo), desc) as bar:  # the step's only bar: backends draw none
        for k, gens in decoded(backend, jobs, adapter, decode):
            for i, g in zip(shards[k], gens):   # each row fsynced as it is appended: a kill tears at most one
                row = grade_row(problems[i], prompts[i], g, grader, backend.count_tokens, cot_format)
                if row_hook:
                    row = row_hook(problems[i], row)
                writer.append(row)
            bar.update(len(shards[k]))
    writer.reorder(p.id for p in problems)
    return [writer.rows[p.id] for p in problems]


def decoded(backend: GenerationBackend, jobs: Sequence[tuple[list[str], list[int]]], adapter: str | None,
            decode: Callable | None = None) -> Iterator[tuple[int, list]]:
    """``(job index, generations)`` for each ``(prompts, caps)`` job: from the engine's shard pool when it has
    one (completion order), else decoded here one job after another."""
    decode = decode or plain_decode
    if backend.capabilities.shards:
        yield from backend.generate_shards(jobs, adapter, decode)
        return
    for k, (ps, cs) in enumerate(jobs):
        yield k, decode(backend, ps, cs, adapter)


def write_metrics(out_dir: Path, rows: Sequence[dict], extra: dict) -> dict:
    """Write ``metrics.json`` (:class:`~tokenskip.contract.records.RunMetrics`: summary of ``rows`` plus ``extra``)
    atomically and return it as a dict."""
    m = RunMetrics.from_json({**summarize(rows), **extra}, Path(out_dir) / METRICS).to_json()
    write_json_atomic(Path(out_dir) / METRICS, m)
    return m


def print_metrics(m: dict, title: str = "") -> None:
    """Print :func:`metrics_line` (part of a command's summary; silent under ``--quiet``)."""
    from tokenskip.contract.console import say

    say(metrics_line(m, title))


def metrics_line(m: dict, title: str = "") -> str:
    """One console line for a metrics dict: n, accuracy, CoT tokens, ActRatio, latency, throughput."""
    acc = "—" if m.get("accuracy") is None else f"{100 * m['accuracy']:.1f}%"
    cot = "—" if m.get("avg_cot_tokens") is None else f"{m['avg_cot_tokens']:.1f}"
    act = m.get("act_ratio")
    lat = m.get("sample_latency_s")
    return (f"{title}n={m['n']} accuracy={acc} avg_cot_tokens={cot}"
            + (f" act_ratio={act:.3f}" if act is not None else "")
            + (f" latency={lat:.2f}s/sample ({m.get('latency_mode', 'amortized')})" if lat is not None else "")
            + (f" tokens/s={m['tokens_per_s']:.1f}" if m.get("tokens_per_s") else ""))
