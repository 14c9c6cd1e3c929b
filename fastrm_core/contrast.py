"""How much an answer depends on its image: one teacher-forced pass with the image's evidence removed.

:func:`imageless_logprobs` re-reads a finished generation (prompt and answer) in one forward
pass in which every image region's tokens enter the first decoder layer as the region's mean
(all positions of a picture carry the same vector: the model still "sees an image", but nothing
in it has a place, a colour or a shape of its own) and returns each answer token's
log-probability under that pass. Beside the log-probabilities the generation recorded, the
difference ``log p(token | image) - log p(token | image removed)`` is the *visual contrast*
of the token: large when the picture made the token likely, near zero (or negative) when the
language prior alone writes it, as for an object "seen" because its usual partner is there.

The choice (the region's mean rather than a blurred or grey picture) needs no second pass
through the vision tower's preprocessing and is the same for every family: the adapter's
regions say where the image tokens are. Cost: one forward over prompt + answer with no cache
(about one prefill), run after ``generate``; the model, its hooks and its caches are left as
found (``use_cache=False``, the hook removed also on error). The inputs are built by the model's
own ``prepare_inputs_for_generation`` (left padding and multimodal positions as ``generate``
builds them); per-position integer inputs of the prompt (token types) are extended with 0, text,
over the answer.
"""

from __future__ import annotations

from typing import Any

import torch

from fastrm_common.errors import CaptureError, InputError
from fastrm_core.adapters import VLMAdapter, get_adapter

__all__ = ["imageless_logprobs"]


def imageless_logprobs(model: Any, inputs: dict, sequences: torch.Tensor, *, adapter: VLMAdapter | None = None,
                       remove_image: bool = True) -> torch.Tensor:
    """Each generated token's log-probability with the image's evidence removed: (B, T) float32.

    Args:
        model: the VLM that generated ``sequences``.
        inputs: the processor's batch given to ``generate`` (``input_ids`` (B, S), ``attention_mask``,
            pixel values and whatever else the family needs).
        sequences: (B, S + T) what ``generate`` returned for ``inputs`` (prompt then answer tokens;
            tokens after a row's end of sequence are scored too and should be ignored).
        adapter: the model's adapter (looked up when omitted).
        remove_image: False scores the same pass with the image left in (the generation's own
            log-probabilities, up to float rounding: what the tests compare against).

    Returns:
        (B, T) on the model's device; ``T = sequences.shape[1] - S`` (0 columns when nothing was generated).
    """
    adapter = adapter or get_adapter(model)
    ids = inputs.get("input_ids") if hasattr(inputs, "get") else None
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise InputError("inputs must be the processor's batch given to generate, with input_ids (B, S)")
    if not isinstance(sequences, torch.Tensor) or sequences.is_floating_point() or sequences.dim() != 2:
        got = type(sequences).__name__ if not isinstance(sequences, torch.Tensor) else f"a {sequences.dtype} tensor"
        raise InputError(f"sequences must be the (B, S + T) token ids generate returned (prompt, then answer), got {got}"
                         + (" (pass out.sequences of return_dict_in_generate)" if hasattr(sequences, "sequences") else ""))
    n_prompt = ids.shape[1]
    if (sequences.shape[0] != ids.shape[0] or sequences.shape[1] < n_prompt
            or not torch.equal(sequences[:, :n_prompt].to(ids.device), ids)):
        raise InputError(f"sequences {tuple(sequences.shape)} do not continue the prompt {tuple(ids.shape)}: pass what "
                         "generate returned for these inputs (prompt then answer), not the answer alone")
    if not any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in inputs.values()):
        raise InputError("inputs carry no pixel values: pass the processor's whole batch (the image is needed)")
    n_new = sequences.shape[1] - n_prompt
    if n_new == 0:
        return torch.zeros(ids.shape[0], 0, device=sequences.device)
    regions = adapter.batch_regions(inputs) if remove_image else []
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    full_mask = torch.cat([mask, torch.ones(mask.shape[0], n_new, dtype=mask.dtype, device=mask.device)], dim=1)
    seen = {"n": 0}

    def flatten_images(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen["n"] += 1
        if hidden.shape[1] != sequences.shape[1]:
            raise CaptureError(f"the image-free pass saw {hidden.shape[1]} positions, expected {sequences.shape[1]}")
        hidden = hidden.clone()
        for b, row in enumerate(regions):
            for region in row:
                pos = region.positions.to(device=hidden.device, dtype=torch.long)
                hidden[b, pos] = hidden[b, pos].mean(dim=0, keepdim=True)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    extra = {}
    for k, v in inputs.items():  # per-position inputs (token types, ...) grow by the answer's text positions (0)
        if k in ("input_ids", "attention_mask"):
            continue
        if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape == ids.shape and not v.is_floating_point():
            v = torch.cat([v, torch.zeros(v.shape[0], n_new, dtype=v.dtype, device=v.device)], dim=1)
        extra[k] = v
    handle = adapter.decoder_layers[0].register_forward_pre_hook(flatten_images, with_kwargs=True)
    try:
        with torch.no_grad():
            prepared = model.prepare_inputs_for_generation(sequences, attention_mask=full_mask, use_cache=False,
                                                           is_first_iteration=True, **extra)
            prepared.pop("cache", None)
            prepared.pop("past_key_values", None)
            logits = model(**{**prepared, "use_cache": False}).logits  # (B, S + T, V)
    finally:
        handle.remove()
    if seen["n"] != 1:
        raise CaptureError(f"the image-free pass ran the first decoder layer {seen['n']} times, expected once")
    with torch.no_grad():
        logp = torch.log_softmax(logits[:, n_prompt - 1: -1].float(), dim=-1)  # (B, T, V): positions predicting each token
        return logp.gather(-1, sequences[:, n_prompt:, None].to(logp.device))[..., 0]
