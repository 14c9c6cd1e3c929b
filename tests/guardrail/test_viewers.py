"""What trace viewers get: the verdict as a label (Phoenix annotations, MLflow assessments) on every
export path, metrics only where an endpoint takes them, no false "not exported" warnings.

The viewers are stood in for by a small HTTP server on loopback that answers the routes each one
serves (the real ones: tests/guardrail/test_phoenix.py, tests/guardrail/test_mlflow.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from guardrail import Guard
from guardrail.telemetry.annotations import VerdictNote, root_note, verdict_note
from guardrail.telemetry.exporters import configure_metrics, configure_tracing
from guardrail.telemetry.mlflow import mlflow_assessments
from guardrail.telemetry.phoenix import PhoenixAnnotationExporter, phoenix_annotations
from guardrail.telemetry.viewers import detect_viewer

pytest.importorskip("opentelemetry.exporter.otlp.proto.http")


class FakeViewer:
    """A loopback HTTP server answering like Phoenix or MLflow; records what it was sent.

    ``refuse`` annotation posts are answered 404 first (the viewer does not know the span yet)."""

    def __init__(self, kind: str, refuse: int = 0) -> None:
        self.kind, self.refuse = kind, refuse
        self.posts: list[tuple[str, dict, bytes]] = []
        self.accepted: list[dict] = []  # the annotation/assessment bodies answered 200
        self.lock = threading.Lock()
        viewer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: bytes = b"{}", ctype: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if viewer.kind == "phoenix" and self.path == "/arize_phoenix_version":
                    return self._answer(200, b"20.26.1", "text/plain")
                if viewer.kind == "mlflow" and self.path.startswith("/api/2.0/mlflow/experiments/search"):
                    return self._answer(200, b'{"experiments": []}')
                return self._answer(404)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with viewer.lock:
                    viewer.posts.append((self.path, dict(self.headers), body))
                    annotation = "annotations" in self.path or "assessments" in self.path
                    if annotation and viewer.refuse > 0:
                        viewer.refuse -= 1
                        return self._answer(404)
                    if annotation:
                        viewer.accepted.append(json.loads(body))
                if self.path in ("/v1/traces", "/v1/span_annotations?sync=true") or "assessments" in self.path:
                    return self._answer(200)
                return self._answer(405 if viewer.kind == "phoenix" else 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def json_posts(self, word: str) -> list[tuple[dict, dict]]:
        with self.lock:
            return [(h, json.loads(b)) for p, h, b in self.posts if word in p]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def phoenix():
    v = FakeViewer("phoenix", refuse=2)
    yield v
    v.close()


@pytest.fixture
def mlflow():
    v = FakeViewer("mlflow", refuse=1)
    yield v
    v.close()


@pytest.fixture(autouse=True)
def _no_otlp_env(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)


GUARD_ATTRS = {"fastrm.guardrail.action": "flag", "fastrm.guardrail.verdict": "uncertain", "fastrm.guardrail.score": 0.9,
               "fastrm.guardrail.reason": "uncertain answer", "fastrm.guardrail.rule": "r", "fastrm.guardrail.threshold": 0.7}


def test_the_label_is_the_verdict_and_the_action_is_its_own_label():
    note = verdict_note(GUARD_ATTRS)
    assert (note.label, note.action, note.score, note.explanation) == ("uncertain", "flag", 0.9, "uncertain answer")
    verdict, action, score = phoenix_annotations(note)
    # Phoenix's chip shows a score instead of a label: the verdict's label travels without one
    assert verdict["name"] == "fastrm" and verdict["result"] == {"label": "uncertain", "explanation": "uncertain answer"}
    assert verdict["metadata"]["score"] == 0.9 and verdict["metadata"]["action"] == "flag"
    assert action["name"] == "fastrm.action" and action["result"] == {"label": "flag"}
    assert score["name"] == "fastrm.score" and score["result"] == {"score": 0.9}
    unscored = verdict_note({"fastrm.guardrail.action": "allow", "fastrm.guardrail.reason": "observe"})
    assert unscored.label == "unscored" and unscored.score is None
    failed = verdict_note({"fastrm.guardrail.action": "allow", "fastrm.guardrail.unguarded": True})
    assert failed.label == "unguarded"
    batch = root_note([verdict_note(GUARD_ATTRS), unscored, verdict_note({**GUARD_ATTRS, "fastrm.guardrail.verdict": "confident",
                                                                          "fastrm.guardrail.action": "allow"})])
    assert (batch.label, batch.action, batch.score) == ("uncertain", "flag", 0.9) and batch.root
    assert batch.explanation == "3 rows: 1 uncertain, 1 unscored, 1 confident"
    mlflow_verdict, mlflow_action = mlflow_assessments(VerdictNote(**{**note.__dict__, "trace_id": "a" * 32,
                                                                      "span_id": "b" * 16}))
    assert mlflow_verdict["trace_id"] == "tr-" + "a" * 32 and mlflow_verdict["feedback"] == {"value": "uncertain"}
    assert mlflow_verdict["metadata"]["action"] == "flag" and mlflow_verdict["rationale"] == "uncertain answer"
    assert mlflow_action["assessment_name"] == "fastrm.action" and mlflow_action["feedback"] == {"value": "flag"}


def _guard(tiny_llava, tiny_proxy, calibration, provider, **kw):
    return Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration, tracer_provider=provider,
                 model_name="tiny-llava", **kw)


def _wait(fn, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not fn() and time.monotonic() < deadline:
        time.sleep(0.05)
    return fn()


def test_standard_otlp_variables_pointing_at_phoenix_get_annotations_on_guard_and_root_spans(
        phoenix, monkeypatch, caplog, tiny_llava, tiny_proxy, calibration_uncertain, image):
    """The OTEL_EXPORTER_OTLP_ENDPOINT path (no --phoenix): Phoenix is detected, the verdict and the action are
    annotations on the guard span and on the trace's root span (the trace list's column), although Phoenix
    refuses the first posts; nothing is reported as unexported."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix.url)
    assert detect_viewer(phoenix.url) == "phoenix"
    provider = configure_tracing()
    g = _guard(tiny_llava, tiny_proxy, calibration_uncertain, provider)
    with caplog.at_level(logging.WARNING):
        r = g.generate(image, "What color?", max_new_tokens=3)
        provider.shutdown()
    assert any(p == "/v1/traces" for p, _, _ in phoenix.posts)
    annotations = [a for _, body in phoenix.json_posts("span_annotations") for a in body["data"]]
    by_span = {}
    for a in annotations:
        by_span.setdefault(a["span_id"], {})[a["name"]] = a["result"]
    assert len(by_span) == 2  # the guard span and the chat span (the trace's root)
    for results in by_span.values():
        assert results["fastrm"]["label"] == r.verdict == "uncertain"
        assert results["fastrm.score"]["score"] == pytest.approx(r.score)
        assert results["fastrm.action"]["label"] == r.action
    assert not [rec for rec in caplog.records if "did not finish exporting" in rec.message or "lost" in rec.message]


