"""Exact gradient relevancy maps (Chefer et al. 2021) for decoder-only VLMs.

For a generated token t predicted at position p, with y its pre-softmax logit and,
per language-model layer l, A_l (H, N, N) the attention probabilities and
G_l = dy/dA_l::

    Ā_l = mean_heads(clamp(G_l * A_l, min=0))             # (N, N), clamped per head as in Chefer's code
    R_L = (I + Ā_L) ... (I + Ā_1)                           # Chefer's R_l = R_{l-1} + Ā_l R_{l-1}
    map_t = R_L[p, image positions]  -> (rows, cols)

Only row p is needed, so :func:`gradient_relevancy` propagates the row vector
v = e_p through v <- v + v Ā_l for l = L..1: O(L N^2) per token instead of O(L N^3).
One forward over the whole generated sequence gives every A_l (causal masking makes
rows <= p equal to what step t saw during generation) and the backward passes for a
chunk of tokens are batched (``torch.func``-style ``is_grads_batched``).

:func:`per_step_relevancy` computes the same maps, exactly, during generation and the
costly way: each step's attentions kept in the autograd graph, one backward per step, full
N x N matrices. It is our naive per-step implementation of Chefer's rule, kept as the
benchmark's slow reference; it is *not* a port of any interactive tool. LVLM-Interpret, for
one, computes something different: it reuses earlier steps' gradients for the earlier rows
(an approximation that grows with the token index), also takes parameter and vision-tower
gradients, backpropagates temperature-scaled logits and hard-codes the image slice, so ratios
against :func:`per_step_relevancy` are not ratios against that tool.

Both functions leave the model as they found it: attention implementation,
``requires_grad`` flags, hooks and train/eval mode are restored even on error.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from fastrm_core.adapters import VLMAdapter, get_adapter
from fastrm_common.errors import InputError, RelevancyError
from fastrm_core.regions import ImageRegion, flat_positions, split_flat
from fastrm_core.sequences import split_generated

__all__ = ["RelevancyMaps", "gradient_relevancy", "gradient_relevancy_batch", "per_step_relevancy"]


@dataclass
class RelevancyMaps:
    """Relevancy maps of one generated sequence, flat over the row's image positions.

    Attributes:
        flat_maps: (T, N_img) float32, the image part of each token's relevancy row, over the
            positions of ``regions`` concatenated (:func:`fastrm_core.regions.flat_positions`).
            Higher = more relevant. :meth:`region_maps` cuts it into one grid per region.
        rows: (T, N) float32, each token's full relevancy row over all N input positions
            (prompt + generated tokens before the last); entry ``positions[t]`` is the
            token's self-relevance (1 plus feedback).
        token_ids: (T,) the generated tokens.
        positions: (T,) the sequence position p that predicted each token.
        regions: the image regions of the (unpadded) sequence; their positions index ``rows``.
    """

    flat_maps: torch.Tensor
    rows: torch.Tensor
    token_ids: torch.Tensor
    positions: torch.Tensor
    regions: list[ImageRegion]
    method: str = "gradient"
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.token_ids.numel())

    @property
    def image_positions(self) -> torch.Tensor:
        """(N_img,) sequence positions of the image patches (all regions, concatenated)."""
        return flat_positions(self.regions)

    def region_maps(self) -> list[torch.Tensor]:
        """One (T, rows, cols) map per region, in region order."""
        return split_flat(self.flat_maps, self.regions)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the one region (single-region sequences such as LLaVA-1.5's)."""
        return self._single().grid

    @property
    def maps(self) -> torch.Tensor:
        """(T, rows, cols) of the one region; use :attr:`flat_maps` / :meth:`region_maps` when there are several."""
        self._single()
        return self.region_maps()[0]

    def _single(self) -> ImageRegion:
        if len(self.regions) != 1:
            raise InputError(
                f"this sequence has {len(self.regions)} image regions: use flat_maps or region_maps() instead of maps/grid"
            )
        return self.regions[0]

    def normalized_rows(self) -> torch.Tensor:
        """Chefer's display normalisation (eqs. 8-9): r_hat = (r - e_p) / sum(r - e_p) + e_p. (T, N)"""
        eye = torch.zeros_like(self.rows)
        eye[torch.arange(len(self)), self.positions] = 1.0
        residual = self.rows - eye
        total = residual.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(residual.dtype).tiny)
        return residual / total + eye


# --------------------------------------------------------------------------------------
# leaving the model as we found it


