"""Loading a VLM and its processor through transformers' auto classes for image-text-to-text models."""

from __future__ import annotations

from pathlib import Path

import torch

from fastrm_core.adapters import unsupported_model_error, adapter_for_config, get_adapter
from fastrm_common.errors import InputError
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
        The model in eval mode and its processor. Raises :class:`UnsupportedModelError` before
        loading any weight when no adapter supports the config (``model_type`` and vision tower;
        the message lists the supported ones). The model is loaded with
        ``AutoModelForImageTextToText``; the processor by the adapter's
        :meth:`~fastrm_core.adapters.VLMAdapter.load_processor` (``AutoProcessor``, or an image-only
        processor where the family's full one needs video packages that are not installed).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    name_or_path = resolve_model(name_or_path)
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of: {', '.join(_DTYPES)}")
        dtype = _DTYPES[dtype]
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except OSError as exc:  # a missing folder or an id the offline cache does not hold
        raise InputError(f"cannot load a model from {str(name_or_path)!r}: no such folder, and not a model id "
                         f"available offline ({type(exc).__name__})") from exc
    adapter_cls = adapter_for_config(config)
    if adapter_cls is None:
        raise unsupported_model_error(config, str(name_or_path))
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
    if device is not None:
        model = model.to(device)
    model.eval()
    get_adapter(model)  # the loaded model's config, checked again
    processor = adapter_cls.load_processor(name_or_path)
    return model, processor
