"""Token-level language signals gathered during the one ``model.generate`` the Guard runs.

:class:`TokenSignals` is a ``transformers`` logits processor that returns the scores
unchanged (the same tokens are generated with or without it) and keeps, per step:

- the entropy of the next-token distribution, ``-sum p log p`` (nats);
- the margin between its two most likely tokens, ``p1 - p2``;
- the log-probability of the token chosen at that step (known from ``input_ids`` at a later
  call, or from the final sequences for the last steps).

Per token it only keeps a copy of the step's ``(B, V)`` scores on the model's device: the
log-softmax, entropy, top-2 and gather run batched over the buffered steps, when the buffer
reaches ``buffer_bytes`` (64 MiB by default, so a large vocabulary and batch still bound the
memory), when a stream asks for a :meth:`~TokenSignals.prefix`, and at :meth:`~TokenSignals.result`.
No host sync per token (no ``.item()``, no copy to the CPU inside the loop). A greedy call
that needs no per-step view can instead hand the recorder ``generate``'s ``output_scores`` afterwards
(:meth:`~TokenSignals.record`): the same numbers without a processor call per step. The
distribution is the one the recorder is handed: the caller's and the generation config's processors
that run before it (``with_recorder`` puts it after the caller's).
"""

from __future__ import annotations

import inspect
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LogitsProcessor

__all__ = ["TokenSignals", "TokenSignalsResult"]


@dataclass(frozen=True)
class TokenSignalsResult:
    """Per generated token, shape ``(B, T)`` each, float64 on the CPU."""

    token_logprob: np.ndarray
    predictive_entropy: np.ndarray
    margin: np.ndarray


