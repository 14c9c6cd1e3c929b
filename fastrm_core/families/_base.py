"""The adapter base of the families whose layout module gives :class:`RowImages` per batch (internal)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fastrm_common.errors import InputError
from fastrm_core.adapters import VLMAdapter, as_inputs, inner_model
from fastrm_core.families._layout import RowImages
from fastrm_core.regions import ImageRegion

__all__ = ["LayoutAdapter", "saved_processor_parts"]


class LayoutAdapter(VLMAdapter):
    """A :class:`VLMAdapter` whose regions and per-row image slices come from :meth:`layouts`.

    Subclasses implement :meth:`layouts` (the family module's ``batch_images``) and say where the
    language model is (default: ``model.model.language_model``, the usual ``*ForConditionalGeneration``
    nesting).
    """

    def layouts(self, inputs: Mapping) -> list[RowImages]:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def _inner(self) -> nn.Module:
        return inner_model(self.model)

    @property
    def language_model(self) -> nn.Module:
        return self._inner.language_model

    def regions(self, inputs, row: int = 0) -> list[ImageRegion]:
        return self.layouts(as_inputs(inputs))[row].regions

    def separators(self, inputs, row: int = 0) -> torch.Tensor:
        """(K,) positions of row ``row``'s image-structure tokens that are in no region (newlines, breaks, tags)."""
        return self.layouts(as_inputs(inputs))[row].separators

    def images_of_row(self, inputs: Mapping, row: int) -> Mapping:
        keys = [k for k in self.per_image_inputs if torch.is_tensor(inputs.get(k))]
        if not keys:
            return {}
        rows = self.layouts(as_inputs(inputs))
        own = rows[row].images
        if own is None:
            return {}
        total = max((r.images.stop for r in rows if r.images is not None), default=0)
        out = {}
        for key in keys:
            value = inputs[key]
            if value.shape[0] != total:
                raise InputError(f"inputs[{key!r}] has {value.shape[0]} entries for {total} images in the batch")
            out[key] = value[own]
        return out


def saved_processor_parts(name_or_path, image_processor_cls, kwarg_names) -> tuple:
    """``(image_processor, tokenizer, chat_template, kwargs)`` of a saved processor, read without building the
    processor itself (for families whose processor needs a video processor, i.e. torchvision, to be built).

    ``kwargs``: the entries of ``processor_config.json`` named in ``kwarg_names``.
    """
    import json
    from pathlib import Path

    from transformers import AutoTokenizer

    folder = Path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    image_processor = image_processor_cls.from_pretrained(name_or_path)
    saved = {}
    if (folder / "processor_config.json").is_file():
        saved = json.loads((folder / "processor_config.json").read_text(encoding="utf-8"))
    template = getattr(tokenizer, "chat_template", None)
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return image_processor, tokenizer, template, {k: saved[k] for k in kwarg_names if k in saved}
