"""Per-token capture of FastRM maps during ``model.generate``.

The language model's final norm is tapped (:class:`OutputTap`: a wrapper on its ``forward``, or a
forward hook when the norm already has hooks) to see the last hidden states of every decoding
step; a pre-hook on the VLM's forward sees the prefill's ``input_ids``.
At prefill the image tokens' states become the proxy's keys (computed once); at every
step the last position's state (the one that predicts the next token) becomes a query,
so each generated token gets its map while it is being generated::

    with capture(model, proxy) as cap:
        out = model.generate(**inputs, max_new_tokens=20)
    cap.row_maps(0)     # (T, N_img) probabilities of row 0, flat over its image regions
    cap.regions[0]      # those regions (image index, kind, positions, grid)
    cap.maps            # (B, T, rows, cols) when every row has one region of one grid (LLaVA-1.5)

No ``output_hidden_states``/``output_attentions``, no gradients. Per token the hooks only
keep the predicting state (a reference, on the model's device); the proxy's LayerNorm,
D x d projection and N_img dot products run batched over every pending token when a map
is first read (``cap.maps``, ``cap.map(step)``, ...) or when the block closes, so the
per-token cost inside ``generate`` is a list append, with no host sync. Works with
``TextIteratorStreamer``: ``on_token`` gets each token's map as soon as it exists (then
the proxy runs per step, before the token is sampled), and ``cap.map(step)`` read from
a streaming thread computes the steps seen so far. Hooks are removed on exit, also on
error.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from fastrm_core.adapters import VLMAdapter, get_adapter
from fastrm_common.errors import CaptureError, InputError
from fastrm_core.proxy import FastRMProxy
from fastrm_core.regions import ImageRegion, flat_positions, split_flat

__all__ = ["Capture", "OutputTap", "capture"]

OnToken = Callable[[int, torch.Tensor], None]

_TAP_LOCK = threading.Lock()
_NO_FORWARD = object()  # the module had no instance-level forward before the first tap


class OutputTap:
    """Call ``fn(module, args, output)`` after every call of ``module``, like a forward hook, until
    :meth:`remove`.

    A forward hook sends every call of its module through torch's slower hook path; at one call
    per generated token that is a measurable share of a guarded call on a small model. When the
    module has no forward hook (its own or global), the tap instead wraps the instance's
    ``forward`` (one wrapper per module, shared by every tap on it, removed with the last one), so
    an untapped call costs nothing and a tapped one a Python call. When hooks are present, it
    registers a forward hook after them, since a hook may replace the output and ``fn`` must see what
    the hooks made of it. A hook registered on the module *after* the tap is not seen by it: its
    changes to the output are then invisible to ``fn``.
    """

    def __init__(self, module: nn.Module, fn: Callable[[nn.Module, tuple, object], None]) -> None:
        self.module, self.fn = module, fn
        self._hook = self._wrapper = None
        if getattr(module, "_forward_hooks", None) or getattr(torch.nn.modules.module, "_global_forward_hooks", None):
            self._hook = module.register_forward_hook(fn)
            return
        with _TAP_LOCK:
            wrapper = module.__dict__.get("forward")
            if getattr(wrapper, "_fastrm_taps", None) is None:  # the first tap on this module
                inner = module.forward  # the class's bound forward, or an instance-level one (accelerate)

                def wrapper(*args, **kwargs):
                    out = inner(*args, **kwargs)
                    for tap in wrapper._fastrm_taps:
                        tap(module, args, out)
                    return out

                wrapper._fastrm_taps = ()
                wrapper._fastrm_previous = module.__dict__.get("forward", _NO_FORWARD)
                module.forward = wrapper
            wrapper._fastrm_taps = (*wrapper._fastrm_taps, fn)
            self._wrapper = wrapper

    def remove(self) -> None:
        """Stop calling ``fn`` (idempotent); the last tap on the module restores its ``forward``."""
        if self._hook is not None:
            self._hook.remove()
            return
        with _TAP_LOCK:
            w = self._wrapper
            if w is None:
                return
            self._wrapper = None
            taps = list(w._fastrm_taps)
            taps.remove(self.fn)
            w._fastrm_taps = tuple(taps)
            # restore only our own wrapper: one installed over it since then stays (a pass-through once empty)
            if not taps and self.module.__dict__.get("forward") is w:
                if w._fastrm_previous is _NO_FORWARD:
                    del self.module.forward
                else:
                    self.module.forward = w._fastrm_previous


@dataclass
class Capture:
    """What one :func:`capture` block recorded. Filled step by step during generation.

    Maps are flat over each row's image regions (the regions' positions concatenated, see
    :mod:`fastrm_core.regions`); rows may have different numbers of image tokens (pictures of
    different sizes), so per-step tensors are padded to the longest row, ``lengths[b]`` long.

    Attributes:
        grid: (rows, cols) of the model's fixed grid, or ``None`` for variable-grid families.
        regions: per batch row, its image regions (positions index the padded batch row); set at prefill.
        lengths: per batch row, its number of image tokens N_b.
        steps: list of per-step probabilities, each (B, N_max) float32 on the model's device
            (computed, batched, for the steps not yet mapped when read).
        logits: the same steps' pre-sigmoid logits.
        image_states: (B, N_max, D) last hidden states of the image tokens (only with ``keep_states``;
            rows shorter than N_max are zero-padded: :meth:`row_image_states`), on the CPU.
        token_states: list of per-step (B, D) last hidden states of the predicting positions, on the
            model's device (``keep_states``; :attr:`queries` stacks them on the CPU).
        prompt_features: (B, 5 D) float32 on the model's device, set at prefill: pooled prompt
            states in the layout of :data:`fastrm_common.prompt_features.PROMPT_FEATURE_BLOCKS`
            (image tokens' mean and spread, text tokens' mean, the predicting position's state,
            all after the final norm, and the text tokens' mean entering the first decoder
            layer); input-novelty scores read them.
        times: per step, the wall-clock time (ns since the epoch) at which its predicting state left
            the final norm: when the step's token was about to be picked.
    """

    grid: tuple[int, int] | None = None
    regions: list[list[ImageRegion]] | None = None
    lengths: list[int] = field(default_factory=list)
    image_states: torch.Tensor | None = None
    prompt_ids: torch.Tensor | None = None
    prompt_features: torch.Tensor | None = None
    times: list[int] = field(default_factory=list)
    _states: list[torch.Tensor] = field(default_factory=list, repr=False)  # every step's (B, 1, D) predicting state
    _probs: list[torch.Tensor] = field(default_factory=list, repr=False)  # mapped steps, in (B, P, N_max) blocks
    _block_logits: list[torch.Tensor] = field(default_factory=list, repr=False)  # the same blocks' logits
    _state_blocks: list[torch.Tensor] = field(default_factory=list, repr=False)  # the same blocks' (B, P, D) states
    _n_mapped: int = field(default=0, repr=False)
    _per_step: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)  # (probs, logits)
    _blocks_unbound: int = field(default=0, repr=False)  # blocks already split into _per_step
    _keep_states: bool = field(default=False, repr=False)
    _proxy: FastRMProxy | None = field(default=None, repr=False)
    _keys: torch.Tensor | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def num_steps(self) -> int:
        """Number of generated tokens seen so far."""
        return len(self._states)

    def _flush(self) -> None:
        """Map the steps not mapped yet, in one batched proxy call (caller holds the lock)."""
        pending = self._states[self._n_mapped:]
        if not pending or self._proxy is None or self._keys is None:
            return
        with torch.no_grad():  # grad mode is per thread: a stream's reader thread may call this
            q = pending[0] if len(pending) == 1 else torch.cat(pending, dim=1)  # (B, P, D)
            self._state_blocks.append(q)
            logits = self._proxy.token_logits(q, self._keys).float()  # (B, P, N_max)
            self._block_logits.append(logits)
            self._probs.append(torch.sigmoid(logits))
        self._n_mapped += len(pending)

    def _unbound(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(probs, logits) of each mapped step, each (B, N_max) (caller holds the lock and flushed)."""
        for probs, logits in zip(self._probs[self._blocks_unbound:], self._block_logits[self._blocks_unbound:]):
            self._per_step.extend(zip(probs.unbind(1), logits.unbind(1)))
        self._blocks_unbound = len(self._probs)
        return self._per_step

    def _cat(self, blocks: list[torch.Tensor], n: int | None = None) -> torch.Tensor:
        out = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
        return out if n is None else out[:, :n]

    @property
    def steps(self) -> list[torch.Tensor]:
        """Per-step probabilities, each (B, N_max) float32 on the model's device."""
        with self._lock:
            self._flush()
            return [p for p, _ in self._unbound()]

    @property
    def logits(self) -> list[torch.Tensor]:
        """Per-step pre-sigmoid logits, each (B, N_max) float32 on the model's device."""
        with self._lock:
            self._flush()
            return [lg for _, lg in self._unbound()]

    @property
    def token_states(self) -> list[torch.Tensor]:
        """Per-step (B, D) predicting states on the model's device (``keep_states=True`` only, else empty)."""
        with self._lock:
            return [s[:, 0] for s in self._states] if self._keep_states else []

    def stacked_steps(self, n: int | None = None) -> torch.Tensor | None:
        """(B, T, N_max) the first ``n`` (default all) steps' probabilities on the model's device, or None
        when nothing was mapped: :attr:`steps` in one tensor."""
        with self._lock:
            self._flush()
            return self._cat(self._probs, n) if self._probs else None

    def stacked_states(self, n: int | None = None) -> torch.Tensor | None:
        """(B, T, D) the first ``n`` (default all) predicting states on the model's device (``keep_states``
        only, else None): :attr:`token_states` in one tensor."""
        with self._lock:
            if not self._keep_states or not self._states:
                return None
            if self._n_mapped == len(self._states):  # every state is in a mapped block already
                return self._cat(self._state_blocks, n)
            return self._cat(self._states[:n] if n is not None else self._states)

    def _stacked(self) -> torch.Tensor:
        """(B, T, N_max) every step's probabilities on the CPU, checked finite on the real (unpadded) entries."""
        with self._lock:
            self._flush()
            if not self._probs:
                raise CaptureError("no generation step was captured (was model.generate called inside the block?)")
            maps = self._cat(self._probs).cpu()
        if all(n == maps.shape[-1] for n in self.lengths) and bool(torch.isfinite(maps).all()):
            return maps  # no padding and every value finite: nothing to locate
        bad = torch.zeros(maps.shape[1], dtype=torch.bool)  # (T,)
        for b, n in enumerate(self.lengths):
            bad |= (~torch.isfinite(maps[b, :, :n])).any(-1)
        if bool(bad.any()):
            raise CaptureError(f"non-finite last hidden state at generation step {int(bad.nonzero()[0])}")
        return maps

    def row_maps(self, row: int = 0) -> torch.Tensor:
        """(T, N_row) per-token probabilities of batch row ``row``, flat over ``regions[row]``, on the CPU.

        Raises :class:`CaptureError` when nothing was captured or a map is not finite (NaN hidden
        states during generation: checked here, once, rather than with a device sync per token).
        """
        return self._stacked()[row, :, : self.lengths[row]]

    def maps_2d(self, row: int = 0) -> torch.Tensor:
        """Row ``row``'s maps as 2-D grids: (T, rows, cols) when it has one region, else (T, 1, N_img)
        (every image token in one line, flat over its regions): the shape the Guard, calibration and
        telemetry take, whatever the family. :meth:`region_maps` cuts the line into grids."""
        flat = self.row_maps(row)  # (T, N)
        regions = self.regions[row]
        return flat.reshape(flat.shape[0], *regions[0].grid) if len(regions) == 1 else flat[:, None, :]

    def region_maps(self, row: int = 0) -> list[torch.Tensor]:
        """One (T, rows, cols) map per image region of batch row ``row``."""
        return split_flat(self.row_maps(row), self.regions[row])

    @property
    def flat_maps(self) -> torch.Tensor:
        """(B, T, N_img) per-token probabilities when every row has the same number of image tokens."""
        maps = self._stacked()
        if len(set(self.lengths)) != 1:
            raise CaptureError(f"rows have different numbers of image tokens ({self.lengths}): use row_maps(b)")
        return maps

    @property
    def maps(self) -> torch.Tensor:
        """(B, T, rows, cols) per-token probabilities, float32, on the CPU, when every row has exactly
        one region of the same grid (LLaVA-1.5); :meth:`row_maps` / :meth:`region_maps` otherwise."""
        grids = {tuple(r.grid) for rows in (self.regions or []) for r in rows}
        if self.regions is None or any(len(rows) != 1 for rows in self.regions) or len(grids) != 1:
            if self.regions is None:
                raise CaptureError("no generation step was captured (was model.generate called inside the block?)")
            raise CaptureError("the prompts hold several image regions or grids: use row_maps(b) / region_maps(b)")
        maps = self._stacked()
        return maps.reshape(*maps.shape[:2], *next(iter(grids)))

    @property
    def patch_logits(self) -> torch.Tensor:
        """(B, T, N_max) the proxy's pre-sigmoid logits, float32, on the CPU (row b: the first ``lengths[b]``)."""
        with self._lock:
            self._flush()
            if not self._block_logits:
                raise CaptureError("no generation step was captured (was model.generate called inside the block?)")
            return self._cat(self._block_logits).cpu()

    @property
    def queries(self) -> torch.Tensor:
        """(B, T, D) hidden states of the predicting positions on the CPU (``keep_states=True`` only)."""
        states = self.stacked_states()
        if states is None:
            raise CaptureError("token states were not kept: use capture(..., keep_states=True)")
        return states.cpu()

    def row_image_states(self, row: int = 0) -> torch.Tensor:
        """(N_row, D) last hidden states of row ``row``'s image tokens (``keep_states=True`` only)."""
        if self.image_states is None:
            raise CaptureError("image states were not kept: use capture(..., keep_states=True)")
        return self.image_states[row, : self.lengths[row]]

    @property
    def features(self) -> "np.ndarray":
        """(B, 5 D) float64 pooled prompt states on the CPU (see ``prompt_features``)."""
        if self.prompt_features is None:
            raise CaptureError("no prefill was captured (was model.generate called inside the block?)")
        return self.prompt_features.double().cpu().numpy()

    def map(self, step: int, row: int = 0) -> torch.Tensor:
        """Map of generated token ``step`` of batch row ``row`` on the CPU: (rows, cols) when the row has
        one region, else (N_row,) flat over its regions."""
        with self._lock:
            self._flush()
            probs = self._unbound()[step][0]
        flat = probs[row, : self.lengths[row]].cpu()
        regions = self.regions[row]
        return flat.reshape(regions[0].grid) if len(regions) == 1 else flat