class TokenSignals(LogitsProcessor):
    """Records per-step predictive entropy, top-2 margin and the chosen token's log-probability.

    Example:
        >>> rec = TokenSignals()                                            # doctest: +SKIP
        >>> out = model.generate(**inputs, logits_processor=LogitsProcessorList([rec]))  # doctest: +SKIP
        >>> rec.result(out).token_logprob.shape                            # (B, T)  # doctest: +SKIP
    """

    def __init__(self, *, buffer_bytes: int = 64 << 20) -> None:
        self._buffer_bytes = int(buffer_bytes)
        self._pending: list[torch.Tensor] = []  # (B, V) float32 scores of the steps not processed yet
        self._done: list[torch.Tensor] = []  # (3, B, k) chunks: chosen log-prob, entropy, margin
        self._n_done = 0
        self._input_ids: torch.Tensor | None = None  # the latest call's ids: the chosen tokens of earlier steps
        self._lock = threading.Lock()  # a stream's consumer thread may read a prefix while generate runs

        me = weakref.ref(self)  # no reference cycle: the buffers go when the recorder does

        def call(input_ids, scores):
            return type(me()).__call__(me(), input_ids, scores)

        call.__signature__ = self._SIGNATURE  # type: ignore[attr-defined]
        self.__call__ = call  # what LogitsProcessorList inspects (see _SIGNATURE)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        with torch.no_grad(), self._lock:
            self._input_ids = input_ids
            self._pending.append(scores.detach().float().clone())  # later processors may not touch our copy
            if len(self._pending) > 1 and len(self._pending) * self._pending[0].numel() * 4 > self._buffer_bytes:
                self._process(len(self._pending) - 1, input_ids)  # every step but this one has its token
        return scores

    def record(self, scores, sequences: torch.Tensor) -> None:
        """Record a finished greedy ``generate``'s ``output_scores`` (one (B, V) tensor per step, the
        distribution this recorder would have been handed as the last processor) and its
        ``sequences`` (B, S): the same signals as recording during the loop, with no per-step
        processor call. Processed in chunks of at most ``buffer_bytes``."""
        if torch.is_grad_enabled():  # (a guarded call records under no_grad already: no second context)
            with torch.no_grad():
                return self.record(scores, sequences)
        with self._lock:
            steps = list(scores)
            if not steps:
                return
            n, per = len(steps), max(1, steps[0].numel() * 4)
            chunk = max(1, self._buffer_bytes // per)
            start = sequences.shape[1] - n  # the first generated position
            for i in range(0, n, chunk):
                j = min(n, i + chunk)
                self._process(j - i, sequences[:, : start + j], stacked=torch.stack(steps[i:j], dim=1).float())

    def _process(self, k: int, ids: torch.Tensor, stacked: torch.Tensor | None = None) -> None:
        """Signals of the first ``k`` pending steps, or of ``stacked`` (B, k, V) scores given at once;
        ``ids[:, -k:]`` holds their chosen tokens (caller holds the lock)."""
        if k <= 0:
            return
        scores = torch.stack(self._pending[:k], dim=1) if stacked is None else stacked  # (B, k, V)
        logp = torch.log_softmax(scores, dim=-1)
        p = logp.exp()
        entropy = -torch.special.xlogy(p, p).sum(dim=-1)  # (B, k), 0 log 0 = 0
        top = p.topk(min(2, p.shape[-1]), dim=-1).values  # (B, k, 2)
        margin = top[..., 0] - top[..., 1] if top.shape[-1] > 1 else top[..., 0]
        chosen = ids[:, ids.shape[1] - k:]  # (B, k)
        if chosen.device != logp.device:
            chosen = chosen.to(logp.device)
        lp = logp.gather(-1, chosen[..., None])[..., 0]  # (B, k)
        self._done.append(torch.stack([lp, entropy, margin]))  # (3, B, k)
        self._n_done += k
        if stacked is None:
            del self._pending[:k]

    # transformers' LogitsProcessorList calls inspect.signature(processor.__call__) at every step. On a
    # bound method that costs several microseconds per token; the instance's own ``__call__`` attribute
    # (set in __init__, read by that lookup only: calling the recorder still uses the class's method) is
    # a plain function carrying its signature, which inspect returns at once.
    _SIGNATURE = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                                    for n in ("input_ids", "scores")])

    @property
    def num_steps(self) -> int:
        with self._lock:
            return self._n_done + len(self._pending)

    def _stacked(self, n: int | None) -> np.ndarray:
        """(3, B, n) float64 on the CPU of the processed steps (one transfer)."""
        out = torch.cat(self._done, dim=-1) if len(self._done) > 1 else self._done[0]
        if n is not None:
            out = out[..., :n]
        out = out.double()
        return (out if out.device.type == "cpu" else out.cpu()).numpy()

    def prefix(self, n: int) -> TokenSignalsResult:
        """The first ``n`` steps of row 0 while generation may still run (a stream's closed claim):
        only steps whose chosen token is already recorded (``n`` at most the steps done minus one).
        One copy to the CPU per call, never per token."""
        with torch.no_grad(), self._lock:
            if self._pending and self._input_ids is not None:
                self._process(len(self._pending) - 1, self._input_ids)
            n = min(n, self._n_done)
            if n <= 0:
                empty = np.zeros((1, 0))
                return TokenSignalsResult(empty, empty, empty)
            lp, ent, margin = self._stacked(n)[:, :1]
        return TokenSignalsResult(lp, ent, margin)

    def result(self, sequences: torch.Tensor) -> TokenSignalsResult:
        """Stack the steps (one copy to the CPU); ``sequences`` (B, S) gives the last steps' tokens."""
        lp, ent, margin = self.stacked(sequences)
        return TokenSignalsResult(lp, ent, margin)

    def stacked(self, sequences: torch.Tensor) -> np.ndarray:
        """:meth:`result` as one ``(3, B, T)`` float64 array: the chosen tokens' log-probabilities, the
        entropies and the margins."""
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self.stacked(sequences)
        with self._lock:
            if self._pending:
                self._process(len(self._pending), sequences)
            self._input_ids = None
            if not self._done:
                return np.zeros((3, sequences.shape[0], 0))
            return self._stacked(None)