@contextlib.contextmanager
def _recording_attentions(adapter: VLMAdapter, *, leaf_embeds: bool):
    """Switch the language model to eager attention and record every layer's attention probabilities.

    Yields a list that each forward appends ``[A_1, ..., A_L]`` (each (B, H, q, k)) to.
    With ``leaf_embeds`` the language model's ``inputs_embeds`` become a fresh grad leaf, so
    the graph starts there (no graph through the vision tower, no parameter gradients).
    Restores attention implementation, requires_grad flags, train/eval mode and hooks.
    """
    model = adapter.model
    lm = adapter.language_model
    text_cfg = lm.config
    old_impl = text_cfg._attn_implementation
    old_training = model.training
    old_flags = [(p, p.requires_grad) for p in model.parameters()]
    handles = []
    records: list[list[torch.Tensor]] = []
    layers = adapter.decoder_layers
    state = [(obj, name, getattr(obj, name, None)) for obj, name in adapter.generation_state()]
    try:
        text_cfg._attn_implementation = "eager"
        model.eval()
        for p, _ in old_flags:
            p.requires_grad_(False)

        def start_forward(module, args, kwargs):
            records.append([None] * len(layers))
            embeds = kwargs.get("inputs_embeds")
            if leaf_embeds and embeds is not None:
                kwargs = dict(kwargs)
                kwargs["inputs_embeds"] = embeds.detach().requires_grad_(True)
                return args, kwargs
            return None

        handles.append(lm.register_forward_pre_hook(start_forward, with_kwargs=True))

        def make_hook(index: int):
            def hook(module, args, output):
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if weights is None:
                    raise RelevancyError(
                        f"attention layer {index} returned no attention weights even in eager mode; "
                        "this model's attention cannot expose its probabilities"
                    )
                records[-1][index] = weights

            return hook

        for i, layer in enumerate(layers):
            handles.append(adapter.attention_module(layer).register_forward_hook(make_hook(i)))
        yield records
    finally:
        for h in handles:
            h.remove()
        text_cfg._attn_implementation = old_impl
        for p, flag in old_flags:
            p.requires_grad_(flag)
        model.train(old_training)
        for obj, name, value in state:
            setattr(obj, name, value)


# --------------------------------------------------------------------------------------
# the exact, efficient baseline


