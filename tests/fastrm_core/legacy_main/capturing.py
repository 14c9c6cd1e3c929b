"""FROZEN COPY of main's code before #16 (commit d047df1), the reference of test_llava_unchanged.py. Do not edit."""
# ruff: noqa
"""Per-token capture of FastRM maps during ``model.generate``.

One forward hook on the language model's final norm sees the last hidden states of
every decoding step; a pre-hook on the VLM's forward sees that step's ``input_ids``.
At prefill the image tokens' states become the proxy's keys (computed once); at every
step the last position's state (the one that predicts the next token) becomes a query,
so each generated token gets its map while it is being generated::

    with capture(model, proxy) as cap:
        out = model.generate(**inputs, max_new_tokens=20)
    cap.maps            # (B, T, rows, cols) probabilities, T = number of generated tokens

No ``output_hidden_states``/``output_attentions``, no gradients: per token the extra
cost is one LayerNorm, one D x d projection and N_img dot products. Works with
``TextIteratorStreamer`` (the map of a token exists before the token is streamed; use
``on_token`` or read ``cap.maps`` from the streaming thread). Hooks are removed on
exit, also on error.
"""


import contextlib
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from fastrm_core.adapters import VLMAdapter, get_adapter
from fastrm_common.errors import CaptureError, InputError
from fastrm_core.proxy import FastRMProxy



# --- frozen from main before #16: one unpadded row and the one-image layout of LLaVA-1.5 ---------
def unpad_row(inputs: dict, b: int):
    ids = inputs["input_ids"][b]
    mask = inputs.get("attention_mask")
    if mask is not None:
        ids = ids[mask[b].bool()]
    extra = {}
    for key, value in inputs.items():
        if key in {"input_ids", "attention_mask"}:
            continue
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == inputs["input_ids"].shape[0]:
            extra[key] = value[b : b + 1]
        else:
            extra[key] = value
    return ids, extra


class _Layout:
    def __init__(self, positions, grid, offset):
        self.positions, self.grid, self.offset = positions, grid, offset

    @property
    def patch_positions(self):
        return self.positions[self.offset :]


def _legacy_grid(adapter):
    vc = adapter.model.config.vision_config
    side = int(vc.image_size) // int(vc.patch_size)
    return (side, side)


def _legacy_layout(adapter, input_ids):
    cfg = adapter.model.config
    offset = 1 if cfg.vision_feature_select_strategy == "full" else 0
    image_id = int(getattr(cfg, "image_token_id", None) or cfg.image_token_index)
    positions = (input_ids == image_id).nonzero(as_tuple=True)[0]
    grid = _legacy_grid(adapter)
    assert positions.numel() == grid[0] * grid[1] + offset
    return _Layout(positions, grid, offset)


__all__ = ["Capture", "capture"]

OnToken = Callable[[int, torch.Tensor], None]


@dataclass
class Capture:
    """What one :func:`capture` block recorded. Filled step by step during generation.

    Attributes:
        grid: (rows, cols) of the patch grid.
        steps: list of per-step probabilities, each (B, rows, cols) float32 on the model's device.
        image_states: (B, N_img, D) last hidden states of the image patches (only with ``keep_states``).
        token_states: list of per-step (B, D) last hidden states of the predicting positions (``keep_states``).
        prompt_features: (B, 3 D) float32 on the model's device, set at prefill: the mean last hidden
            state of the image tokens, that of the other (non-padding) prompt tokens, and the state
            of the position predicting the first answer token; input-novelty scores read them.
    """

    grid: tuple[int, int]
    steps: list[torch.Tensor] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)
    image_states: torch.Tensor | None = None
    token_states: list[torch.Tensor] = field(default_factory=list)
    prompt_ids: torch.Tensor | None = None
    prompt_features: torch.Tensor | None = None
    _keys: torch.Tensor | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def num_steps(self) -> int:
        """Number of generated tokens seen so far."""
        return len(self.steps)

    @property
    def maps(self) -> torch.Tensor:
        """(B, T, rows, cols) per-token probabilities, float32, on the CPU.

        Raises :class:`CaptureError` when nothing was captured or a map is not finite (NaN hidden
        states during generation: checked here, once, rather than with a device sync per token).
        """
        with self._lock:
            if not self.steps:
                raise CaptureError("no generation step was captured (was model.generate called inside the block?)")
            maps = torch.stack(self.steps, dim=1).cpu()
        bad = (~torch.isfinite(maps)).flatten(2).any(-1).any(0)  # (T,)
        if bool(bad.any()):
            raise CaptureError(f"non-finite last hidden state at generation step {int(bad.nonzero()[0])}")
        return maps

    @property
    def patch_logits(self) -> torch.Tensor:
        """(B, T, N_img) the proxy's pre-sigmoid logits, float32, on the CPU."""
        with self._lock:
            return torch.stack(self.logits, dim=1).cpu()

    @property
    def queries(self) -> torch.Tensor:
        """(B, T, D) hidden states of the predicting positions (``keep_states=True`` only)."""
        if not self.token_states:
            raise CaptureError("token states were not kept: use capture(..., keep_states=True)")
        return torch.stack(self.token_states, dim=1)

    @property
    def features(self) -> "np.ndarray":
        """(B, 3 D) float64 pooled prompt states on the CPU (see ``prompt_features``)."""
        if self.prompt_features is None:
            raise CaptureError("no prefill was captured (was model.generate called inside the block?)")
        return self.prompt_features.double().cpu().numpy()

    def map(self, step: int, row: int = 0) -> torch.Tensor:
        """(rows, cols) map of generated token ``step`` of batch row ``row``, on the CPU."""
        return self.steps[step][row].cpu()