def test_a_batch_root_gets_the_most_severe_verdict(phoenix, tiny_llava, tiny_proxy, calibration_uncertain, image):
    exporter = PhoenixAnnotationExporter(phoenix.url, retry_delay_s=0.05)
    provider = configure_tracing(otlp_endpoint=phoenix.url, exporters=[exporter])
    g = _guard(tiny_llava, tiny_proxy, calibration_uncertain, provider)
    g.generate_batch([(image, "What color?"), (image, "How many?")], max_new_tokens=3)
    provider.shutdown()
    annotations = [a for _, body in phoenix.json_posts("span_annotations") for a in body["data"]]
    verdicts = {a["span_id"]: a for a in annotations if a["name"] == "fastrm"}  # a refused post is sent again
    assert len(verdicts) == 3  # two rows and the root
    root = [a for a in verdicts.values() if a["metadata"].get("rows") == 2]
    assert len(root) == 1 and root[0]["result"]["label"] == "uncertain"
    assert root[0]["result"]["explanation"] == "2 rows: 2 uncertain"


def test_annotations_that_never_get_in_are_reported_lost(caplog):
    v = FakeViewer("phoenix", refuse=10**6)
    try:
        exporter = PhoenixAnnotationExporter(v.url, retries=2, retry_delay_s=0.01)
        provider = configure_tracing(exporters=[exporter], otlp_from_env=False)
        from opentelemetry import trace

        tracer = trace.get_tracer("t", tracer_provider=provider)
        with tracer.start_as_current_span("chat x"):
            with tracer.start_as_current_span("apply_guardrail fastrm") as span:
                span.set_attributes(GUARD_ATTRS)
        with caplog.at_level(logging.WARNING):
            provider.shutdown()
        assert exporter.lost == 2 and any("lost" in rec.message for rec in caplog.records)
    finally:
        v.close()


