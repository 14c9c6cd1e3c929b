"""Frozen copy of shapesvqa/grounding.py's own pointing game and gradient relevancy as they were before
ShapesVQA switched to fastrm_core's (commit 267fe69), kept only so that
tests/shapesvqa/test_grounding_core.py can prove the switch changed no reported number. Do not use elsewhere."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch


def pointing(rel_map: np.ndarray, target: np.ndarray, others: np.ndarray) -> dict:
    """Pointing-game figures of one map.

    ``rel_map``: (g, g) non-negative relevancy; ``target``: (g, g) bool patches of the queried
    object; ``others``: (g, g) bool patches of every other object. Returns ``hit`` (argmax on the
    target), ``on_other`` (argmax on another object and not on the target), ``chance`` (target's
    share of patches) and ``mass`` (share of the map's total mass on the target).
    """
    flat = rel_map.reshape(-1)
    i = int(flat.argmax())
    hit = bool(target.reshape(-1)[i])
    total = float(np.clip(flat, 0, None).sum())
    mass = float(np.clip(flat, 0, None)[target.reshape(-1)].sum() / total) if total > 0 else 0.0
    return {
        "hit": hit,
        "on_other": bool(others.reshape(-1)[i]) and not hit,
        "chance": float(target.mean()),
        "mass": mass,
    }


@contextmanager
def _eager_attention_capture(model):
    """Capture every language-model attention probability tensor (kept in the graph, grad retained)."""
    lm = model.model.language_model
    saved = []
    handles = []
    prev_impl = model.config._attn_implementation

    def hook(_module, _args, output):
        attn = output[1]  # (B, H, N, N)
        attn.retain_grad()
        saved.append(attn)

    try:
        if prev_impl != "eager":
            model.set_attn_implementation("eager")
        for layer in lm.layers:
            handles.append(layer.self_attn.register_forward_hook(hook))
        yield saved
    finally:
        for h in handles:
            h.remove()
        if prev_impl != "eager":
            model.set_attn_implementation(prev_impl)


def gradient_relevancy_rows(
    model,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """Chefer relevancy row of the token ``targets[b]`` predicted at position ``positions[b]``.

    ``input_ids``: (B, N) the sequence up to at least each position; ``positions``: (B,) long;
    ``targets``: (B,) long token ids whose pre-softmax logit is explained. Returns (B, N) float: row
    p of R_L for each example (image positions are where ``input_ids == image_token_id``).
    Examples are independent, so one backward of the summed logits gives every example's gradients.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), _eager_attention_capture(model) as attns:
            out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
            b = torch.arange(input_ids.shape[0], device=input_ids.device)
            y = out.logits[b, positions, targets].sum()
            model.zero_grad(set_to_none=True)
            y.backward()
            N = input_ids.shape[1]
            v = torch.zeros(input_ids.shape[0], N, device=input_ids.device)
            v[b, positions] = 1.0  # (B, N) = e_p
            for attn in reversed(attns):
                a_bar = (attn.grad * attn).clamp(min=0).mean(dim=1).detach()  # (B, N, N)
                v = v + torch.bmm(v.unsqueeze(1), a_bar).squeeze(1)
        model.zero_grad(set_to_none=True)
        return v
    finally:
        model.train(was_training)
