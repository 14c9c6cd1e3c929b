"""Loading a VLM and its processor through transformers' ``from_pretrained``."""

from __future__ import annotations

from pathlib import Path

import torch

from fastrm_core.adapters import get_adapter
from fastrm_common.errors import UnsupportedModelError
from fastrm_common.presets import resolve_model

__all__ = ["load_vlm"]

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def load_vlm(name_or_path: str | Path, *, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None):
    """Load ``(model, processor)`` from a hub id (e.g. ``"llava-hf/llava-1.5-7b-hf"``) or a local folder.

    Args:
        name_or_path: anything ``from_pretrained`` accepts. A preset name
            (:mod:`fastrm_common.presets`; ``"reference"`` is the shipped ShapesVQA model) loads
            that preset's model.
        dtype: ``torch.float16``/``"bf16"``/... ; ``None`` keeps the checkpoint's dtype.
        device: where to put the model (``"cuda"``, ``"cpu"``...); ``None`` leaves it on the CPU.

    Returns:
        The model in eval mode and its processor. Raises :class:`UnsupportedModelError` when no
        adapter supports the loaded architecture (the message lists the supported ones).
    """
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    name_or_path = resolve_model(name_or_path)
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of: {', '.join(_DTYPES)}")
        dtype = _DTYPES[dtype]
    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type != "llava":
        raise UnsupportedModelError(
            f"{name_or_path} is a {config.model_type!r} model; supported: llava (LlavaForConditionalGeneration)"
        )
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = LlavaForConditionalGeneration.from_pretrained(name_or_path, **kwargs)
    if device is not None:
        model = model.to(device)
    model.eval()
    get_adapter(model)  # fail early if unsupported
    processor = AutoProcessor.from_pretrained(name_or_path)
    return model, processor