@contextlib.contextmanager
def capture(
    model: nn.Module,
    proxy: FastRMProxy | None = None,
    *,
    keep_states: bool = False,
    on_token: OnToken | None = None,
    thread: str | int | None = None,
    adapter: VLMAdapter | None = None,
    regions: list[list[ImageRegion]] | None = None,
) -> Iterator[Capture]:
    """Capture FastRM maps (and optionally last hidden states) for every generated token.

    Args:
        model: a supported VLM (see :func:`fastrm_core.adapters.list_adapters`).
        proxy: the FastRM proxy; ``None`` records states only (needs ``keep_states=True``).
            It must match the model (hidden size; the grid of a proxy that pins one), else
            :class:`~fastrm_common.errors.ConfigMismatchError` before anything is hooked.
        keep_states: also keep the image tokens' states (B, N_img, D) and each predicting
            position's state (B, D) on the CPU, in the model's dtype (for dataset building).
        on_token: called as ``on_token(step, probs)`` with probs (B, N_max) (on the model's device,
            flat over each row's regions, see :class:`Capture`) as soon as a step's map exists
            (before the token is sampled and streamed).
        thread: ``None`` records forwards from any thread; ``"current"`` (or a thread ident)
            only those of that thread, so an unguarded ``generate`` running concurrently on the
            same model in another thread is ignored.
        regions: each row's image regions (``adapter.batch_regions`` of the inputs given to
            ``generate``) when the caller has them already: the prefill then does not look for them
            again. Checked against the prefill's shape (:class:`CaptureError` when they cannot be its).

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
    given_regions = regions  # the argument under another name: _prefill assigns its own local `regions`
    cap = Capture(grid=adapter.fixed_grid, _keep_states=keep_states, _proxy=proxy)
    step_ids: dict = {"ids": None, "mask": None, "kwargs": None, "input_states": None}

    def mine() -> bool:
        return owner is None or threading.get_ident() == owner

    def before_forward(module, args, kwargs):
        if mine():
            ids = kwargs.get("input_ids", args[0] if args else None)
            step_ids["ids"] = ids
            step_ids["mask"] = kwargs.get("attention_mask")
            step_ids["kwargs"] = kwargs if cap.prompt_ids is None else None  # the prefill's (image sizes ...)

    def before_first_layer(module, args, kwargs):
        # prefill only: the states entering the first decoder layer (the token embeddings), pooled in _pool
        if mine() and cap.prompt_ids is None:
            step_ids["input_states"] = args[0] if args else kwargs.get("hidden_states")

    states, times, get_ident = cap._states, cap.times, threading.get_ident

    def after_norm(module, args, output):
        # runs once per decoding step: kept lean (no helper calls on the decode path)
        if owner is not None and get_ident() != owner:
            return
        times.append(time.time_ns())
        hidden = output[0] if isinstance(output, tuple) else output  # (B, S, D)
        if cap.prompt_ids is not None:  # a decode step
            if hidden.shape[1] > 1:
                # a decode step feeds one token per row: a multi-token input is a second prompt (or a
                # speculative step, whose maps would not line up with the tokens); a shape, no host sync
                raise CaptureError("a second prompt (a multi-token input after the prefill) reached the model inside one "
                                   "capture block: use one block per generate call, one token per step")
            last = hidden.detach() if hidden.requires_grad else hidden  # (B, 1, D): predicts the next token
            if on_token is None:
                states.append(last)  # one atomic append: a reader's flush snapshots the list, takes no lock from us
                return
        else:
            with torch.no_grad():
                _prefill(step_ids["ids"], hidden)
            # the model's input and the first layer's are only needed at prefill (removing twice is harmless)
            first_layer_hook.remove()
            model_hook.remove()
            last = hidden[:, -1:].detach().clone()  # (B, 1, D), not a view that keeps the whole prompt's states alive
        _step(last)

    def _prefill(ids: torch.Tensor | None, hidden: torch.Tensor) -> None:
        if ids is None:
            raise CaptureError("the prefill step got no input_ids: capture needs input_ids to find the image tokens")
        if given_regions is None:
            prefill_kwargs = {k: v for k, v in (step_ids["kwargs"] or {}).items() if k != "input_ids"}
            regions = adapter.batch_regions({**prefill_kwargs, "input_ids": ids})
        else:
            regions = given_regions
            if len(regions) != ids.shape[0] or any(
                    int(r.positions.max()) >= ids.shape[1] for row in regions for r in row if r.positions.numel()):
                raise CaptureError(f"the regions given to capture ({len(regions)} rows) do not fit the prompt "
                                   f"({ids.shape[0]} rows of {ids.shape[1]} tokens)")
        lengths = [sum(r.size for r in row) for row in regions]
        n_max = max(lengths)
        positions = torch.zeros(len(regions), n_max, dtype=torch.long)  # (B, N_max), padded with position 0
        for b, row in enumerate(regions):
            positions[b, : lengths[b]] = flat_positions(row)
        positions = positions.to(hidden.device)
        index = positions[..., None].expand(-1, -1, hidden.shape[-1])
        image_states = torch.gather(hidden, 1, index)  # (B, N_max, D)
        ragged = len(set(lengths)) > 1
        if ragged:
            valid = torch.arange(n_max)[None] < torch.tensor(lengths)[:, None]  # (B, N_max)
            image_states = image_states * valid.to(hidden.device)[..., None].to(image_states.dtype)
        features = _pool(ids, hidden, positions, lengths, image_states, ragged)
        # a non-finite image state makes its mean non-finite: the features tell, in a far smaller check,
        # whether the states themselves need one (a non-finite text state alone is not an error here)
        if not torch.isfinite(features).all() and not torch.isfinite(image_states).all():
            raise CaptureError("non-finite hidden states on the image tokens at prefill")
        cap.regions, cap.lengths = regions, lengths
        cap.prompt_ids = ids.detach().cpu()
        cap.prompt_features = features
        if keep_states:
            cap.image_states = image_states.detach().cpu()
        if proxy is not None:
            cap._keys = proxy.image_keys(image_states)  # (B, N_max, d), computed once

    def _pool(ids, hidden, positions, lengths, image_states, ragged) -> torch.Tensor:
        # stays on the device, computed once per call: (B, 5 D), blocks in PROMPT_FEATURE_BLOCKS' order;
        # positions (B, N_max) the image tokens of each row (its first lengths[b] entries)
        mask = step_ids["mask"]
        text = torch.ones(ids.shape, dtype=torch.bool, device=hidden.device) if mask is None else mask.to(hidden.device).bool()
        for b, n in enumerate(lengths):  # (B, S) prompt tokens that are not image patches
            text[b, positions[b, :n]] = False
        w = text.to(torch.float32)[..., None]  # (B, S, 1)
        n_text = w.sum(1).clamp(min=1.0)  # (B, 1)
        text_mean = (hidden.float() * w).sum(1) / n_text  # (B, D)
        first = step_ids["input_states"]
        step_ids["input_states"] = None
        if first is None or first.shape[:2] != hidden.shape[:2]:
            raise CaptureError("the first decoder layer's input was not seen at prefill (an adapter whose "
                               "decoder_layers are not the ones the model runs?)")
        text_in = (first.float().to(hidden.device) * w).sum(1) / n_text  # (B, D)
        img = image_states.float()  # (B, N_max, D), padded rows zero beyond their length
        if not ragged:
            image_mean, image_std = img.mean(1), img.std(1, correction=0)  # (B, D) each
        else:  # padded rows: the mean and spread over each row's own image tokens
            n_img = torch.tensor(lengths, device=hidden.device, dtype=torch.float32)[:, None]  # (B, 1)
            valid = (torch.arange(img.shape[1], device=hidden.device)[None] < n_img).to(img.dtype)[..., None]
            image_mean = img.sum(1) / n_img
            image_std = (((img - image_mean[:, None]) ** 2 * valid).sum(1) / n_img).sqrt()
        return torch.cat([image_mean, text_mean, hidden[:, -1].float(), image_std, text_in], dim=-1)

    def _step(last: torch.Tensor) -> None:
        # stays on the model's device: no host sync per token (the finiteness check runs in Capture.maps);
        # the proxy runs batched when the maps are read, or now for an on_token callback
        with cap._lock:
            cap._states.append(last)
            if on_token is None:
                return
            cap._flush()
            probs = cap._probs[-1][:, -1]
        on_token(cap._n_mapped - 1, probs)

    handles = []
    try:
        model_hook = model.register_forward_pre_hook(before_forward, with_kwargs=True)
        handles.append(model_hook)
        first_layer_hook = adapter.decoder_layers[0].register_forward_pre_hook(before_first_layer, with_kwargs=True)
        handles.append(first_layer_hook)
        handles.append(OutputTap(adapter.final_norm, after_norm))
        yield cap
        with cap._lock:
            cap._flush()  # the maps exist once the block closes
    finally:
        for h in handles:
            h.remove()
        cap._keys = None
