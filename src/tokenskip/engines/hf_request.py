"""Per-request decoding controls of the HF engine, plugged into transformers ``generate`` as a logits processor
and a stopping criterion (:class:`RowControls`): each row of a padded batch gets its own stop strings, cancel
flag, presence/frequency penalties and log-probabilities (:class:`tokenskip.engines.RequestOptions`), which
``generate``'s own arguments can only set for the whole batch.

Order of the logits pipeline: transformers' own processors (the model's ``repetition_penalty``,
``min_new_tokens``), then ours: the log-probabilities are read, the penalties applied, then temperature and
``top_p`` (transformers' warpers, given here so that they come after the penalties, as vLLM applies them).
"""

from __future__ import annotations

from typing import Callable, Sequence

from tokenskip.engines import RequestOptions, TokenLogprob

#: tokens decoded again at each step to look for a row's stop strings, beyond the longest string's characters
#: (a token is at least one character, except pieces of a multi-byte character)
STOP_WINDOW_SLACK = 8


class RowControls:
    """The per-row state of one ``generate`` call on rows ``index`` (the caller's prompt indices).

    Args:
        options: one :class:`RequestOptions` per row.
        index: the caller's prompt index of each row (what ``cancelled`` is asked about).
        prompt_len: padded prompt length in tokens (generated tokens start there).
        tokenizer: decodes the tail of a row to look for its stop strings.
        cancelled: ``cancelled(prompt_index)`` -> the request was abandoned; ``None``: never.
        caps: each row's own ``max_new_tokens`` (the batch decodes to the largest): a row is ended at its cap, so
            the batch stops once every row is ended, not at the largest cap when the long rows were cancelled.

    After ``generate``: ``ended[r]`` is the number of tokens row ``r`` generated when a stop string, its cancel
    flag or its own cap ended it (``None`` otherwise: end of turn), ``cancelled_rows`` the rows cancelled, and
    ``logprobs[r]`` one :class:`TokenLogprob` per generated step of rows that asked for them.
    """

    def __init__(self, options: Sequence[RequestOptions], index: Sequence[int], prompt_len: int, tokenizer,
                 cancelled: Callable[[int], bool] | None = None, caps: Sequence[int] | None = None):
        self.options, self.index, self.prompt_len, self.tokenizer = list(options), list(index), prompt_len, tokenizer
        self.cancelled = cancelled
        self.caps = list(caps) if caps is not None else None
        self.ended: list[int | None] = [None] * len(self.options)
        self.cancelled_rows: set[int] = set()
        self.logprobs: list[list[TokenLogprob] | None] = [[] if o.logprobs is not None else None
                                                          for o in self.options]
        self._lp_rows = [r for r, o in enumerate(self.options) if o.logprobs is not None]
        self._top = max((self.options[r].logprobs for r in self._lp_rows), default=0)
        self._pending = None   # (log-softmax rows, top-k values, top-k ids) of the step being decoded
        self._windows = [max(map(len, o.stop)) + STOP_WINDOW_SLACK if o.stop else 0 for o in self.options]

    def needed(self) -> bool:
        """Whether any row needs a control (else ``generate`` runs without them)."""
        return self.cancelled is not None or any(o.asks() - {"seed"} for o in self.options) or \
            (self.caps is not None and len(set(self.caps)) > 1)

    def done(self, r: int) -> bool:
        return self.ended[r] is not None

    # -- the logits processor: log-probabilities first, then the penalties
    def process(self, input_ids, scores):
        import torch

        if self._lp_rows:
            lp = torch.log_softmax(scores[self._lp_rows].float(), dim=-1)
            top = lp.topk(self._top, dim=-1) if self._top else None
            self._pending = (lp, top)
        pres = [o.presence_penalty for o in self.options]
        freq = [o.frequency_penalty for o in self.options]
        if any(pres) or any(freq):
            gen = input_ids[:, self.prompt_len:]
            counts = torch.zeros_like(scores)
            if gen.shape[1]:
                counts.scatter_add_(1, gen, torch.ones_like(gen, dtype=scores.dtype))
            scores = scores - torch.tensor(freq, dtype=scores.dtype, device=scores.device)[:, None] * counts \
                - torch.tensor(pres, dtype=scores.dtype, device=scores.device)[:, None] * (counts > 0).to(scores.dtype)
        return scores

    # -- the stopping criterion: called after each step's token is appended
    def stop(self, input_ids, scores=None):
        import torch

        self._record_logprobs(input_ids)
        n = input_ids.shape[1] - self.prompt_len
        for r, o in enumerate(self.options):
            if self.done(r):
                continue
            if self.cancelled is not None and self.cancelled(self.index[r]):
                self.ended[r] = n
                self.cancelled_rows.add(r)
            elif self.caps is not None and n > self.caps[r]:
                # one step past the cap (the streamer may be handed the cap-th token after this check)
                self.ended[r] = self.caps[r]
            elif o.stop:
                tail = input_ids[r, max(self.prompt_len, input_ids.shape[1] - self._windows[r]):].tolist()
                text = self.tokenizer.decode(tail, skip_special_tokens=True)
                if any(s in text for s in o.stop):
                    self.ended[r] = n
        return torch.tensor([self.done(r) for r in range(len(self.options))], device=input_ids.device)

    def _record_logprobs(self, input_ids) -> None:
        if self._pending is None:
            return
        lp, top = self._pending
        chosen = input_ids[self._lp_rows, -1].tolist()
        for k, (r, t) in enumerate(zip(self._lp_rows, chosen)):
            if self.done(r):
                continue
            want = self.options[r].logprobs
            pairs = list(zip(top.indices[k, :want].tolist(), top.values[k, :want].tolist())) if want else []
            self.logprobs[r].append(TokenLogprob(int(t), float(lp[k, t]), pairs))
        self._pending = None

    def processors(self, temperature: float, top_p: float) -> list:
        """The logits processors for ``generate(logits_processor=...)``: this object's, then the sampling warpers
        (``temperature`` 0: none, greedy)."""
        from transformers import LogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

        controls = self

        class _Controls(LogitsProcessor):
            def __call__(self, input_ids, scores):
                return controls.process(input_ids, scores)

        out = [_Controls()]
        if temperature and temperature > 0:
            if temperature != 1.0:
                out.append(TemperatureLogitsWarper(float(temperature)))
            if top_p < 1.0:
                out.append(TopPLogitsWarper(float(top_p)))
        return out

    def criteria(self) -> list:
        """The stopping criterion for ``generate(stopping_criteria=...)``."""
        from transformers import StoppingCriteria

        controls = self

        class _Controls(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return controls.stop(input_ids, scores)

        return [_Controls()]