def _auto_chunk(n_layers: int, n_heads: int, n_pos: int, budget_bytes: float) -> int:
    per_token = n_layers * n_heads * n_pos * n_pos * 4 * 2  # raw grads + the float32 product
    return max(1, int(budget_bytes // max(per_token, 1)))


def _row_relevancy_one(
    adapter: VLMAdapter,
    prompt: dict,
    gen: torch.Tensor,
    *,
    chunk_size: int | None,
    memory_budget_gb: float,
    batched_backward: bool | None,
) -> RelevancyMaps:
    """``prompt``: one unpadded row's inputs (:meth:`VLMAdapter.row_inputs`); ``gen`` (T,) its new tokens."""
    model = adapter.model
    input_ids = prompt["input_ids"][0]
    device = input_ids.device
    regions = adapter.regions(prompt)
    prompt_len = input_ids.numel()
    n_new = gen.numel()
    replay = adapter.extend_inputs(prompt, gen[:-1])  # (1, N): the last token is never an input
    n_pos = replay["input_ids"].shape[1]
    positions = torch.arange(prompt_len - 1, prompt_len - 1 + n_new, device=device)  # (T,)

    with _recording_attentions(adapter, leaf_embeds=True) as records, torch.enable_grad():
        out = model(**replay, use_cache=False)
        attns = records[-1]  # L x (1, H, N, N)
        logits = out.logits[0]  # (N, V)
        if not torch.isfinite(logits[positions]).all():
            raise RelevancyError("the model produced non-finite logits (NaN/inf hidden states) for this sequence")
        ys = logits[positions, gen.to(device)]  # (T,) pre-softmax logits of the chosen tokens
        n_layers, n_heads = len(attns), attns[0].shape[1]
        rows = torch.empty(n_new, n_pos, dtype=torch.float32, device=device)
        if batched_backward is None:  # vmap pays off on GPUs; on CPUs one backward per token is faster
            batched_backward = device.type == "cuda"
        chunk = (chunk_size or _auto_chunk(n_layers, n_heads, n_pos, memory_budget_gb * 2**30)) if batched_backward else 1
        detached = [a.detach() for a in attns]
        start = 0
        while start < n_new:
            idx = torch.arange(start, min(start + chunk, n_new), device=device)
            end = int(positions[idx].max()) + 1  # rows/cols after the chunk's last position never matter
            grads = _chunk_grads(ys, attns, idx, batched_backward)  # L x (C, H, N, N)
            v = torch.zeros(idx.numel(), end, dtype=torch.float32, device=device)  # (C, n)
            v[torch.arange(idx.numel()), positions[idx]] = 1.0
            for layer in range(n_layers - 1, -1, -1):
                g = grads[layer][..., :end, :end].float()
                a_bar = (g * detached[layer][..., :end, :end].float()).clamp_min(0).mean(dim=1)  # (C, n, n)
                v = v + torch.bmm(v[:, None, :], a_bar)[:, 0]
            rows[idx] = 0.0
            rows[idx, :end] = v
            start += idx.numel()
            del grads
    if not torch.isfinite(rows).all():
        raise RelevancyError("relevancy propagation produced non-finite values (NaN hidden states?)")
    image_pos = flat_positions(regions).to(device)
    return RelevancyMaps(
        flat_maps=rows[:, image_pos].cpu(),  # (T, N_img)
        rows=rows.cpu(),
        token_ids=gen.cpu(),
        positions=positions.cpu(),
        regions=_on_cpu(regions),
        method="gradient",
    )


def _on_cpu(regions: list[ImageRegion]) -> list[ImageRegion]:
    return [ImageRegion(r.image, r.kind, r.positions.cpu(), r.grid) for r in regions]


def _chunk_grads(ys: torch.Tensor, attns: list[torch.Tensor], idx: torch.Tensor, batched: bool) -> list[torch.Tensor]:
    """d ys[idx] / d A_l for every layer: L x (C, H, N, N)."""
    if batched and idx.numel() > 1:
        try:
            eye = torch.eye(idx.numel(), dtype=ys.dtype, device=ys.device)  # (C, C)
            grads = torch.autograd.grad(
                ys[idx], attns, grad_outputs=eye, retain_graph=True, is_grads_batched=True, allow_unused=True
            )
            return [_zeros_if_none(g, a, idx.numel()) for g, a in zip(grads, attns)]
        except RuntimeError:  # an op without a batching rule: fall back to one backward per token
            pass
    if idx.numel() == 1:
        g = torch.autograd.grad(ys[int(idx[0])], attns, retain_graph=True, allow_unused=True)
        return [_zeros_if_none(gi, a, None) for gi, a in zip(g, attns)]
    per_token = [_chunk_grads(ys, attns, i[None], False) for i in idx]
    return [torch.cat([tok[layer] for tok in per_token]) for layer in range(len(attns))]


def _zeros_if_none(grad: torch.Tensor | None, attn: torch.Tensor, batch: int | None) -> torch.Tensor:
    if grad is not None:
        return grad.reshape(-1, *attn.shape[1:])  # (C, H, N, N)
    shape = (batch or 1, *attn.shape[1:])
    return torch.zeros(shape, dtype=attn.dtype, device=attn.device)


def gradient_relevancy_batch(
    model: nn.Module,
    inputs: dict,
    generated_ids: torch.Tensor,
    *,
    chunk_size: int | None = None,
    memory_budget_gb: float = 1.0,
    batched_backward: bool | None = None,
    adapter: VLMAdapter | None = None,
) -> list[RelevancyMaps]:
    """Exact gradient relevancy maps for every row of a batch; one :class:`RelevancyMaps` per row.

    Args:
        model: a supported VLM (see :func:`fastrm_core.adapters.list_adapters`).
        inputs: the processor's output for the prompts (``input_ids`` (B, S), ``attention_mask``,
            ``pixel_values``, ...). Left or right padding; image tokens anywhere.
        generated_ids: (B, T) new tokens, or (B, S + T) the full ``generate`` output. Tokens
            after the first end-of-sequence token (padding of finished rows) are ignored.
        chunk_size: tokens whose backward passes are batched together (with ``batched_backward``).
            By default chosen so the gradients of one chunk stay under ``memory_budget_gb``.
        batched_backward: batch a chunk's backward passes (vmap); ``False``: one backward per token
            (memory: one token's attention gradients); ``None`` (default): batched on CUDA only,
            where it is faster.

    Returns:
        A list of B :class:`RelevancyMaps` (maps float32, on the CPU).
    """
    adapter = adapter or get_adapter(model)
    input_ids = inputs["input_ids"]
    if input_ids.dim() != 2:
        raise InputError(f"inputs['input_ids'] must be (B, S), got shape {tuple(input_ids.shape)}")
    if generated_ids.dim() == 1:
        generated_ids = generated_ids[None]
    if generated_ids.shape[0] != input_ids.shape[0]:
        raise InputError(
            f"generated_ids has {generated_ids.shape[0]} rows but inputs has {input_ids.shape[0]} prompts"
        )
    stops = adapter.stop_token_ids()
    results = []
    for b in range(input_ids.shape[0]):
        gen = split_generated(input_ids[b], generated_ids[b], stops)
        results.append(
            _row_relevancy_one(
                adapter,
                adapter.row_inputs(inputs, b),
                gen,
                chunk_size=chunk_size,
                memory_budget_gb=memory_budget_gb,
                batched_backward=batched_backward,
            )
        )
    return results


def gradient_relevancy(model: nn.Module, inputs: dict, generated_ids: torch.Tensor, **kwargs) -> RelevancyMaps:
    """Exact gradient relevancy maps of ONE generated sequence (see :func:`gradient_relevancy_batch`).

    Example::

        inputs = processor(images=image, text=prompt, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
        rel = gradient_relevancy(model, inputs, out)
        rel.maps.shape        # (T, 24, 24) for LLaVA-1.5 (one region)
        rel.flat_maps.shape   # (T, N_img) over every image region of the prompt
    """
    if inputs["input_ids"].shape[0] != 1:
        raise InputError(
            f"gradient_relevancy explains one sequence; got a batch of {inputs['input_ids'].shape[0]}: "
            "use gradient_relevancy_batch"
        )
    return gradient_relevancy_batch(model, inputs, generated_ids, **kwargs)[0]


# --------------------------------------------------------------------------------------
# the per-step method (exact, naive), the benchmark's slow reference


def per_step_relevancy(
    model: nn.Module,
    inputs: dict,
    max_new_tokens: int,
    *,
    adapter: VLMAdapter | None = None,
    stop_at_eos: bool = True,
    suppress_tokens: list[int] | None = None,
) -> RelevancyMaps:
    """Greedy generation that computes each token's map during generation, the costly way.

    Every step's attention probabilities stay in one autograd graph (KV cache on); after
    each step, one backward from the chosen token's logit (graph retained) and full N x N
    products R <- R + Ā_l R, following Chefer's rule exactly. The result equals
    :func:`gradient_relevancy` on the same greedy tokens; it exists to measure what that
    row-vector method saves over a naive exact one (not what it saves over any other tool,
    see the module docstring).
    ``suppress_tokens`` are never chosen (like ``generate``'s option of that name).
    """
    adapter = adapter or get_adapter(model)
    if inputs["input_ids"].shape[0] != 1:
        raise InputError("per_step_relevancy explains one sequence at a time")
    prompt = adapter.row_inputs(inputs, 0)
    ids = prompt["input_ids"][0]
    regions = adapter.regions(prompt)
    stops = adapter.stop_token_ids() if stop_at_eos else frozenset()
    prompt_len = ids.numel()
    device = ids.device
    tokens: list[int] = []
    rows: list[torch.Tensor] = []
    with _recording_attentions(adapter, leaf_embeds=True) as records, torch.enable_grad():
        cache = None
        for step in range(max_new_tokens):
            n_seen = prompt_len + step
            # the prefill takes the whole prompt; later steps one token on the cache, with no mask
            # (an unpadded row), so that families with their own position ids (M-RoPE) derive them
            step_inputs = prompt if step == 0 else {"input_ids": torch.tensor([[tokens[-1]]], device=device)}
            out = model(**step_inputs, cache=cache, use_cache=True)
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            logits = out.logits[0, -1]
            choice = logits.detach().clone()
            if suppress_tokens:
                choice[suppress_tokens] = float("-inf")
            token = int(choice.argmax())
            y = logits[token]
            pieces = [p for rec in records for p in rec]  # every step's attentions so far
            grads = torch.autograd.grad(y, pieces, retain_graph=True, allow_unused=True)
            n_layers = len(records[0])
            n_pos = n_seen
            r = torch.eye(n_pos, dtype=torch.float32, device=device)  # (N, N)
            for layer in range(n_layers):
                a_bar = torch.zeros(n_pos, n_pos, dtype=torch.float32, device=device)
                row0 = 0
                for s, rec in enumerate(records):
                    a = rec[layer].detach()
                    g = grads[s * n_layers + layer]
                    q = a.shape[2]
                    prod = (a.float() * g.float()).clamp_min(0).mean(dim=1)[0] if g is not None else torch.zeros_like(a[0, 0]).float()
                    # keys are the last a.shape[3] positions up to this step's: all of them, or the window a
                    # sliding-window cache keeps (Gemma 3's local layers)
                    end = row0 + q
                    a_bar[row0:end, end - a.shape[3] : end] = prod
                    row0 = end
                r = r + a_bar @ r  # the full-matrix update, O(N^3)
            rows.append(r[n_pos - 1])
            tokens.append(token)
            if token in stops:
                break
    if not tokens:
        raise InputError("max_new_tokens must be >= 1")
    n_final = prompt_len + len(tokens) - 1
    full = torch.zeros(len(tokens), n_final, dtype=torch.float32)
    for t, row in enumerate(rows):
        full[t, : row.numel()] = row.cpu()
    return RelevancyMaps(
        flat_maps=full[:, flat_positions(regions).cpu()],  # (T, N_img)
        rows=full,
        token_ids=torch.tensor(tokens),
        positions=torch.arange(prompt_len - 1, prompt_len - 1 + len(tokens)),
        regions=_on_cpu(regions),
        method="per_step",
    )
