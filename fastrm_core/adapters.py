"""Model adapters: what the SDK needs to know about one VLM family.

An adapter answers structural questions about a loaded model without touching its weights,
so that everything else (the gradient baseline, Grad-CAM, capture, distillation, the Guard)
runs the same code on every family. Adapters are found by name in a plain registry::

    >>> from fastrm_core.adapters import list_adapters
    >>> "llava" in list_adapters() and "qwen2_vl" in list_adapters()
    True

:func:`get_adapter` picks the adapter for a loaded model from its **config** (``model_type`` and
the vision tower), or raises :class:`~fastrm_common.errors.UnsupportedModelError` naming the
supported ones; an adapter refuses a config it does not understand rather than guess (a LLaVA
with a Pixtral vision tower is not a LLaVA-1.5 grid).

Writing an adapter for a new family (the contract)
--------------------------------------------------
Subclass :class:`VLMAdapter`, set ``name`` and ``model_types``, and provide:

* **structure**: :attr:`~VLMAdapter.language_model` (the decoder whose config's
  ``_attn_implementation`` is switched to ``"eager"`` for gradient maps and whose forward receives
  ``inputs_embeds`` as a keyword), :attr:`~VLMAdapter.decoder_layers`,
  :meth:`~VLMAdapter.attention_module` (its forward returns ``(out, weights)``),
  :attr:`~VLMAdapter.final_norm` (its output (B, S, D) is the last hidden state: capture hooks it),
  :attr:`~VLMAdapter.hidden_size`;
* **tokens**: :attr:`~VLMAdapter.image_token_id` and :attr:`~VLMAdapter.placeholder_token_ids`
  (every id that must never be generated and fed back: image, newline, break, separators; the
  pipeline suppresses them in ``generate``), ``chat_end_tokens`` (token strings that end a turn,
  looked up in the tokenizer by :meth:`~VLMAdapter.stop_token_ids`);
* **regions**: :meth:`~VLMAdapter.regions` returns, for one row of a batch, one
  :class:`~fastrm_core.regions.ImageRegion` per grid of image tokens, in prompt order, with
  sequence positions in row-major order (tokens that are not spatial, such as a CLS token or
  row-end newlines, are in no region). It must raise :class:`InputError` when the image tokens of
  the row cannot be accounted for;
* **replay inputs** (only where the defaults do not fit): :meth:`~VLMAdapter.row_inputs` cuts one
  row out of a processor batch without its padding (every per-token tensor is unpadded, ``labels``
  dropped, per-image tensors sliced to the row's images; override :meth:`~VLMAdapter.images_of_row`
  for flattened layouts such as Qwen's ``pixel_values``), and :meth:`~VLMAdapter.extend_inputs`
  appends generated tokens to it (per-token type tensors are extended with ``token_type_fill``,
  e.g. PaliGemma's ``token_type_ids`` = 1 for generated tokens);
* **prompts**: :meth:`~VLMAdapter.build_prompt` (default: the processor's chat template with one
  image entry per picture, else LLaVA-1.5's plain template);
* **choice**: :meth:`~VLMAdapter.supports` on a config (default: ``config.model_type`` in
  ``model_types``; refine it to refuse vision towers the adapter does not understand).

Then :func:`register_adapter` the class. Built-in families live in :mod:`fastrm_core.families`
(one module each, listed in ``fastrm_core.families.BUILTIN``); they are imported on the first
registry look-up. The tests of an adapter check that its regions account for every image token,
that its row-major order follows the family's own structure, that ``generate`` logits equal a
forward over :meth:`~VLMAdapter.replay_inputs`, and that the gradient maps equal a naive reference.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from fastrm_common.registry import Registry
from fastrm_common.errors import InputError, UnsupportedModelError
from fastrm_common.prompting import build_prompt as _build_prompt
from fastrm_common.tokens import eos_ids_of
from fastrm_core.regions import ImageRegion, flat_positions

__all__ = [
    "ADAPTERS",
    "VLMAdapter",
    "adapter_for_config",
    "as_inputs",
    "get_adapter",
    "inner_model",
    "list_adapters",
    "register_adapter",
    "supported_model_types",
    "unsupported_model_error",
]


def as_inputs(inputs) -> Mapping:
    """``inputs`` as a mapping with ``input_ids`` (B, S): a processor output, or bare ids (S,) / (B, S)."""
    if torch.is_tensor(inputs):
        ids = inputs if inputs.dim() == 2 else inputs.reshape(1, -1)
        return {"input_ids": ids}
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
        raise InputError("expected the processor's output (a mapping with 'input_ids') or an input_ids tensor")
    ids = inputs["input_ids"]
    if ids.dim() == 1:
        return {**inputs, "input_ids": ids[None]}
    if ids.dim() != 2:
        raise InputError(f"input_ids must be (B, S) or (S,), got shape {tuple(ids.shape)}")
    return inputs


class VLMAdapter:
    """Interface of a model adapter (see the module docstring for the contract).

    Structural properties raise ``NotImplementedError`` here; the token, replay and prompt methods
    have defaults that fit LLaVA-style families (one placeholder id, per-image tensors with one
    leading entry per image, token-type tensors filled with 0 for generated tokens).
    """

    #: Registry name, also recorded in proxy configs and dataset manifests.
    name: str = ""
    #: ``config.model_type`` values this adapter may accept (see :meth:`supports`).
    model_types: tuple[str, ...] = ()
    #: Token strings that end an assistant turn (stop tokens beside the generation config's EOS).
    chat_end_tokens: tuple[str, ...] = ()
    #: Per-token input tensors and the value a generated token takes in them.
    token_type_fill: Mapping[str, int] = {"token_type_ids": 0, "mm_token_type_ids": 0}
    #: Processor outputs never passed to the model.
    dropped_inputs: frozenset[str] = frozenset({"labels"})
    #: Processor outputs with one leading entry per image (over the whole batch, in prompt order).
    per_image_inputs: frozenset[str] = frozenset({"pixel_values", "image_sizes", "pixel_attention_mask"})
    #: Processor outputs flattened over the images of the batch (sliced by :meth:`images_of_row`).
    flat_image_inputs: frozenset[str] = frozenset()

    def __init__(self, model: nn.Module):
        self.model = model

    # choice ------------------------------------------------------------------
    @classmethod
    def supports(cls, config) -> bool:
        """Whether this adapter understands a model with this (top-level) config."""
        return getattr(config, "model_type", None) in cls.model_types

    @classmethod
    def load_processor(cls, name_or_path):
        """The processor of a checkpoint (``AutoProcessor.from_pretrained``; override where the
        family's processor cannot be built, e.g. it needs video packages that are not installed)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(name_or_path)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether this adapter understands a loaded ``model`` (by its config)."""
        config = getattr(model, "config", None)
        return config is not None and cls.supports(config)

    # structure -----------------------------------------------------------
    @property
    def language_model(self) -> nn.Module:
        raise NotImplementedError

    @property
    def text_config(self):
        """The language model's config (where ``_attn_implementation`` is switched)."""
        return self.language_model.config

    @property
    def decoder_layers(self) -> list[nn.Module]:
        return list(self.language_model.layers)

    @property
    def final_norm(self) -> nn.Module:
        return self.language_model.norm

    def attention_module(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def model_id(self) -> str:
        """A stable identity string for artifacts: the hub id, or the folder's name for a local model."""
        name = str(getattr(self.model.config, "_name_or_path", "") or "")
        if not name:
            return type(self.model).__name__
        path = Path(name)
        return path.name if path.exists() else name

    # tokens --------------------------------------------------------------
    @property
    def image_token_id(self) -> int:
        """The id that marks image tokens in ``input_ids``."""
        cfg = self.model.config
        value = getattr(cfg, "image_token_id", None)
        if value is None:
            value = getattr(cfg, "image_token_index", None)
        if value is None:
            raise UnsupportedModelError(f"{type(self.model).__name__}'s config names no image token id")
        return int(value)

    @property
    def placeholder_token_ids(self) -> frozenset[int]:
        """Ids that stand for image content and must never be generated and fed back to the model.

        The pipeline passes them as ``suppress_tokens`` to ``generate`` and refuses to replay a
        generated sequence that holds one.
        """
        return frozenset({self.image_token_id})

    def stop_token_ids(self, tokenizer=None) -> frozenset[int]:
        """Ids that end generation: the generation config's EOS ids, plus ``chat_end_tokens``
        found in ``tokenizer`` (when given). Pass them as ``generate(eos_token_id=sorted(...))``."""
        ids = set(eos_ids_of(getattr(self.model, "generation_config", None)))
        if tokenizer is not None:
            ids |= eos_ids_of(tokenizer)
            unk = getattr(tokenizer, "unk_token_id", None)
            for token in self.chat_end_tokens:
                tid = tokenizer.convert_tokens_to_ids(token)
                if isinstance(tid, int) and tid != unk:
                    ids.add(tid)
        return frozenset(ids)

    # prompts -------------------------------------------------------------
    def build_prompt(self, processor, question: str, suffix: str | None = None, n_images: int = 1) -> tuple[str, str]:
        """``(prompt, template_kind)`` for ``n_images`` pictures followed by one question.

        ``template_kind`` is ``"chat"`` when the processor's chat template was used, else
        ``"plain"`` (LLaVA-1.5's ``"USER: <image>\\n{question} ASSISTANT:"``).
        """
        return _build_prompt(processor, question, suffix, n_images=n_images)

    # regions -------------------------------------------------------------
    def regions(self, inputs, row: int = 0) -> list[ImageRegion]:
        """The image regions of row ``row`` of ``inputs``, in prompt order.

        ``inputs`` is the processor's output (a mapping with ``input_ids`` (B, S) and whatever
        else the family needs, e.g. ``image_grid_thw``) or a bare ``input_ids`` tensor (S,) / (B, S)
        for families whose ids say everything. Positions index that row as given (padding
        included). Raises :class:`InputError` when the row's image tokens cannot be accounted for.
        """
        raise NotImplementedError

    def batch_regions(self, inputs) -> list[list[ImageRegion]]:
        """:meth:`regions` of every row of a batch."""
        inputs = as_inputs(inputs)
        return [self.regions(inputs, b) for b in range(inputs["input_ids"].shape[0])]

    def image_positions(self, inputs, row: int = 0) -> torch.Tensor:
        """(N_img,) the flat image positions of one row: its regions' positions, concatenated."""
        return flat_positions(self.regions(inputs, row))

    # replay ----------------------------------------------------------------
    def images_of_row(self, inputs: Mapping, row: int) -> Mapping:
        """The per-image inputs of row ``row`` (every key of ``per_image_inputs`` present in ``inputs``).

        Default: the entries of the row's images, counted by :meth:`regions` over the rows before
        it (one ``image`` index per picture).
        """
        keys = [k for k in self.per_image_inputs if torch.is_tensor(inputs.get(k))]
        if not keys:
            return {}
        counts = [_n_images(self.regions(inputs, b)) for b in range(inputs["input_ids"].shape[0])]
        start, n = sum(counts[:row]), counts[row]
        out = {}
        for key in keys:
            value = inputs[key]
            if value.shape[0] != sum(counts):
                raise InputError(
                    f"inputs[{key!r}] has {value.shape[0]} entries for {sum(counts)} images in the batch"
                )
            out[key] = value[start : start + n]
        return out

    def row_inputs(self, inputs: Mapping, row: int) -> dict:
        """Model inputs of row ``row`` alone, without padding: ``input_ids`` (1, S_row), an all-ones
        ``attention_mask``, per-token tensors unpadded, per-image tensors sliced to the row's
        images, ``dropped_inputs`` (``labels``) left out, everything else passed on unchanged."""
        inputs = as_inputs(inputs)
        ids = inputs["input_ids"]
        batch, seq = ids.shape
        mask = inputs.get("attention_mask")
        keep = mask[row].bool() if mask is not None else torch.ones(seq, dtype=torch.bool, device=ids.device)
        out = {"input_ids": ids[row][keep][None], "attention_mask": torch.ones(1, int(keep.sum()), dtype=torch.long,
                                                                                device=ids.device)}
        out.update(self.images_of_row(inputs, row))
        for key, value in inputs.items():
            if key in out or key in self.dropped_inputs or key == "attention_mask":
                continue
            if torch.is_tensor(value) and value.dim() >= 2 and tuple(value.shape[:2]) == (batch, seq):
                out[key] = value[row][keep][None]  # per token
            elif torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch:
                out[key] = value[row : row + 1]  # per row
            else:
                out[key] = value
        return out

    def extend_inputs(self, row_inputs: Mapping, new_ids: torch.Tensor) -> dict:
        """``row_inputs`` (from :meth:`row_inputs`) with ``new_ids`` (T,) appended: the inputs of
        one forward over prompt + generated tokens. Per-token tensors (``token_type_fill``) are
        extended with their generated-token value; ``attention_mask`` stays all ones."""
        ids = row_inputs["input_ids"]
        new = new_ids.reshape(1, -1).to(device=ids.device, dtype=ids.dtype)
        bad = sorted(set(new.reshape(-1).tolist()) & self.placeholder_token_ids)
        if bad:
            raise InputError(
                f"the generated tokens contain image placeholder token(s) {bad}; they cannot be fed back to the model"
            )
        out = dict(row_inputs)
        out["input_ids"] = torch.cat([ids, new], dim=1)
        out["attention_mask"] = torch.ones_like(out["input_ids"])
        n = new.shape[1]
        for key, fill in self.token_type_fill.items():
            value = out.get(key)
            if torch.is_tensor(value) and value.dim() >= 2 and value.shape[1] == ids.shape[1]:
                pad = torch.full((1, n, *value.shape[2:]), fill, dtype=value.dtype, device=value.device)
                out[key] = torch.cat([value, pad], dim=1)
        return out

    def repeat_inputs(self, row_inputs: Mapping, m: int) -> dict:
        """A batch of ``m`` copies of one prompt's inputs (batch 1, no padding): per-row and per-token
        tensors expanded, per-image and flattened image tensors repeated, ``dropped_inputs`` left out."""
        if row_inputs["input_ids"].shape[0] != 1:
            raise InputError("repeat_inputs takes the inputs of one prompt (batch 1)")
        out = {}
        for key, value in row_inputs.items():
            if key in self.dropped_inputs:
                continue
            if torch.is_tensor(value) and value.dim() and key in self.per_image_inputs | self.flat_image_inputs:
                out[key] = value.repeat(m, *[1] * (value.dim() - 1))
            elif torch.is_tensor(value) and value.dim() and value.shape[0] == 1:
                out[key] = value.expand(m, *value.shape[1:])
            else:
                out[key] = value
        return out

    def replay_inputs(self, inputs: Mapping, row: int, new_ids: torch.Tensor | None = None) -> dict:
        """:meth:`row_inputs`, then :meth:`extend_inputs` when ``new_ids`` (T,) is given."""
        out = self.row_inputs(inputs, row)
        return out if new_ids is None or new_ids.numel() == 0 else self.extend_inputs(out, new_ids)

    def generation_state(self) -> list[tuple[object, str]]:
        """``(object, attribute)`` pairs a forward of this family mutates (e.g. Qwen2-VL's cached
        ``rope_deltas``): the relevancy methods save and restore them, leaving the model as found."""
        return []

    # fixed-grid families (LLaVA-1.5) --------------------------------------
    @property
    def fixed_grid(self) -> tuple[int, int] | None:
        """The one grid every image has, for families with a fixed grid; ``None`` otherwise."""
        return None

    @property
    def grid(self) -> tuple[int, int]:
        """The fixed grid (``fixed_grid``); raises :class:`InputError` for variable-grid families."""
        grid = self.fixed_grid
        if grid is None:
            raise InputError(f"{self.name} models have no fixed grid: read each row's regions instead")
        return grid

    @property
    def image_token_offset(self) -> int:
        """Number of leading image tokens per image that are not grid patches (fixed-grid families)."""
        return 0

    @property
    def n_image_tokens(self) -> int:
        """Image tokens per image for a fixed-grid family (grid cells plus ``image_token_offset``)."""
        rows, cols = self.grid
        return rows * cols + self.image_token_offset


def _n_images(regions: Sequence[ImageRegion]) -> int:
    return len({r.image for r in regions})


def inner_model(model: nn.Module) -> nn.Module:
    """The ``*Model`` inside a ``*ForConditionalGeneration`` (the module holding the towers and the
    language model), or ``model`` itself when it is already that inner model."""
    return model.model if hasattr(model, "lm_head") else model


def _load_builtin_families() -> None:
    from fastrm_core.families import BUILTIN

    for module in BUILTIN:
        importlib.import_module(module)


#: the adapter classes by name (:class:`fastrm_common.registry.Registry`); the built-in families
#: (:data:`fastrm_core.families.BUILTIN`) are imported at the first lookup
ADAPTERS: Registry[type[VLMAdapter]] = Registry("adapter", loader=_load_builtin_families)


def register_adapter(cls: type[VLMAdapter], *, replace: bool = False) -> type[VLMAdapter]:
    """Register an adapter class under ``cls.name`` (usable as a decorator); a taken name is
    refused unless ``replace`` (:class:`~fastrm_common.errors.RegistryError`)."""
    ADAPTERS.add(getattr(cls, "name", ""), cls, replace=replace)
    return cls


def list_adapters() -> list[str]:
    """Names of the registered adapters, sorted."""
    return ADAPTERS.names()


def supported_model_types() -> list[str]:
    """``config.model_type`` values some registered adapter may accept, sorted."""
    return sorted({t for cls in ADAPTERS.values() for t in cls.model_types})


def adapter_for_config(config) -> type[VLMAdapter] | None:
    """The registered adapter class that understands ``config``, or ``None``."""
    for cls in ADAPTERS.values():
        if cls.supports(config):
            return cls
    return None


def unsupported_model_error(config, what: str) -> UnsupportedModelError:
    """The error that says no adapter supports ``config`` (``what``: the model, as named to the user)."""
    model_type = getattr(config, "model_type", None)
    vision = getattr(getattr(config, "vision_config", None), "model_type", None)
    detail = f"model_type {model_type!r}" + (f" with a {vision!r} vision tower" if vision else "")
    return UnsupportedModelError(
        f"no adapter supports {what} ({detail}); supported adapters: {', '.join(list_adapters())} "
        f"(model types: {', '.join(supported_model_types())})"
    )


def get_adapter(model: nn.Module, name: str | None = None) -> VLMAdapter:
    """The adapter for ``model``, by ``name`` or chosen by its config (``model_type`` and vision tower).

    Raises :class:`UnsupportedModelError` listing the supported adapters when none fits (also when
    the named adapter does not understand the model's config).
    """
    if name is not None:
        cls = ADAPTERS.find(name)
        if cls is None:
            raise UnsupportedModelError(f"unknown adapter {name!r}; expected one of: {', '.join(list_adapters())}")
        if not cls.matches(model):
            raise unsupported_model_error(getattr(model, "config", None), f"{type(model).__name__} as {name!r}")
        return cls(model)
    config = getattr(model, "config", None)
    cls = adapter_for_config(config) if config is not None else None
    if cls is None:
        raise unsupported_model_error(config, type(model).__name__)
    return cls(model)

