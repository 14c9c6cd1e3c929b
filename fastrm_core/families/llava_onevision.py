"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): LLaVA-NeXT's layout, with ``anyres_max_N`` and multi-image prompts.

A prompt with ONE image is laid out as in :mod:`fastrm_core.families.llava_next` (base grid, then
the unpadded high-resolution grid, one newline per row), except that a high-resolution grid of more
than about N tiles' worth of patches is shrunk by bilinear interpolation (``vision_aspect_ratio``
= ``anyres_max_N``). In a prompt with SEVERAL images every image is its base grid alone followed by
one newline (the processor's ``batch_num_images`` says how many images each row holds).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastrm_common.errors import InputError
from fastrm_core.adapters import register_adapter
from fastrm_core.families._base import LayoutAdapter, saved_processor_parts
from fastrm_core.families._layout import RowImages, split_counts
from fastrm_core.families.llava_next import tower_fits
from fastrm_core.families.llava_next import batch_grids, hires_grid, image_token_count, images_per_row, row_images

__all__ = ["LlavaOnevisionAdapter", "batch_images", "max_patches", "onevision_row_images", "row_grids"]


def max_patches(vision_aspect_ratio: str) -> int:
    """N of ``anyres_max_N``."""
    prefix = "anyres_max_"
    if not vision_aspect_ratio.startswith(prefix) or not vision_aspect_ratio[len(prefix):].isdigit():
        raise InputError(f"unsupported vision_aspect_ratio {vision_aspect_ratio!r}; expected 'anyres_max_N'")
    return int(vision_aspect_ratio[len(prefix):])


def row_grids(image_sizes: Sequence, pinpoints, tile: int, side: int, vision_aspect_ratio: str) -> list:
    """High-resolution grids of one row's images: one (rows, cols) for a single image, None for each of several."""
    if len(image_sizes) != 1:
        return [None] * len(image_sizes)
    return [hires_grid(image_sizes[0], pinpoints, tile, side, max_patches(vision_aspect_ratio))]


def onevision_row_images(input_ids: torch.Tensor, image_token_id: int, image_sizes: Sequence, *, pinpoints, tile: int,
                         side: int, vision_aspect_ratio: str = "anyres_max_9") -> RowImages:
    """Regions of one row (S,) holding ``len(image_sizes)`` images (sizes (height, width))."""
    grids = row_grids(image_sizes, pinpoints, tile, side, vision_aspect_ratio)
    return row_images(input_ids, image_token_id, grids, side)


def batch_images(config, inputs: dict, newline: torch.Tensor | None = None) -> list[RowImages]:
    """One :class:`RowImages` per row of a LLaVA-OneVision batch (``image_sizes`` (n_images, 2), ``batch_num_images``
    (B,); or, at ``generate``'s prefill, ``mm_encoder_outputs`` with the model's ``newline``)."""
    vc = config.vision_config
    side = int(vc.image_size) // int(vc.patch_size)
    ids = inputs["input_ids"]
    per_row = inputs.get("batch_num_images")
    if inputs.get("image_sizes") is None or per_row is None:
        # without the per-row counts the model patches every image: so do the grids (sizes or packed features)
        grids = batch_grids(config, inputs, newline, max_patches(config.vision_aspect_ratio))
        if per_row is None:
            per_row = images_per_row((ids == config.image_token_id).sum(-1).tolist(),
                                     [image_token_count(g, side) for g in grids])
        slices = split_counts([int(n) for n in per_row], len(grids), "llava_onevision")
        return [row_images(ids[b], config.image_token_id, grids[sl], side).owning(sl) for b, sl in enumerate(slices)]
    sizes = inputs["image_sizes"]
    pins = [list(p) for p in config.image_grid_pinpoints]
    slices = split_counts([int(n) for n in per_row], len(sizes), "llava_onevision")
    return [onevision_row_images(ids[b], config.image_token_id, sizes[sl], pinpoints=pins, tile=int(vc.image_size),
                                 side=side, vision_aspect_ratio=config.vision_aspect_ratio).owning(sl)
            for b, sl in enumerate(slices)]


@register_adapter
class LlavaOnevisionAdapter(LayoutAdapter):
    """transformers' ``LlavaOnevisionForConditionalGeneration``: NeXT's layout with ``anyres_max_N``; base grids only
    in multi-image prompts. Videos are not supported."""
    name = "llava_onevision"
    model_types = ("llava_onevision",)
    chat_end_tokens = ("<|im_end|>",)

    @classmethod
    def supports(cls, config) -> bool:
        return getattr(config, "model_type", None) in cls.model_types and tower_fits(config)

    @classmethod
    def load_processor(cls, name_or_path):
        """``AutoProcessor`` where torchvision is installed; else the same processor for images only
        (:func:`images_only_processor`: transformers builds the video processor with torchvision)."""
        from transformers import AutoProcessor
        from transformers.utils import is_torchvision_available

        if is_torchvision_available():
            return AutoProcessor.from_pretrained(name_or_path)
        return _load_images_only(name_or_path)

    @property
    def placeholder_token_ids(self) -> frozenset[int]:
        return frozenset({self.image_token_id, int(self.model.config.video_token_id)})

    def layouts(self, inputs) -> list[RowImages]:
        return batch_images(self.model.config, inputs, self._inner.image_newline)


_PROCESSOR_KWARGS = ("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio", "image_token",
                     "video_token")
_IMAGES_ONLY: list[type] = []


def images_only_processor(image_processor, tokenizer, chat_template: str | None = None, **kwargs):
    """A ``LlavaOnevisionProcessor`` without its video processor (which transformers builds with torchvision).

    Images only (``videos=`` is not accepted); ``save_pretrained`` writes the family's own class name.
    ``kwargs``: the processor's ``num_image_tokens``, ``vision_feature_select_strategy``, ``vision_aspect_ratio``.
    """
    from transformers import LlavaOnevisionProcessor
    from transformers.processing_utils import ProcessorMixin

    if not _IMAGES_ONLY:
        base = LlavaOnevisionProcessor

        class LlavaOnevisionProcessorImagesOnly(base):
            def __init__(self, image_processor=None, tokenizer=None, chat_template=None, num_image_tokens=None,
                         vision_feature_select_strategy=None, vision_aspect_ratio="anyres_max_9",
                         image_token="<image>", video_token="<video>", **kw):
                self.num_image_tokens = num_image_tokens
                self.vision_feature_select_strategy = vision_feature_select_strategy
                self.vision_aspect_ratio = vision_aspect_ratio
                self.image_token = getattr(tokenizer, "image_token", None) or image_token
                self.video_token = getattr(tokenizer, "video_token", None) or video_token
                self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
                self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
                ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kw)

            def to_dict(self):
                out = super().to_dict()
                out["processor_class"] = base.__name__
                return out

        _IMAGES_ONLY.append(LlavaOnevisionProcessorImagesOnly)
    return _IMAGES_ONLY[0](image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)


def _load_images_only(name_or_path):
    from transformers import LlavaOnevisionImageProcessorPil

    image_processor, tokenizer, template, kwargs = saved_processor_parts(
        name_or_path, LlavaOnevisionImageProcessorPil, _PROCESSOR_KWARGS)
    return images_only_processor(image_processor, tokenizer, template, **kwargs)
