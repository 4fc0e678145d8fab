"""What the commands show on the terminal: one progress bar per long step, one compact line per training
logging step, a short summary at the end, and nothing but errors under ``--quiet``.

Progress (bars, training lines, INFO logs) goes to stderr; the final summary goes to stdout, so
``tokenskip ... > summary.txt`` keeps only the summary. ``--quiet`` (or ``TOKENSKIP_QUIET=1``, which
child processes inherit) turns off bars, training lines, INFO logs and summaries; errors still print.
"""

from __future__ import annotations

import math
import os
import sys
import time

_ENV = "TOKENSKIP_QUIET"


def quiet() -> bool:
    """Whether ``--quiet`` (or ``TOKENSKIP_QUIET=1``) is in effect."""
    return os.environ.get(_ENV, "") not in ("", "0")


def set_quiet(on: bool) -> None:
    """Switch quiet mode for this process and its children (also Hugging Face's own progress bars)."""
    if on:
        os.environ[_ENV] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read by huggingface_hub, transformers, datasets
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # vLLM reads it at import (engine and workers)
    else:
        os.environ.pop(_ENV, None)


def progress(total: int, desc: str, unit: str = "sample"):
    """A tqdm bar for one long step (on stderr); a no-op bar when quiet or when ``total`` < 2.

    The caller owns the only bar of its step: backends and scorers called inside it draw none.
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=quiet() or total < 2, file=sys.stderr,
                dynamic_ncols=True, mininterval=1.0, smoothing=0.1)


def say(text: str) -> None:
    """A line of the final summary (stdout), unless quiet."""
    if not quiet():
        print(text, flush=True)


def note(text: str) -> None:
    """A progress line (stderr), unless quiet."""
    if not quiet():
        print(text, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """``42s``, ``7m05s``, ``2h03m`` (seconds rounded)."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def train_line(step: int, max_steps: int, logs: dict, elapsed_s: float, tokens_seen: int | None = None,
               steps_this_session: int | None = None) -> str:
    """One compact training line from a Trainer ``logs`` dict, e.g.
    ``step 10/25 (40%) · epoch 0.40 · loss 1.2346 · lr 3.0e-04 · grad norm 0.91 · 92 tok/s · 1m30s, ~2m15s left``.

    ``elapsed_s``, ``tokens_seen`` and ``steps_this_session`` (default ``step``) count since this process
    started training (a resumed run starts past step 0); the time left is extrapolated from that pace.
    Fields the logs lack are left out.
    """
    parts = [f"step {step}/{max_steps} ({100 * step / max_steps:.0f}%)" if max_steps > 0 else f"step {step}"]
    if isinstance(logs.get("epoch"), (int, float)):
        parts.append(f"epoch {logs['epoch']:.2f}")
    if isinstance(logs.get("loss"), (int, float)):
        parts.append(f"loss {logs['loss']:.4f}")
    if isinstance(logs.get("learning_rate"), (int, float)):
        parts.append(f"lr {logs['learning_rate']:.1e}")
    if isinstance(logs.get("grad_norm"), (int, float)) and math.isfinite(logs["grad_norm"]):
        parts.append(f"grad norm {logs['grad_norm']:.2f}")
    if tokens_seen and elapsed_s > 0:
        parts.append(f"{tokens_seen / elapsed_s:.0f} tok/s")
    timing = duration(elapsed_s)
    done = step if steps_this_session is None else steps_this_session
    if 0 < done and step < max_steps:
        timing += f", ~{duration(elapsed_s / done * (max_steps - step))} left"
    parts.append(timing)
    return " · ".join(parts)


def trainer_callback():
    """A transformers ``TrainerCallback`` printing :func:`train_line` at each logging step (and the eval
    loss), on the main process only. Use it with ``disable_tqdm=True`` and without transformers'
    ``PrinterCallback`` (which prints the raw log dicts)."""
    from transformers import TrainerCallback

    class TrainProgress(TrainerCallback):
        def __init__(self):
            self.t0 = None
            self.first_step = 0
            self.first_tokens = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()
            self.first_step = state.global_step  # > 0 when resumed: rates count this session only
            self.first_tokens = state.num_input_tokens_seen or 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or quiet():
                return
            elapsed = time.perf_counter() - (self.t0 or time.perf_counter())
            if "loss" in logs:
                note(train_line(state.global_step, state.max_steps, logs, elapsed,
                                (state.num_input_tokens_seen or 0) - self.first_tokens,
                                state.global_step - self.first_step))
            elif "eval_loss" in logs:
                note(f"eval loss {logs['eval_loss']:.4f}")

    return TrainProgress()
