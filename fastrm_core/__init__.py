"""fastrm_core: model adapters, the exact gradient relevancy baseline, the FastRM proxy and per-token capture.

    >>> from fastrm_core import load_vlm, FastRMProxy, capture
    >>> model, processor = load_vlm("reference")            # the shipped ShapesVQA model
    >>> proxy = FastRMProxy.from_pretrained("path/to/proxy")
    >>> with capture(model, proxy) as cap:
    ...     out = model.generate(**inputs, max_new_tokens=10)
    >>> cap.maps.shape                                       # (B, T, rows, cols)
"""

from typing import TYPE_CHECKING

from fastrm_common.lazy import lazy_exports

from fastrm_common.errors import (
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
from fastrm_common.tokens import content_token_mask, eos_token_ids

# The torch-backed names load on first use (PEP 562), so that importing the torch-free parts
# (errors, token helpers) or ``fastrm_core.cli --help`` does not pay for torch and transformers.
_LAZY = {
    "LlavaAdapter": "fastrm_core.families.llava",
    "VLMAdapter": "fastrm_core.adapters",
    "get_adapter": "fastrm_core.adapters",
    "list_adapters": "fastrm_core.adapters",
    "register_adapter": "fastrm_core.adapters",
    "Capture": "fastrm_core.capturing",
    "capture": "fastrm_core.capturing",
    "OutputTap": "fastrm_core.capturing",
    "imageless_logprobs": "fastrm_core.contrast",
    "weights_fingerprint": "fastrm_core.integrity",
    "load_vlm": "fastrm_core.loading",
    "FastRMProxy": "fastrm_core.proxy",
    "ProxyConfig": "fastrm_core.proxy",
    "RelevancyMaps": "fastrm_core.relevancy",
    "gradient_relevancy": "fastrm_core.relevancy",
    "gradient_relevancy_batch": "fastrm_core.relevancy",
    "per_step_relevancy": "fastrm_core.relevancy",
}

if TYPE_CHECKING:
    from fastrm_core.adapters import VLMAdapter, get_adapter, list_adapters, register_adapter
    from fastrm_core.families.llava import LlavaAdapter
    from fastrm_core.capturing import Capture, OutputTap, capture
    from fastrm_core.contrast import imageless_logprobs
    from fastrm_core.integrity import weights_fingerprint
    from fastrm_core.loading import load_vlm
    from fastrm_core.proxy import FastRMProxy, ProxyConfig
    from fastrm_core.relevancy import RelevancyMaps, gradient_relevancy, gradient_relevancy_batch, per_step_relevancy




__all__ = [
    "CalibrationError",
    "Capture",
    "CaptureError",
    "ConfigMismatchError",
    "DataError",
    "FastRMProxy",
    "GuardrailError",
    "InputError",
    "LlavaAdapter",
    "OutputTap",
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
    "imageless_logprobs",
    "list_adapters",
    "load_vlm",
    "per_step_relevancy",
    "register_adapter",
    "weights_fingerprint",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
