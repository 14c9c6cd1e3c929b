import guardrail


def test_guardrail_public_surface():
    assert guardrail.__all__ == sorted(guardrail.__all__)
    assert set(guardrail.__all__) == {
        "BatchItemError", "Claim", "Guard", "GuardHooks", "GuardResult", "JsonlFileSpanExporter", "Limits", "MapBudget", "RowReport", "Timings",
        "TokenEvent", "configure_tracing",
        "decode_map", "encode_map", "load_image", "read_trace_jsonl",
    }
