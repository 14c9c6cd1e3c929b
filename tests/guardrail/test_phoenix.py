"""Real-viewer test: guarded calls sent to a live Arize Phoenix, read back through its REST API.

Phoenix is large (``pip install arize-phoenix`` takes minutes), so it lives in its own virtual
environment made by ``make phoenix-venv`` and this test runs in ``make test-phoenix``, which sets
``FASTRM_PHOENIX`` to its ``phoenix`` command. In the ordinary suite (``make test``) the test is
skipped with that reason; the same checks against the SDK's in-memory exporter run there
(``tests/guardrail/test_guard.py::test_openinference_view_of_a_guarded_call``).

Phoenix serves on loopback only (127.0.0.1, free ports, a temporary working directory).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

PHOENIX = os.environ.get("FASTRM_PHOENIX")
pytestmark = [
    pytest.mark.phoenix,
    pytest.mark.skipif(not PHOENIX, reason="real-viewer test: run `make test-phoenix` (sets FASTRM_PHOENIX)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    work = tmp_path_factory.mktemp("phoenix")
    port, grpc = _free_port(), _free_port()
    env = {**os.environ, "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(port), "PHOENIX_GRPC_PORT": str(grpc),
           "PHOENIX_WORKING_DIR": str(work), "PHOENIX_TELEMETRY_ENABLED": "false", "DO_NOT_TRACK": "1"}
    log = (work / "phoenix.log").open("wb")
    proc = subprocess.Popen([PHOENIX, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Phoenix did not start: {(work / 'phoenix.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _spans(url, want, timeout=60):
    """The spans of the (fresh) Phoenix's default project, once ``want`` of them have arrived."""
    deadline = time.monotonic() + timeout
    while True:
        spans = _get(f"{url}/v1/projects/default/spans?limit=100")["data"]
        if len(spans) >= want or time.monotonic() > deadline:
            return spans
        time.sleep(1)


