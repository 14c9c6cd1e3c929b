"""fastrm_core: model adapters, the exact gradient relevancy baseline, the FastRM proxy and per-token capture.

    >>> from fastrm_core import load_vlm, FastRMProxy, capture
    >>> model, processor = load_vlm("reference")            # the shipped ShapesVQA model
    >>> proxy = FastRMProxy.from_pretrained("path/to/proxy")
    >>> with capture(model, proxy) as cap:
    ...     out = model.generate(**inputs, max_new_tokens=10)
    >>> cap.maps.shape                                       # (B, T, rows, cols)
"""

from fastrm_core.adapters import ImageLayout, LlavaAdapter, VLMAdapter, get_adapter, list_adapters, register_adapter
from fastrm_core.capture import Capture, capture
from fastrm_core.errors import (
    CalibrationError,
    CaptureError,
    ConfigMismatchError,
    DataError,
    GuardrailError,
    InputError,
    PolicyError,
    RelevancyError,
    UnsupportedModelError,
)
from fastrm_core.integrity import weights_fingerprint
from fastrm_core.loading import load_vlm
from fastrm_core.proxy import FastRMProxy, ProxyConfig
from fastrm_core.relevancy import RelevancyMaps, gradient_relevancy, gradient_relevancy_batch, per_step_relevancy
from fastrm_core.tokens import content_token_mask, eos_token_ids

__all__ = [
    "CalibrationError",
    "Capture",
    "CaptureError",
    "ConfigMismatchError",
    "DataError",
    "FastRMProxy",
    "GuardrailError",
    "ImageLayout",
    "InputError",
    "LlavaAdapter",
    "PolicyError",
    "ProxyConfig",
    "RelevancyError",
    "RelevancyMaps",
    "UnsupportedModelError",
    "VLMAdapter",
    "capture",
    "content_token_mask",
    "eos_token_ids",
    "get_adapter",
    "gradient_relevancy",
    "gradient_relevancy_batch",
    "list_adapters",
    "load_vlm",
    "per_step_relevancy",
    "register_adapter",
    "weights_fingerprint",
]
