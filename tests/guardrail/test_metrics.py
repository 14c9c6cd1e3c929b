"""Guard metrics through the SDK's in-memory reader: names, units, attributes and values."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from guardrail.telemetry.exporters import configure_metrics
from guardrail.telemetry.guard_metrics import GuardMetrics
from guardrail.result import GuardResult, Timings


def _result(**kw):
    base = dict(question="q", answer="red", text="red", token_ids=[5, 6, 2], tokens=["re", "d", "</s>"],
                score=0.8, threshold=0.7, verdict="uncertain", action="flag", rule="uncertain", reason="r",
                flagged=True, policy_id="default", policy_version="1",
                timings=Timings(model_s=0.5, guard_s=0.004, total_s=0.51))
    base.update(kw)
    return GuardResult(**base)


def _points(reader):
    out = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = (m.unit, [(dict(p.attributes), p) for p in m.data.data_points])
    return out


def test_metrics_names_units_attributes_and_values():
    reader = InMemoryMetricReader()
    provider = configure_metrics(readers=[reader], otlp_from_env=False)
    metrics = GuardMetrics(provider)
    metrics.record(_result(), model="tiny", input_tokens=40)
    metrics.record(_result(verdict="confident", action="allow", rule="default", flagged=False, score=0.3),
                   model="tiny", input_tokens=38)
    metrics.record(_result(verdict=None, score=None, action="flag", rule="on_error", unguarded=True), model="tiny")
    pts = _points(reader)
    assert set(pts) == {"gen_ai.client.operation.duration", "gen_ai.client.token.usage", "fastrm.guardrail.verdicts",
                        "fastrm.guardrail.actions", "fastrm.guardrail.answer_score", "fastrm.guardrail.duration",
                        "fastrm.guardrail.threshold_distance"}
    unit, durations = pts["gen_ai.client.operation.duration"]
    assert unit == "s" and durations[0][0] == {"gen_ai.operation.name": "chat", "gen_ai.request.model": "tiny"}
    assert durations[0][1].count == 3 and durations[0][1].sum == pytest.approx(3 * 0.51)
    assert tuple(durations[0][1].explicit_bounds)[:3] == (0.01, 0.02, 0.04)
    unit, tokens = pts["gen_ai.client.token.usage"]
    by_type = {a["gen_ai.token.type"]: p for a, p in tokens}
    assert unit == "{token}" and by_type["input"].sum == 78 and by_type["input"].count == 2
    assert by_type["output"].sum == 9
    verdicts = {(a["fastrm.guardrail.verdict"], a["fastrm.guardrail.rule"]): p.value for a, p in pts["fastrm.guardrail.verdicts"][1]}
    assert verdicts == {("uncertain", "uncertain"): 1, ("confident", "default"): 1, ("unguarded", "on_error"): 1}
    actions = {(a["fastrm.guardrail.action"], a["fastrm.guardrail.flagged"], a["fastrm.guardrail.rule"]): p.value
               for a, p in pts["fastrm.guardrail.actions"][1]}
    assert actions == {("flag", True, "uncertain"): 1, ("allow", False, "default"): 1, ("flag", True, "on_error"): 1}
    assert all(a["fastrm.guardrail.policy.id"] == "default" for a, _ in pts["fastrm.guardrail.actions"][1])
    scores = {a["fastrm.guardrail.verdict"]: p for a, p in pts["fastrm.guardrail.answer_score"][1]}
    assert set(scores) == {"uncertain", "confident"} and scores["uncertain"].sum == pytest.approx(0.8)
    distance = {a["fastrm.guardrail.verdict"]: p for a, p in pts["fastrm.guardrail.threshold_distance"][1]}
    assert distance["uncertain"].sum == pytest.approx(0.1) and distance["confident"].sum == pytest.approx(0.4)
    _, guard = pts["fastrm.guardrail.duration"]
    assert guard[0][1].count == 3 and guard[0][1].sum == pytest.approx(0.012)
    provider.shutdown()


def test_a_negative_score_skips_the_score_histogram_but_not_the_distance(caplog):
    reader = InMemoryMetricReader()
    provider = configure_metrics(readers=[reader], otlp_from_env=False)
    metrics = GuardMetrics(provider)
    metrics.record(_result(score=-2.5, threshold=-1.0, verdict="confident"), model="tiny")  # a log-odds score
    pts = _points(reader)
    assert "fastrm.guardrail.answer_score" not in pts  # OpenTelemetry refuses negative histogram values
    (attrs, point), = pts["fastrm.guardrail.threshold_distance"][1]
    assert attrs["fastrm.guardrail.verdict"] == "confident" and point.sum == pytest.approx(1.5)
    assert "non-negative" not in caplog.text
    provider.shutdown()


def test_recording_never_raises():
    class Broken:
        def get_meter(self, *a, **k):
            raise RuntimeError("no meter")

    with pytest.raises(RuntimeError):
        GuardMetrics(Broken())  # a provider that cannot make instruments fails at construction, not per call
    metrics = GuardMetrics()  # the global no-op provider
    metrics.record(_result(), model="m")

    class Exploding:
        def add(self, *a, **k):
            raise ValueError("x")

        record = add

    m = GuardMetrics()
    m.verdicts = m.actions = m.answer_score = m.guard_duration = m.operation_duration = m.token_usage = Exploding()
    m.threshold_distance = Exploding()
    m.record(_result(), model="m")  # swallowed


def test_console_metrics_export(capsys):
    import io

    out = io.StringIO()
    provider = configure_metrics(console=out, otlp_from_env=False)
    GuardMetrics(provider).record(_result(), model="tiny", input_tokens=3)
    provider.force_flush()
    provider.shutdown()
    assert "fastrm.guardrail.verdicts" in out.getvalue()


def test_otlp_metrics_url():
    from guardrail.telemetry.exporters import _signal_url

    assert _signal_url("http://h:4318", "metrics") == "http://h:4318/v1/metrics"
    assert _signal_url("http://h:4318/v1/metrics/", "metrics") == "http://h:4318/v1/metrics"


def test_the_guard_records_its_calls(tiny_llava, tiny_proxy, calibration_uncertain, image):
    from guardrail.guard import Guard

    reader = InMemoryMetricReader()
    provider = configure_metrics(readers=[reader], otlp_from_env=False)
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, meter_provider=provider,
              model_name="tiny-llava")
    results = g.generate_batch([(image, "What color?"), (image, "How many circles are there?")], max_new_tokens=3)
    pts = _points(reader)
    (attrs, verdicts), = pts["fastrm.guardrail.verdicts"][1]
    assert verdicts.value == 2 and attrs["fastrm.guardrail.verdict"] == "uncertain"
    assert attrs["gen_ai.request.model"] == "tiny-llava"
    tokens = {a["gen_ai.token.type"]: p for a, p in pts["gen_ai.client.token.usage"][1]}
    assert tokens["output"].sum == sum(len(r.token_ids) for r in results)
    assert tokens["input"].count == 2
    provider.shutdown()