def test_guarded_calls_in_phoenix(phoenix, tiny_llava, tiny_proxy, calibration_uncertain, tmp_path):
    from guardrail.telemetry.exporters import configure_tracing
    from guardrail.guard import Guard
    from guardrail.telemetry.phoenix import PhoenixAnnotationExporter

    image = tmp_path / "scene.png"
    img = Image.new("RGB", (96, 64), (128, 128, 128))
    ImageDraw.Draw(img).rectangle((40, 20, 56, 36), fill=(220, 30, 30))
    img.save(image)
    provider = configure_tracing(otlp_endpoint=phoenix, otlp_from_env=False, service_name="fastrm-guard-test",
                                 exporters=[PhoenixAnnotationExporter(phoenix)])
    guard = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider,
                  capture_content=True, model_name="tiny-llava")
    questions = ["What color is the square?", "How many shapes are there?"]
    results = [guard.generate(image, q, max_new_tokens=4, min_new_tokens=2) for q in questions]
    batch_questions = ["Where is the square?", "Is there a circle?"]
    batch = guard.generate_batch([(image, q) for q in batch_questions], max_new_tokens=3)
    provider.force_flush()
    provider.shutdown()
    spans = _spans(phoenix, 11)
    chats = [s for s in spans if s["name"] == "chat tiny-llava"]
    views = [s for s in spans if s["name"] == "fastrm map"]
    guards = [s for s in spans if s["name"] == "apply_guardrail fastrm"]
    rows = sorted((s for s in spans if s["name"].startswith("apply_guardrail fastrm [")), key=lambda s: s["name"])
    assert len(chats) == 3 and len(guards) == 2 and len(rows) == 2, [s["name"] for s in spans]
    by_id = {s["context"]["span_id"]: s for s in spans}
    # under every guard span, an LLM-kind child carrying its messages: Phoenix draws the map picture there
    assert sorted(v["parent_id"] for v in views) == sorted(g["context"]["span_id"] for g in guards + rows)
    for v in views:
        assert v["span_kind"] == "LLM"
        assert v["attributes"]["llm.output_messages.0.message.contents.1.message_content.image.image.url"].startswith(
            "data:image/png;base64,")
    for g in guards:
        chat = by_id[g["parent_id"]]
        assert chat["span_kind"] == "LLM" and g["span_kind"] == "GUARDRAIL"
        assert chat["status_code"] == "OK" and g["status_code"] == "OK"
        # the answer's map over the image, as an image message on the guard span's output
        overlay = g["attributes"]["llm.output_messages.0.message.contents.1.message_content.image.image.url"]
        assert overlay.startswith("data:image/png;base64,") and len(overlay) <= 32_000
        ca, ga = chat["attributes"], g["attributes"]
        question = ca["input.value"]
        r = results[questions.index(question)]
        assert ca["output.value"] == r.answer and ca["llm.model_name"] == "tiny-llava"
        assert ca["llm.token_count.completion"] == len(r.token_ids)
        image_url = ca["llm.input_messages.0.message.contents.1.message_content.image.image.url"]
        assert image_url.startswith("data:image/png;base64,")
        assert ga["input.value"] == r.answer
        summary = json.loads(ga["output.value"])
        assert summary["verdict"] == r.verdict == "uncertain" and summary["action"] == r.action
        evaluation = [e for e in g["events"] if e["name"] == "gen_ai.evaluation.result"]
        assert len(evaluation) == 1
        assert evaluation[0]["attributes"]["gen_ai.evaluation.score.label"] == r.verdict
        assert evaluation[0]["attributes"]["gen_ai.evaluation.score.value"] == pytest.approx(r.score)
    # a batch: each row its own span, named with its index, with its question, image and answer as messages
    batch_chat = by_id[rows[0]["parent_id"]]
    for i, (row, q, r) in enumerate(zip(rows, batch_questions, batch)):
        ra = row["attributes"]
        assert row["name"] == f"apply_guardrail fastrm [{i}]" and row["parent_id"] == batch_chat["context"]["span_id"]
        assert ra["llm.input_messages.0.message.contents.0.message_content.text"] == q
        assert ra["llm.input_messages.0.message.contents.1.message_content.image.image.url"].startswith("data:image/")
        assert ra["llm.input_messages.1.message.content"] == r.answer
        bca = batch_chat["attributes"]
        assert bca[f"llm.input_messages.{i}.message.contents.1.message_content.image.image.url"].startswith("data:image/")
        assert bca[f"llm.output_messages.{i}.message.content"] == f"[{i}] {r.answer}"
    # the verdict and the action as Phoenix annotations (posted by PhoenixAnnotationExporter), on every guard
    # span and on every trace's root span (the trace list's annotation column)
    targets = [*guards, *rows, *chats]
    query = urllib.parse.urlencode([("span_ids", t["context"]["span_id"]) for t in targets])
    deadline = time.monotonic() + 60
    while True:
        notes = _get(f"{phoenix}/v1/projects/default/span_annotations?{query}&limit=100")["data"]
        if len(notes) >= 3 * len(targets) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(notes) == 3 * len(targets)
    for note in notes:
        t = by_id[note["span_id"]]
        assert note["annotator_kind"] == "CODE"
        if note["name"] == "fastrm.action":
            assert note["result"]["label"] == results[0].action
        elif note["name"] == "fastrm.score":
            if t["name"].startswith("apply_guardrail"):
                assert note["result"]["score"] == pytest.approx(t["attributes"]["fastrm.guardrail.score"])
        else:
            assert note["name"] == "fastrm" and note["result"]["label"] == "uncertain"
            assert note["result"].get("score") is None  # so that the chip shows the label
    shots = os.environ.get("FASTRM_SCREENSHOTS")
    if shots:
        view = next(v for v in views if v["parent_id"] == guards[0]["context"]["span_id"])
        _screenshots(phoenix, by_id[guards[0]["parent_id"]], guards[0], Path(shots), view)


def _screenshots(url, chat, guard, out, view=None):
    """Phoenix's trace view with the LLM span (image, messages) and with the GUARDRAIL span (annotation)
    selected, for docs/img (``FASTRM_SCREENSHOTS=docs/img make test-phoenix``)."""
    from playwright.sync_api import sync_playwright

    from tests.guardrail.test_report import chromium_path

    project = _get(f"{url}/v1/projects")["data"][0]["id"]
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.goto(f"{url}/projects/{project}")
        page.wait_for_timeout(8000)
        shot = out / "phoenix-trace-list.png"
        page.screenshot(path=str(shot))
        Image.open(shot).convert("RGB").quantize(colors=128).save(shot, optimize=True)
        shots = [(chat, "phoenix-llm-span.png"), (guard, "phoenix-guardrail-span.png")]
        if view is not None:  # the guard span's child that Phoenix draws the map picture in
            shots.append((view, "phoenix-map-span.png"))
        for span, name in shots:
            page.goto(f"{url}/projects/{project}/traces/{span['context']['trace_id']}?selectedSpanNodeId={span['id']}")
            page.wait_for_timeout(8000)
            shot = out / name
            page.screenshot(path=str(shot))
            Image.open(shot).convert("RGB").quantize(colors=128).save(shot, optimize=True)
            if name in ("phoenix-llm-span.png", "phoenix-map-span.png"):  # the output: the map over the image
                page.mouse.move(1000, 600)
                page.mouse.wheel(0, 700)
                page.wait_for_timeout(1500)
                shot = out / name.replace("-span.png", "-output.png").replace("phoenix-llm-output", "phoenix-llm-output")
                page.screenshot(path=str(shot))
                Image.open(shot).convert("RGB").quantize(colors=128).save(shot, optimize=True)
        browser.close()
