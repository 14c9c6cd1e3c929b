"""Qwen2-VL and Qwen2.5-VL: ``<|image_pad|>`` runs with M-RoPE positions and variable grids.

Each picture is one run of ``<|image_pad|>`` tokens between ``<|vision_start|>`` and
``<|vision_end|>``. Its size comes from the processor's ``image_grid_thw`` (one (t, h, w) row per
image over the whole batch, in prompt order): the vision tower merges 2 x 2 patches
(``spatial_merge_size``), so the run holds (h / 2) x (w / 2) tokens in row-major order; the
language model's M-RoPE gives them height and width position ids that follow that grid.
``pixel_values`` is flattened over every patch of every image of the batch ((sum t*h*w, C*p*p)),
so one row's pixels are a contiguous slice of it. Videos are not supported.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fastrm_common.errors import InputError
from fastrm_core.adapters import VLMAdapter, as_inputs, inner_model, register_adapter
from fastrm_core.regions import ImageRegion, check_regions

__all__ = ["Qwen2VLAdapter", "image_only_processor"]


def _runs(positions: torch.Tensor) -> list[torch.Tensor]:
    """Split sorted positions (N,) into runs of consecutive integers."""
    if positions.numel() == 0:
        return []
    breaks = (positions[1:] - positions[:-1] != 1).nonzero(as_tuple=True)[0] + 1
    return list(torch.tensor_split(positions, breaks.tolist()))


class Qwen2VLAdapter(VLMAdapter):
    """transformers' ``Qwen2VLForConditionalGeneration`` and ``Qwen2_5_VLForConditionalGeneration``."""

    name = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    chat_end_tokens = ("<|im_end|>", "<|endoftext|>")
    per_image_inputs = frozenset({"image_grid_thw"})
    flat_image_inputs = frozenset({"pixel_values"})  # (sum of t*h*w over the images, C*p*p): sliced below

    @classmethod
    def supports(cls, config) -> bool:
        model_type = getattr(config, "model_type", None)
        vision = getattr(getattr(config, "vision_config", None), "model_type", None)
        return model_type in cls.model_types and vision == f"{model_type}_vision"

    @classmethod
    def load_processor(cls, name_or_path):
        """``AutoProcessor`` where torchvision is installed; else the same processor for images only
        (:func:`image_only_processor`): transformers builds these families' video processor with
        torchvision, which images do not need."""
        from transformers import AutoProcessor
        from transformers.utils import is_torchvision_available

        if is_torchvision_available():
            return AutoProcessor.from_pretrained(name_or_path)
        return _load_image_only(name_or_path)

    @property
    def _inner(self) -> nn.Module:
        return inner_model(self.model)

    @property
    def language_model(self) -> nn.Module:
        return self._inner.language_model

    def generation_state(self) -> list[tuple[object, str]]:
        return [(self._inner, "rope_deltas")]  # M-RoPE offsets cached by every prefill

    @property
    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    @property
    def placeholder_token_ids(self) -> frozenset[int]:
        cfg = self.model.config
        ids = {cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id,
               getattr(cfg, "vision_end_token_id", None)}
        return frozenset(int(i) for i in ids if i is not None)

    def _grids(self, inputs: Mapping) -> list[list[tuple[int, int, int]]]:
        """Per row, the (t, h, w) of each of its images, from ``image_grid_thw`` and the rows' token counts."""
        ids = inputs["input_ids"]
        thw = inputs.get("image_grid_thw")
        video = self.model.config.video_token_id
        if bool((ids == video).any()):
            raise InputError("videos are not supported: the prompt holds video tokens")
        if thw is None:
            position_ids = inputs.get("position_ids")
            if torch.is_tensor(position_ids) and position_ids.dim() == 3 and position_ids.shape[0] in (3, 4):
                return [self._grids_from_positions(ids[b], position_ids[-3:, b]) for b in range(ids.shape[0])]
            raise InputError("Qwen2-VL regions need the processor's 'image_grid_thw' (or M-RoPE position_ids) beside input_ids")
        sizes = [tuple(int(v) for v in row) for row in thw.tolist()]
        m2 = self.merge_size**2
        out, k = [], 0
        for b in range(ids.shape[0]):
            n_tokens, row = int((ids[b] == self.image_token_id).sum()), []
            while n_tokens > 0:
                if k >= len(sizes):
                    raise InputError(f"row {b} holds more image tokens than image_grid_thw describes ({len(sizes)} images)")
                t, h, w = sizes[k]
                row.append((t, h, w))
                n_tokens -= t * h * w // m2
                k += 1
            if n_tokens < 0:
                raise InputError(f"the image tokens of row {b} do not match image_grid_thw")
            out.append(row)
        if k != len(sizes):
            raise InputError(f"image_grid_thw describes {len(sizes)} images but the batch holds {k}")
        return out

    def _grids_from_positions(self, ids: torch.Tensor, thw_ids: torch.Tensor) -> list[tuple[int, int, int]]:
        """(t, h, w) of each image of one row, read from its M-RoPE (temporal, height, width) ids (3, S).

        ``generate`` passes the vision features precomputed and no ``image_grid_thw`` to the
        forward; its 3-D position ids carry each image's grid instead."""
        m = self.merge_size
        out = []
        for run in _runs((ids == self.image_token_id).nonzero(as_tuple=True)[0]):
            h, w = thw_ids[1, run], thw_ids[2, run]
            rows, cols = int(h.max() - h.min()) + 1, int(w.max() - w.min()) + 1
            if rows * cols != run.numel():
                raise InputError(f"an image run of {run.numel()} tokens does not form a grid in its M-RoPE positions")
            out.append((1, rows * m, cols * m))
        return out

    def regions(self, inputs, row: int = 0) -> list[ImageRegion]:
        inputs = as_inputs(inputs)
        ids = inputs["input_ids"][row]
        grids = self._grids(inputs)[row]
        positions = (ids == self.image_token_id).nonzero(as_tuple=True)[0]
        m = self.merge_size
        out, start = [], 0
        for k, (t, h, w) in enumerate(grids):
            if t != 1 or h % m or w % m:
                raise InputError(f"image {k} has grid (t, h, w) = ({t}, {h}, {w}): expected t = 1 and h, w multiples of {m}")
            size = (h // m) * (w // m)
            chunk = positions[start : start + size]
            if chunk.numel() != size or int(chunk[-1] - chunk[0]) != size - 1:
                raise InputError(f"the tokens of image {k} are not one run of {size} <|image_pad|> tokens")
            out.append(ImageRegion(image=k, kind="full", positions=chunk, grid=(h // m, w // m)))
            start += size
        check_regions(out, ids.numel())
        return out

    def images_of_row(self, inputs: Mapping, row: int) -> Mapping:
        if inputs.get("image_grid_thw") is None:
            return {}
        grids = self._grids(inputs)
        before = sum(len(g) for g in grids[:row])
        thw = inputs["image_grid_thw"][before : before + len(grids[row])]
        out = {"image_grid_thw": thw}
        pixels = inputs.get("pixel_values")
        if torch.is_tensor(pixels):
            patches = [t * h * w for g in grids for (t, h, w) in g]
            if pixels.shape[0] != sum(patches):
                raise InputError(f"pixel_values has {pixels.shape[0]} patches, image_grid_thw describes {sum(patches)}")
            start = sum(patches[:before])
            out["pixel_values"] = pixels[start : start + sum(patches[before : before + len(grids[row])])]
        return out


register_adapter(Qwen2VLAdapter)


def _processor_base(model_type: str):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

    return Qwen2_5_VLProcessor if model_type == "qwen2_5_vl" else Qwen2VLProcessor


_IMAGE_ONLY: dict[str, type] = {}


def image_only_processor(image_processor, tokenizer, chat_template: str | None = None, *, model_type: str = "qwen2_vl"):
    """A Qwen2-VL / Qwen2.5-VL processor without its video processor.

    transformers' processors of these families require a video processor, which needs torchvision;
    this one is the same processor with images only (``videos=`` is not accepted), for machines
    without torchvision. ``save_pretrained`` writes the family's own processor class name.
    """
    from transformers.processing_utils import ProcessorMixin

    if model_type not in _IMAGE_ONLY:
        base = _processor_base(model_type)

        class ImageOnly(base):
            def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
                self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
                self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
                self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
                self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
                ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

            def to_dict(self):
                out = super().to_dict()
                out["processor_class"] = base.__name__
                return out

        ImageOnly.__name__ = ImageOnly.__qualname__ = f"{base.__name__}ImageOnly"
        _IMAGE_ONLY[model_type] = ImageOnly
    return _IMAGE_ONLY[model_type](image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


def _load_image_only(name_or_path) -> object:
    from pathlib import Path

    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    config = AutoConfig.from_pretrained(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(name_or_path)
    template = getattr(tokenizer, "chat_template", None)
    jinja = Path(name_or_path) / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    return image_only_processor(image_processor, tokenizer, template, model_type=config.model_type)
