"""InternVL (``InternVLForConditionalGeneration``, InternVL 2.5/3 in transformers' format): untagged tiles, then a thumbnail.

Each picture is ``<img>``, then ``image_seq_length`` ``<IMG_CONTEXT>`` tokens per block, then
``</img>``. A picture cut into tiles (``crop_to_patches``) has one block per tile, in the
processor's order, followed by a thumbnail block of the whole picture; a picture that fits one
tile is one block. Each block is a k x k grid (k² = ``image_seq_length``) after the pixel shuffle,
row-major.

How the tiles were arranged (2 x 3 or 3 x 2 or 1 x 6 for six tiles) depends on the original
picture's aspect ratio, which neither the processor's output nor the config carries: so the tiles
are NOT stitched into one grid here (as Idefics3's tagged tiles are); each is its own ``tile``
region, in order, and the thumbnail is the ``global`` region. ``pixel_values`` (n_blocks, C, H, W)
are flattened over the batch; a row owns as many as it has blocks.
"""

from __future__ import annotations

import math

import torch

from fastrm_common.errors import InputError
from fastrm_core.adapters import register_adapter
from fastrm_core.families._base import LayoutAdapter, saved_processor_parts
from fastrm_core.families._layout import RowImages, grid_positions, runs, split_counts
from fastrm_core.regions import ImageRegion

__all__ = ["InternVLAdapter", "batch_images", "images_only_processor", "internvl_row_images"]


def internvl_row_images(input_ids: torch.Tensor, image_token_id: int, image_seq_length: int) -> RowImages:
    """Regions of one row (S,): per picture (one run of context tokens) ``full``, or its ``tile`` s and ``global``.

    The ``<img>``/``</img>`` tokens around each run are the separators. ``RowImages.images`` is not
    set here; :func:`batch_images` counts blocks.
    """
    side = math.isqrt(int(image_seq_length))
    if side * side != image_seq_length:
        raise InputError(f"internvl: image_seq_length {image_seq_length} is not a square")
    ids = input_ids.tolist()
    regions, seps = [], []
    for image, (start, length) in enumerate(runs(input_ids == image_token_id)):
        if length % image_seq_length or start == 0 or start + length >= len(ids):
            raise InputError(f"internvl: the image tokens at position {start} are not <img>, whole "
                             f"{image_seq_length}-token blocks and </img>")
        seps += [start - 1, start + length]
        n = length // image_seq_length
        if n == 1:
            regions.append(ImageRegion(image, "full", grid_positions(start, side, side), (side, side)))
            continue
        for k in range(n - 1):
            regions.append(ImageRegion(image, "tile", grid_positions(start + k * image_seq_length, side, side),
                                       (side, side)))
        regions.append(ImageRegion(image, "global", grid_positions(start + (n - 1) * image_seq_length, side, side),
                                   (side, side)))
    return RowImages(regions, torch.tensor(seps, dtype=torch.long)).check(len(ids))


def batch_images(config, inputs: dict) -> list[RowImages]:
    """One :class:`RowImages` per row of an InternVL batch; ``pixel_values`` (n_blocks, ...) sliced by the row's blocks."""
    ids = inputs["input_ids"]
    rows = [internvl_row_images(ids[b], config.image_token_id, int(config.image_seq_length)) for b in range(ids.shape[0])]
    counts = [len(r.regions) for r in rows]  # one region per block
    pixel_values = inputs.get("pixel_values")
    slices = split_counts(counts, pixel_values.shape[0] if pixel_values is not None else sum(counts), "internvl")
    return [r.owning(sl) for r, sl in zip(rows, slices)]


@register_adapter
class InternVLAdapter(LayoutAdapter):
    """transformers' ``InternVLForConditionalGeneration``: one region per tile (their arrangement is not in the
    inputs) plus the thumbnail. Videos are not supported."""

    name = "internvl"
    model_types = ("internvl",)
    chat_end_tokens = ("<|im_end|>",)

    @classmethod
    def supports(cls, config) -> bool:
        vision = getattr(getattr(config, "vision_config", None), "model_type", None)
        return getattr(config, "model_type", None) in cls.model_types and vision == "internvl_vision"

    @classmethod
    def load_processor(cls, name_or_path):
        """``AutoProcessor`` where torchvision is installed; else the same processor for images only
        (:func:`images_only_processor`: transformers builds the video processor with torchvision)."""
        from transformers import AutoProcessor, GotOcr2ImageProcessorPil
        from transformers.utils import is_torchvision_available

        if is_torchvision_available():
            return AutoProcessor.from_pretrained(name_or_path)
        image_processor, tokenizer, template, kwargs = saved_processor_parts(
            name_or_path, GotOcr2ImageProcessorPil, ("image_seq_length",))
        return images_only_processor(image_processor, tokenizer, template, **kwargs)

    def layouts(self, inputs) -> list[RowImages]:
        return batch_images(self.model.config, inputs)


_IMAGES_ONLY: list[type] = []


def images_only_processor(image_processor, tokenizer, chat_template: str | None = None, image_seq_length: int = 256):
    """An ``InternVLProcessor`` without its video processor (which transformers builds with torchvision).

    Images only (``videos=`` is not accepted); ``save_pretrained`` writes the family's own class name.
    The tokenizer names ``start_image_token``, ``end_image_token``, ``context_image_token`` and ``video_token``.
    """
    import re

    from transformers import InternVLProcessor
    from transformers.processing_utils import ProcessorMixin

    if not _IMAGES_ONLY:
        base = InternVLProcessor

        class InternVLProcessorImagesOnly(base):
            def __init__(self, image_processor=None, tokenizer=None, image_seq_length=256, chat_template=None, **kw):
                ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kw)
                # as InternVLProcessor.__init__
                self.image_seq_length = image_seq_length
                self.start_image_token, self.end_image_token = tokenizer.start_image_token, tokenizer.end_image_token
                self.start_image_token_id = tokenizer.start_image_token_id
                self.end_image_token_id = tokenizer.end_image_token_id
                self.image_token, self.video_token = tokenizer.context_image_token, tokenizer.video_token
                self.image_token_id = tokenizer.context_image_token_id
                self.multimodal_pattern = re.compile(
                    f"(?P<image>{re.escape(self.image_token)})|(?P<video>{re.escape(self.video_token)})")

            def to_dict(self):
                out = super().to_dict()
                out["processor_class"] = base.__name__
                return out

        _IMAGES_ONLY.append(InternVLProcessorImagesOnly)
    return _IMAGES_ONLY[0](image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template,
                           image_seq_length=image_seq_length)
