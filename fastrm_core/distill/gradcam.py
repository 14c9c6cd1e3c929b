"""Grad-CAM on the language model's image tokens: a cheaper gradient baseline for comparison.

For a generated token t predicted at position p, with y its pre-softmax logit, and
H (N_img, D) the hidden states of the image tokens at the output of decoder layer l::

    alpha = mean_j dy/dH_j            # (D,) channel weights (Grad-CAM's pooled gradients)
    cam_j = ReLU(H_j . alpha)         # (N_img,)

With several image regions (several pictures, or a base and a high-resolution view) each region
is its own feature map: alpha is pooled over the region's tokens. Maps are flat over the
regions' positions (:meth:`fastrm_core.adapters.VLMAdapter.regions`), like every relevancy map.

The layer must not be the last one: the last layer's outputs at the image positions do not
reach position p's logits (only position p's own last state does), so their gradient is zero.
The default is the middle layer, ``(L - 1) // 2``.

Like :mod:`fastrm_core.relevancy`, the model is left as it was found: ``requires_grad`` flags,
train/eval mode and hooks are restored even on error; no parameter gradient is accumulated.
"""

from __future__ import annotations

import torch
from torch import nn

from fastrm_core.adapters import VLMAdapter, get_adapter
from fastrm_common.errors import InputError, RelevancyError
from fastrm_core.regions import flat_positions
from fastrm_core.sequences import split_generated

__all__ = ["default_gradcam_layer", "gradcam_maps"]


def default_gradcam_layer(n_layers: int) -> int:
    """The middle decoder layer ``(L - 1) // 2`` (0 for a 2-layer model, 15 for LLaVA-1.5-7B)."""
    return max(0, (n_layers - 1) // 2)


def gradcam_maps(
    model: nn.Module,
    inputs: dict,
    generated_ids: torch.Tensor,
    *,
    layer: int | None = None,
    tokens: torch.Tensor | None = None,
    adapter: VLMAdapter | None = None,
) -> torch.Tensor:
    """Grad-CAM maps of the generated tokens of ONE sequence, (T, N_img) float32 on the CPU, flat over
    the sequence's image regions (``maps.reshape(T, rows, cols)`` for a single-region model such as LLaVA-1.5).

    Args:
        inputs: the processor output of one prompt (batch 1, no padding).
        generated_ids: (T,) or (1, T) the new tokens (or the full ``generate`` output row).
        layer: decoder layer whose output is explained (negative counts from the end);
            default :func:`default_gradcam_layer`.
        tokens: indices of the tokens to explain (default all); the others' maps are zero.
    """
    adapter = adapter or get_adapter(model)
    if inputs["input_ids"].shape[0] != 1:
        raise InputError("gradcam_maps explains one sequence at a time")
    prompt = adapter.row_inputs(inputs, 0)
    ids = prompt["input_ids"][0]
    gen = split_generated(inputs["input_ids"][0], generated_ids.reshape(-1), adapter.stop_token_ids())
    layers = adapter.decoder_layers
    n_layers = len(layers)
    layer = default_gradcam_layer(n_layers) if layer is None else layer
    if layer < 0:
        layer += n_layers
    if not 0 <= layer < n_layers - 1:
        raise InputError(
            f"gradcam layer must be in [0, {n_layers - 2}] (or negative, not the last layer) for this "
            f"{n_layers}-layer model, got {layer}"
        )
    regions = adapter.regions(prompt)
    device = ids.device
    patch_pos = flat_positions(regions).to(device)  # (N_img,)
    bounds = torch.tensor([0] + [r.size for r in regions]).cumsum(0).tolist()  # region k: [bounds[k], bounds[k+1])
    replay = adapter.extend_inputs(prompt, gen[:-1])  # (1, N)
    prompt_len = ids.numel()
    positions = torch.arange(prompt_len - 1, prompt_len - 1 + gen.numel(), device=device)  # (T,)
    which = torch.arange(gen.numel()) if tokens is None else torch.as_tensor(tokens).reshape(-1)

    captured: dict[str, torch.Tensor] = {}

    def leaf_output(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        leaf = hidden.detach().requires_grad_(True)  # the graph starts here: no grads below layer l
        captured["h"] = leaf
        return (leaf, *output[1:]) if isinstance(output, tuple) else leaf

    old_training = model.training
    old_flags = [(p, p.requires_grad) for p in model.parameters()]
    handle = layers[layer].register_forward_hook(leaf_output)
    state = [(obj, name, getattr(obj, name, None)) for obj, name in adapter.generation_state()]
    try:
        model.eval()
        for p, _ in old_flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            out = model(**replay, use_cache=False)
            logits = out.logits[0]  # (N, V)
            ys = logits[positions, gen.to(device)]  # (T,)
            if not torch.isfinite(ys).all():
                raise RelevancyError("the model produced non-finite logits for this sequence")
            h = captured["h"]
            maps = torch.zeros(gen.numel(), patch_pos.numel(), dtype=torch.float32)  # (T, N_img)
            acts = h[0, patch_pos].detach().float()  # (N_img, D)
            for i in which.tolist():
                (grad,) = torch.autograd.grad(ys[i], h, retain_graph=True)
                g = grad[0, patch_pos].float()  # (N_img, D)
                for lo, hi in zip(bounds[:-1], bounds[1:]):
                    alpha = g[lo:hi].mean(dim=0)  # (D,) pooled over one region
                    maps[i, lo:hi] = torch.relu(acts[lo:hi] @ alpha).cpu()
    finally:
        handle.remove()
        for p, flag in old_flags:
            p.requires_grad_(flag)
        model.train(old_training)
        for obj, name, value in state:
            setattr(obj, name, value)
    return maps
