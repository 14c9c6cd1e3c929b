"""Token-level language signals gathered during the one ``model.generate`` the Guard runs.

:class:`TokenSignals` is a ``transformers`` logits processor that returns the scores
unchanged (the same tokens are generated with or without it) and, per step, keeps three
``(B,)`` tensors on the model's device:

- the entropy of the next-token distribution, ``-sum p log p`` (nats);
- the margin between its two most likely tokens, ``p1 - p2``;
- the log-probability of the token chosen at the previous step (read from ``input_ids``
  at the next call, or from the final sequences for the last step).

No host sync per token (no ``.item()``, no copy to the CPU inside the loop) and no
``output_scores``: only one ``(B, V)`` log-probability buffer is alive at a time, the one
of the latest step. :meth:`TokenSignals.result` stacks everything once, at the end.
The distribution is the one the token is drawn from: after the generation config's own
processors (temperature, top-k, ... when sampling), before none of them for greedy decoding.
"""

from __future__ import annotations

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

    def __init__(self) -> None:
        self._entropy: list[torch.Tensor] = []
        self._margin: list[torch.Tensor] = []
        self._chosen: list[torch.Tensor] = []
        self._last_logp: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        with torch.no_grad():
            logp = torch.log_softmax(scores.float(), dim=-1)  # (B, V)
            if self._last_logp is not None:  # the previous step's token is now the last input id
                self._chosen.append(self._last_logp.gather(1, input_ids[:, -1:].to(logp.device))[:, 0])  # (B,)
            p = logp.exp()
            self._entropy.append(-torch.special.xlogy(p, p).sum(dim=-1))  # (B,), 0 log 0 = 0
            top = p.topk(min(2, p.shape[-1]), dim=-1).values  # (B, 2)
            self._margin.append(top[:, 0] - top[:, 1] if top.shape[-1] > 1 else top[:, 0])
            self._last_logp = logp
        return scores

    @property
    def num_steps(self) -> int:
        return len(self._entropy)

    def prefix(self, n: int) -> TokenSignalsResult:
        """The first ``n`` steps of row 0 while generation may still run (a stream's closed claim):
        only steps whose chosen token is already recorded (``n`` at most the steps done minus one).
        One copy to the CPU per call, never per token."""
        n = min(n, len(self._chosen), len(self._entropy))
        if n <= 0:
            empty = np.zeros((1, 0))
            return TokenSignalsResult(empty, empty, empty)
        stacked = torch.stack([torch.stack(self._chosen[:n], 1), torch.stack(self._entropy[:n], 1),
                               torch.stack(self._margin[:n], 1)])
        lp, ent, margin = stacked[:, :1].double().cpu().numpy()
        return TokenSignalsResult(lp, ent, margin)

    def result(self, sequences: torch.Tensor) -> TokenSignalsResult:
        """Stack the steps (one copy to the CPU); ``sequences`` (B, S) gives the last step's token."""
        if self._last_logp is None:
            empty = np.zeros((sequences.shape[0], 0))
            return TokenSignalsResult(empty, empty, empty)
        chosen = [*self._chosen, self._last_logp.gather(1, sequences[:, -1:].to(self._last_logp.device))[:, 0]]
        stacked = torch.stack([torch.stack(chosen, 1), torch.stack(self._entropy, 1), torch.stack(self._margin, 1)])
        lp, ent, margin = stacked.double().cpu().numpy()  # (3, B, T): one transfer
        self._last_logp = None
        return TokenSignalsResult(lp, ent, margin)
