import fastrm_core


def test_public_surface_is_deliberate():
    assert fastrm_core.__all__ == sorted(fastrm_core.__all__)
    assert set(fastrm_core.__all__) == {
        "CalibrationError", "Capture", "CaptureError", "ConfigMismatchError", "DataError", "FastRMProxy",
        "GuardrailError", "InputError", "LlavaAdapter", "OutputTap", "PolicyError", "ProxyConfig",
        "RelevancyError", "RelevancyMaps", "UnsupportedModelError", "VLMAdapter", "capture", "content_token_mask", "eos_token_ids", "get_adapter",
        "gradient_relevancy", "gradient_relevancy_batch", "imageless_logprobs", "list_adapters", "load_vlm", "per_step_relevancy",
        "register_adapter", "weights_fingerprint",
    }
    for name in fastrm_core.__all__:
        assert getattr(fastrm_core, name) is not None