@contextlib.contextmanager
def capture(
    model: nn.Module,
    proxy: FastRMProxy | None = None,
    *,
    keep_states: bool = False,
    on_token: OnToken | None = None,
    thread: str | int | None = None,
    adapter: VLMAdapter | None = None,
) -> Iterator[Capture]:
    """Capture FastRM maps (and optionally last hidden states) for every generated token.

    Args:
        model: a supported VLM (see :func:`fastrm_core.adapters.list_adapters`).
        proxy: the FastRM proxy; ``None`` records states only (needs ``keep_states=True``).
            It must match the model (hidden size, image tokens, grid), else
            :class:`~fastrm_common.errors.ConfigMismatchError` before anything is hooked.
        keep_states: also keep the image tokens' states (B, N_img, D) and each predicting
            position's state (B, D) on the CPU, in the model's dtype (for dataset building).
        on_token: called as ``on_token(step, probs)`` with probs (B, rows, cols) (on the model's
            device) as soon as a step's map exists (before the token is sampled and streamed).
        thread: ``None`` records forwards from any thread; ``"current"`` (or a thread ident)
            only those of that thread, so an unguarded ``generate`` running concurrently on the
            same model in another thread is ignored.

    Yields:
        A :class:`Capture` that fills while ``model.generate`` runs inside the block.
    """
    adapter = adapter or get_adapter(model)
    if proxy is None and not keep_states:
        raise InputError("capture needs a proxy, or keep_states=True to record hidden states only")
    if proxy is not None:
        proxy.check_compatible(adapter)
        ref = next(adapter.final_norm.parameters(), None)  # for a sharded model, the last shard's device
        if ref is not None and next(proxy.parameters()).device != ref.device:
            raise InputError(f"the proxy is on {next(proxy.parameters()).device} but the model on {ref.device}: move it first")
    owner = threading.get_ident() if thread == "current" else thread
    cap = Capture(grid=_legacy_grid(adapter))
    step_ids: dict[str, torch.Tensor | None] = {"ids": None, "mask": None}

    def mine() -> bool:
        return owner is None or threading.get_ident() == owner

    def before_forward(module, args, kwargs):
        if mine():
            ids = kwargs.get("input_ids", args[0] if args else None)
            step_ids["ids"] = ids
            step_ids["mask"] = kwargs.get("attention_mask")

    def after_norm(module, args, output):
        if not mine():
            return
        hidden = output[0] if isinstance(output, tuple) else output  # (B, S, D)
        ids = step_ids["ids"]
        last = hidden[:, -1]  # (B, D): the position that predicts the next token
        with torch.no_grad():
            if cap.prompt_ids is None:
                _prefill(ids, hidden)
            elif ids is not None and bool((ids == adapter.image_token_id).any()):
                raise CaptureError("a second prompt reached the model inside one capture block: use one block per generate call")
            _step(last)

    def _prefill(ids: torch.Tensor | None, hidden: torch.Tensor) -> None:
        if ids is None:
            raise CaptureError("the prefill step got no input_ids: capture needs input_ids to find the image tokens")
        layouts = [_legacy_layout(adapter, r) for r in ids]  # one image per row
        positions = torch.stack([lay.patch_positions for lay in layouts])  # (B, N_img)
        index = positions.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1])
        image_states = torch.gather(hidden, 1, index)  # (B, N_img, D)
        if not torch.isfinite(image_states).all():
            raise CaptureError("non-finite hidden states on the image tokens at prefill")
        cap.prompt_ids = ids.detach().cpu()
        cap.prompt_features = _pool(ids, hidden, positions.to(hidden.device), image_states)
        if keep_states:
            cap.image_states = image_states.detach().cpu()
        if proxy is not None:
            cap._keys = proxy.image_keys(image_states)  # (B, N_img, d), computed once

    def _pool(ids, hidden, positions, image_states) -> torch.Tensor:
        # stays on the device, computed once per call: (B, 3 D)
        mask = step_ids["mask"]
        text = torch.ones(ids.shape, dtype=torch.bool, device=hidden.device) if mask is None else mask.to(hidden.device).bool()
        text = text.scatter(1, positions, False)  # (B, S) prompt tokens that are not image patches
        w = text.to(torch.float32)[..., None]  # (B, S, 1)
        text_mean = (hidden.float() * w).sum(1) / w.sum(1).clamp(min=1.0)  # (B, D)
        return torch.cat([image_states.float().mean(1), text_mean, hidden[:, -1].float()], dim=-1)

    def _step(last: torch.Tensor) -> None:
        if keep_states:
            cap.token_states.append(last.detach().cpu())
        if proxy is None:
            return
        # stays on the model's device: no host sync per token (the finiteness check runs in Capture.maps)
        logits = proxy.token_logits(last[:, None], cap._keys)[:, 0].float()  # (B, N_img)
        probs = torch.sigmoid(logits).reshape(-1, *cap.grid)  # (B, rows, cols)
        with cap._lock:
            cap.logits.append(logits)
            cap.steps.append(probs)
        if on_token is not None:
            on_token(cap.num_steps - 1, probs)

    handles = []
    try:
        handles.append(model.register_forward_pre_hook(before_forward, with_kwargs=True))
        handles.append(adapter.final_norm.register_forward_hook(after_norm))
        yield cap
    finally:
        for h in handles:
            h.remove()
        cap._keys = None
