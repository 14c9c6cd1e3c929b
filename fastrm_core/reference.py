"""The naive reference the exact relevancy maps are proven against (tests of every family use it).

Chefer et al.'s recipe, literally and slowly: for every generated token t, one forward over the
prompt and the tokens before t with full attention matrices, one backward from t's pre-softmax
logit, then R <- R + Ā_l R over full N x N matrices in float64. Nothing is shared with
:mod:`fastrm_core.relevancy` but the model, so agreement means something.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["naive_rows"]


def naive_rows(model: nn.Module, prompt_ids: torch.Tensor, gen: torch.Tensor,
               extra: dict | Callable[[int], dict] | None = None) -> list[torch.Tensor]:
    """Each generated token's full relevancy row: a list of T float64 tensors, token t's of length S + t.

    Args:
        model: the VLM (its text sub-config is switched to eager attention for the call, then restored).
        prompt_ids: (S,) one unpadded prompt.
        gen: (T,) the generated tokens.
        extra: the other forward kwargs (``pixel_values``, ``image_sizes`` ...), or a function of the
            number t of generated tokens in the prefix returning them, for per-token inputs such as
            ``token_type_ids`` that grow with the prefix.
    """
    rows = []
    text_cfg = model.config.get_text_config()
    old = text_cfg._attn_implementation
    model.set_attn_implementation({"text_config": "eager"})
    try:
        for t in range(gen.numel()):
            prefix = torch.cat([prompt_ids, gen[:t].to(prompt_ids.device)])[None]
            kwargs = extra(t) if callable(extra) else dict(extra or {})
            with torch.enable_grad():
                out = model(input_ids=prefix, output_attentions=True, use_cache=False, **kwargs)
                y = out.logits[0, -1, gen[t]]
                attns = out.attentions
                if not attns or len(attns) != text_cfg.num_hidden_layers or any(a is None for a in attns):
                    raise RuntimeError(f"the model returned {len(attns or ())} attention maps for "
                                       f"{text_cfg.num_hidden_layers} language-model layers")
                grads = torch.autograd.grad(y, attns)
            n = prefix.shape[1]
            r = torch.eye(n, dtype=torch.float64)
            for a, g in zip(attns, grads):
                a_bar = (g.detach().double() * a.detach().double()).clamp_min(0).mean(dim=1)[0]  # (n, n)
                r = r + a_bar @ r
            rows.append(r[-1])
    finally:
        model.set_attn_implementation({"text_config": old})
    return rows
