"""Model adapters: what the SDK needs to know about one VLM family.

An adapter answers structural questions about a loaded model without touching its
weights: where the language model's decoder layers and final norm are, the hidden
size, the image placeholder token, where image tokens sit in ``input_ids`` and the
patch grid they form. Adapters are found by name in a plain registry::

    >>> from fastrm_core.adapters import list_adapters
    >>> list_adapters()
    ['llava']

:func:`get_adapter` picks the adapter for a loaded model (or raises
:class:`~fastrm_common.errors.UnsupportedModelError` naming the supported ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastrm_common.errors import InputError, UnsupportedModelError

__all__ = ["ImageLayout", "LlavaAdapter", "VLMAdapter", "get_adapter", "list_adapters", "register_adapter"]


@dataclass(frozen=True)
class ImageLayout:
    """Where the image tokens of one sequence are and how they map to the patch grid.

    ``positions`` (N_img,) are indices into the sequence (padding included), in order;
    the first ``offset`` of them are not patches (e.g. a CLS token kept by the "full"
    feature strategy); the rest reshape row-major to ``grid`` = (rows, cols).
    """

    positions: torch.Tensor
    grid: tuple[int, int]
    offset: int = 0

    @property
    def patch_positions(self) -> torch.Tensor:
        """Sequence positions of the grid patches only, (rows * cols,)."""
        return self.positions[self.offset :]


class VLMAdapter:
    """Interface of a model adapter. Subclass it and :func:`register_adapter` the subclass."""

    name: str = ""

    def __init__(self, model: nn.Module):
        self.model = model

    @classmethod
    def matches(cls, model: nn.Module) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    # structure -----------------------------------------------------------
    @property
    def language_model(self) -> nn.Module:
        raise NotImplementedError

    @property
    def decoder_layers(self) -> list[nn.Module]:
        raise NotImplementedError

    @property
    def final_norm(self) -> nn.Module:
        raise NotImplementedError

    def attention_module(self, layer: nn.Module) -> nn.Module:
        raise NotImplementedError

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    @property
    def image_token_id(self) -> int:
        raise NotImplementedError

    @property
    def grid(self) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def image_token_offset(self) -> int:
        """Number of leading image tokens per image that are not grid patches."""
        return 0

    @property
    def n_image_tokens(self) -> int:
        rows, cols = self.grid
        return rows * cols + self.image_token_offset

    @property
    def model_id(self) -> str:
        """A stable identity string for artifacts: the hub id, or the folder's name for a local model."""
        from pathlib import Path

        name = str(getattr(self.model.config, "_name_or_path", "") or "")
        if not name:
            return type(self.model).__name__
        path = Path(name)
        return path.name if path.exists() else name

    # positions -----------------------------------------------------------
    def image_layout(self, input_ids: torch.Tensor) -> ImageLayout:
        """Image-token layout of ONE sequence ``input_ids`` (S,). Any position, any padding side.

        Raises :class:`InputError` when the sequence does not hold exactly one image's tokens.
        """
        if input_ids.dim() != 1:
            raise InputError(f"image_layout takes one sequence (S,), got shape {tuple(input_ids.shape)}")
        positions = (input_ids == self.image_token_id).nonzero(as_tuple=True)[0]
        if positions.numel() != self.n_image_tokens:
            raise InputError(
                f"expected exactly one image of {self.n_image_tokens} image tokens (id {self.image_token_id}) "
                f"in the sequence, found {positions.numel()}"
            )
        return ImageLayout(positions=positions, grid=self.grid, offset=self.image_token_offset)

    def image_layouts(self, input_ids: torch.Tensor) -> list[ImageLayout]:
        """One :class:`ImageLayout` per row of a batch ``input_ids`` (B, S)."""
        return [self.image_layout(row) for row in input_ids]


class LlavaAdapter(VLMAdapter):
    """transformers' ``LlavaForConditionalGeneration`` (LLaVA-1.5 and the shipped reference model)."""

    name = "llava"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return type(model).__name__ in {"LlavaForConditionalGeneration", "LlavaModel"}

    @property
    def _llava_model(self) -> nn.Module:
        return self.model.model if hasattr(self.model, "lm_head") else self.model

    @property
    def language_model(self) -> nn.Module:
        return self._llava_model.language_model

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
        return int(self.model.config.text_config.hidden_size)

    @property
    def image_token_id(self) -> int:
        cfg = self.model.config
        value = getattr(cfg, "image_token_id", None)
        if value is None:
            value = getattr(cfg, "image_token_index")
        return int(value)

    @property
    def grid(self) -> tuple[int, int]:
        vc = self.model.config.vision_config
        side = int(vc.image_size) // int(vc.patch_size)
        return (side, side)

    @property
    def image_token_offset(self) -> int:
        # "default" drops the vision tower's CLS token; "full" keeps it as the first image token.
        return 1 if self.model.config.vision_feature_select_strategy == "full" else 0


_ADAPTERS: dict[str, type[VLMAdapter]] = {}


def register_adapter(cls: type[VLMAdapter]) -> type[VLMAdapter]:
    """Register an adapter class under ``cls.name`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError("an adapter class needs a non-empty `name`")
    _ADAPTERS[cls.name] = cls
    return cls


register_adapter(LlavaAdapter)


def list_adapters() -> list[str]:
    """Names of the registered adapters, sorted."""
    return sorted(_ADAPTERS)


def get_adapter(model: nn.Module, name: str | None = None) -> VLMAdapter:
    """The adapter for ``model``, by ``name`` or found by inspecting the model.

    Raises :class:`UnsupportedModelError` listing the supported adapters when none fits.
    """
    if name is not None:
        if name not in _ADAPTERS:
            raise UnsupportedModelError(f"unknown adapter {name!r}; expected one of: {', '.join(list_adapters())}")
        return _ADAPTERS[name](model)
    for cls in _ADAPTERS.values():
        if cls.matches(model):
            return cls(model)
    raise UnsupportedModelError(
        f"no adapter supports {type(model).__name__}; supported adapters: {', '.join(list_adapters())} "
        "(transformers' LlavaForConditionalGeneration)"
    )


