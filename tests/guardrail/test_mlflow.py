"""Real-viewer test: guarded calls sent over OTLP to a live MLflow tracking server, read back with MLflow's client.

MLflow is large, so it lives in its own virtual environment made by ``make mlflow-venv`` and this test
runs in ``make test-mlflow``, which sets ``FASTRM_MLFLOW`` to its ``mlflow`` command. In the ordinary
suite (``make test``) it is skipped with that reason; the same attributes and the assessment requests
are checked there against the in-memory exporter and a loopback stand-in
(``tests/guardrail/test_viewer_spans.py``, ``tests/guardrail/test_viewers.py``).

The server listens on loopback only (127.0.0.1, a free port, a SQLite store in a temporary folder).
What is checked: the verdict of every answer as an assessment (``fastrm``: confident/uncertain, and
``fastrm.action``), the LLM span's inputs and outputs in OpenAI's chat format with the image (MLflow's
chat view), the span types LLM and GUARDRAIL.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

MLFLOW = os.environ.get("FASTRM_MLFLOW")
pytestmark = [
    pytest.mark.mlflow,
    pytest.mark.skipif(not MLFLOW, reason="real-viewer test: run `make test-mlflow` (sets FASTRM_MLFLOW)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    work = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = (work / "mlflow.log").open("wb")
    proc = subprocess.Popen(
        [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}", "--default-artifact-root", str(work / "artifacts")],
        cwd=work, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false",
                                                             "DO_NOT_TRACK": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"MLflow did not start: {(work / 'mlflow.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _mlflow_python(code: str, url: str) -> str:
    """Run ``code`` with the MLflow venv's Python (its client reads the server back)."""
    python = str(Path(MLFLOW).with_name("python"))
    out = subprocess.run([python, "-c", code], env={**os.environ, "MLFLOW_TRACKING_URI": url}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


_READ = """
import json, sys, mlflow
out = []
for tid in sys.argv[1:] if len(sys.argv) > 1 else {ids!r}:
    t = mlflow.get_trace(tid)
    if t is None:
        out.append(None)
        continue
    out.append({{"assessments": [{{"name": a.name, "value": a.feedback.value if a.feedback else None,
                                   "span_id": a.span_id, "rationale": a.rationale}} for a in t.info.assessments],
                "spans": [{{"name": s.name, "span_type": s.span_type, "inputs": s.inputs, "outputs": s.outputs,
                            "span_id": s.span_id}} for s in t.data.spans]}})
print(json.dumps(out))
"""


def _read_traces(url, trace_ids, want_assessments, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        traces = json.loads(_mlflow_python(_READ.format(ids=list(trace_ids)), url))
        ready = all(t is not None and len(t["assessments"]) >= n for t, n in zip(traces, want_assessments))
        if ready or time.monotonic() > deadline:
            return traces
        time.sleep(2)


def test_guarded_calls_in_mlflow(mlflow_server, tiny_llava, tiny_proxy, calibration_uncertain, tmp_path, monkeypatch):
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from guardrail.guard import Guard
    from guardrail.telemetry.exporters import configure_tracing
    from guardrail.telemetry.viewers import detect_viewer

    assert detect_viewer(mlflow_server) == "mlflow"
    image = tmp_path / "scene.png"
    img = Image.new("RGB", (96, 64), (128, 128, 128))
    ImageDraw.Draw(img).rectangle((40, 20, 56, 36), fill=(220, 30, 30))
    img.save(image)
    # the standard variables, as a user would set them; the viewer is detected, the experiment header added
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{mlflow_server}/v1/traces")
    provider = configure_tracing(service_name="fastrm-guard-test")
    local = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(local))
    guard = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider,
                  capture_content=True, model_name="tiny-llava")
    single = guard.generate(image, "What color is the square?", max_new_tokens=4, min_new_tokens=2)
    batch = guard.generate_batch([(image, "How many shapes?"), (image, "Where is the square?")], max_new_tokens=3)
    provider.force_flush()
    provider.shutdown()
    spans = local.get_finished_spans()
    trace_ids = sorted({f"tr-{s.context.trace_id:032x}" for s in spans})
    assert len(trace_ids) == 2
    traces = dict(zip(trace_ids, _read_traces(mlflow_server, trace_ids, [2, 4])))
    chat_single = next(s for s in spans if s.name == "chat tiny-llava" and s.attributes.get("output.value") == single.answer)
    one = traces[f"tr-{chat_single.context.trace_id:032x}"]
    two = next(t for tid, t in traces.items() if t is not one)
    # the verdict and the action as assessments, on the guard span
    names = {a["name"]: a for a in one["assessments"]}
    assert names["fastrm"]["value"] == single.verdict == "uncertain" and names["fastrm.action"]["value"] == single.action
    assert names["fastrm"]["rationale"] == single.reason
    assert sorted(a["value"] for a in two["assessments"] if a["name"] == "fastrm") == sorted(r.verdict for r in batch)
    # span types and the chat view (OpenAI-format messages with the image)
    by_name = {s["name"]: s for s in one["spans"]}
    assert by_name["chat tiny-llava"]["span_type"] == "LLM"
    assert by_name["apply_guardrail fastrm"]["span_type"] == "GUARDRAIL"
    inputs = by_name["chat tiny-llava"]["inputs"]
    assert inputs["messages"][0]["content"][0]["text"] == "What color is the square?"
    assert inputs["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png")
    assert by_name["chat tiny-llava"]["outputs"]["choices"][0]["message"]["content"] == single.answer
    rows = sorted(s["name"] for s in two["spans"] if s["name"].startswith("apply_guardrail"))
    assert rows == ["apply_guardrail fastrm [0]", "apply_guardrail fastrm [1]"]
    shots = os.environ.get("FASTRM_SCREENSHOTS")
    if shots:
        _screenshots(mlflow_server, f"tr-{chat_single.context.trace_id:032x}", Path(shots))


def _screenshots(url, trace_id, out):
    """MLflow's trace view of the single call (chat view, assessments), for docs/img
    (``FASTRM_SCREENSHOTS=docs/img make test-mlflow``)."""
    from playwright.sync_api import sync_playwright

    from tests.guardrail.test_report import chromium_path

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.goto(f"{url}/#/experiments/0/traces?selectedEvaluationId={trace_id}")
        page.wait_for_timeout(10000)
        shots = [out / "mlflow-llm-span.png", out / "mlflow-guardrail-span.png"]
        page.screenshot(path=str(shots[0]))
        page.get_by_text("apply_guardrail fastrm").first.click()
        page.wait_for_timeout(3000)
        page.screenshot(path=str(shots[1]))
        for shot in shots:
            Image.open(shot).convert("RGB").quantize(colors=128).save(shot, optimize=True)
        browser.close()