def test_mlflow_gets_assessments_and_the_experiment_header(mlflow, monkeypatch, tiny_llava, tiny_proxy,
                                                           calibration_uncertain, image):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", mlflow.url + "/v1/traces")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "7")
    provider = configure_tracing()
    g = _guard(tiny_llava, tiny_proxy, calibration_uncertain, provider)
    r = g.generate(image, "What color?", max_new_tokens=3)
    provider.shutdown()
    traces = [h for p, h, _ in mlflow.posts if p == "/v1/traces"]
    assert traces and all({k.lower(): v for k, v in h.items()}["x-mlflow-experiment-id"] == "7" for h in traces)
    created = [body["assessment"] for body in mlflow.accepted]
    names = sorted(a["assessment_name"] for a in created)
    assert names == ["fastrm", "fastrm.action"]  # once each: the refused first post is not duplicated, no root copy
    verdict = next(a for a in created if a["assessment_name"] == "fastrm")
    assert verdict["feedback"]["value"] == r.verdict and verdict["trace_id"].startswith("tr-")
    assert float(verdict["metadata"]["score"]) == pytest.approx(r.score)


@pytest.mark.parametrize("kind", ["phoenix", "mlflow"])
def test_no_metrics_go_to_a_viewer_that_takes_none(kind, monkeypatch):
    v = FakeViewer(kind)
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", v.url)
        meters = configure_metrics(export_interval_s=3600)
        assert list(meters._metric_readers) == []
        meters.shutdown()
        collector = configure_metrics(otlp_endpoint="http://127.0.0.1:9", export_interval_s=3600)
        assert len(collector._metric_readers) == 1  # not a viewer: metrics as before
        collector.shutdown()
    finally:
        v.close()
    assert not [p for p, _, _ in v.posts if p.startswith("/v1/metrics")]


def test_a_slow_viewer_is_not_reported_as_spans_that_did_not_export(caplog):
    """The demo's "N span(s) did not finish exporting" came from annotation retries inside ``export``:
    Phoenix refused the annotations until it had the spans, and the retries outlasted the export bound
    although every span and annotation arrived. Posting now happens on the exporter's own thread."""
    v = FakeViewer("phoenix", refuse=3)
    try:
        exporter = PhoenixAnnotationExporter(v.url, retry_delay_s=0.3)
        provider = configure_tracing(exporters=[exporter], otlp_from_env=False, export_timeout_s=0.5)
        from opentelemetry import trace

        tracer = trace.get_tracer("t", tracer_provider=provider)
        with caplog.at_level(logging.WARNING):
            with tracer.start_as_current_span("chat x"):
                with tracer.start_as_current_span("apply_guardrail fastrm") as span:
                    span.set_attributes(GUARD_ATTRS)
            provider.force_flush()
            assert _wait(lambda: len(v.accepted) >= 1)
            provider.shutdown()
        assert not caplog.records, [r.message for r in caplog.records]
        assert exporter.lost == 0 and {a["name"] for a in v.accepted[0]["data"]} == {"fastrm", "fastrm.action", "fastrm.score"}
    finally:
        v.close()
