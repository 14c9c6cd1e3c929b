"""What a viewer shows of a guarded call's spans: status, the answer's map as a picture, batch rows
as messages (through the SDK's in-memory exporter; tests/guardrail/test_phoenix.py checks it live)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from PIL import Image

from guardrail import Guard
from guardrail.telemetry.attributes import map_from_attributes

IN = "llm.input_messages"
OUT = "llm.output_messages"
IMAGE = "message_content.image.image.url"


def traced_guard(tiny_llava, tiny_proxy, calibration, capture=True):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration, tracer_provider=provider,
              capture_content=capture, model_name="tiny-llava")
    return g, exporter


def _png(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_spans_of_a_successful_call_are_ok(tiny_llava, tiny_proxy, calibration_uncertain, image):
    g, exporter = traced_guard(tiny_llava, tiny_proxy, calibration_uncertain, capture=False)
    g.generate(image, "What color?", max_new_tokens=3)
    g.generate_batch([(image, "What color?"), (image, "How many?")], max_new_tokens=3)
    spans = exporter.get_finished_spans()
    assert len(spans) == 5 and all(s.status.status_code is StatusCode.OK for s in spans)


def test_guard_span_shows_the_answer_map_as_a_picture(tiny_llava, tiny_proxy, calibration_uncertain, tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (64, 32), (200, 30, 30)).save(path)
    g, exporter = traced_guard(tiny_llava, tiny_proxy, calibration_uncertain)
    r = g.generate(path, "What color is the circle?", max_new_tokens=4, min_new_tokens=2)
    guard_span = next(s for s in exporter.get_finished_spans() if s.name == "apply_guardrail fastrm")
    a = guard_span.attributes
    # input: the conversation under test; output: the verdict in words and the map over the image
    assert a[f"{IN}.0.message.role"] == "user" and a[f"{IN}.0.message.contents.0.message_content.text"] == r.question
    assert a[f"{IN}.0.message.contents.1.{IMAGE}"].startswith("data:image/png")
    assert a[f"{IN}.1.message.role"] == "assistant" and a[f"{IN}.1.message.content"] == r.answer
    assert a[f"{OUT}.0.message.role"] == "assistant"
    assert a[f"{OUT}.0.message.contents.0.message_content.text"].startswith(f"{r.verdict} (score ")
    uri = a[f"{OUT}.0.message.contents.1.{IMAGE}"]
    assert len(uri) <= 32_000
    picture = _png(uri)
    assert max(picture.size) == 160 and picture.size == (160, 80)  # the image's aspect ratio
    # Phoenix draws the images of an LLM span's messages only: the chat span's answer has the picture beside it
    chat = next(s for s in exporter.get_finished_spans() if s.name == "chat tiny-llava")
    assert chat.attributes[f"{OUT}.0.message.contents.0.message_content.text"] == r.answer
    assert chat.attributes[f"{OUT}.0.message.contents.1.{IMAGE}"] == uri
    # the raw maps stay, in their compact encoding, for tools
    events = [e for e in guard_span.events if e.name == "fastrm.token"]
    assert len(events) == len(r.token_ids) and map_from_attributes(dict(events[0].attributes)) is not None
    assert json.loads(a["output.value"])["verdict"] == r.verdict


def test_chat_span_speaks_mlflow_chat_format(tiny_llava, tiny_proxy, calibration_uncertain, image):
    g, exporter = traced_guard(tiny_llava, tiny_proxy, calibration_uncertain)
    r = g.generate(image, "What color?", max_new_tokens=3)
    chat = next(s for s in exporter.get_finished_spans() if s.name == "chat tiny-llava")
    request = json.loads(chat.attributes["mlflow.spanInputs"])
    (user,) = request["messages"]
    assert user["role"] == "user" and user["content"][0] == {"type": "text", "text": "What color?"}
    assert user["content"][1]["image_url"]["url"].startswith("data:image/png")
    response = json.loads(chat.attributes["mlflow.spanOutputs"])
    assert response["choices"][0]["message"] == {"role": "assistant", "content": r.answer}


def test_no_picture_without_content_capture(tiny_llava, tiny_proxy, calibration_uncertain, image):
    g, exporter = traced_guard(tiny_llava, tiny_proxy, calibration_uncertain, capture=False)
    g.generate(image, "What color?", max_new_tokens=3)
    for s in exporter.get_finished_spans():
        assert not [k for k in s.attributes if k.startswith((IN, OUT))]
        assert not [v for v in s.attributes.values() if isinstance(v, str) and v.startswith("data:")]


def test_batch_rows_are_messages_with_their_images_and_indexed_span_names(tiny_llava, tiny_proxy,
                                                                          calibration_uncertain):
    images = [Image.new("RGB", (32, 32), c) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    questions = ["What color?", "How many circles?", "Where is the square?"]
    g, exporter = traced_guard(tiny_llava, tiny_proxy, calibration_uncertain)
    results = g.generate_batch(list(zip(images, questions)), max_new_tokens=3)
    spans = exporter.get_finished_spans()
    chat = next(s for s in spans if s.name == "chat tiny-llava")
    rows = {s.name: s for s in spans if s.name.startswith("apply_guardrail fastrm")}
    assert sorted(rows) == ["apply_guardrail fastrm [0]", "apply_guardrail fastrm [1]", "apply_guardrail fastrm [2]"]
    ca = chat.attributes
    for i, (q, r) in enumerate(zip(questions, results)):
        assert ca[f"{IN}.{i}.message.role"] == "user"
        assert ca[f"{IN}.{i}.message.contents.0.message_content.text"] == f"[{i}] {q}"
        assert _png(ca[f"{IN}.{i}.message.contents.1.{IMAGE}"]).getpixel((0, 0)) == images[i].getpixel((0, 0))
        assert ca[f"{OUT}.{i}.message.role"] == "assistant" and ca[f"{OUT}.{i}.message.content"] == f"[{i}] {r.answer}"
        row = rows[f"apply_guardrail fastrm [{i}]"].attributes
        assert row["fastrm.batch.index"] == i
        assert row[f"{IN}.0.message.contents.0.message_content.text"] == q
        assert _png(row[f"{IN}.0.message.contents.1.{IMAGE}"]).getpixel((0, 0)) == images[i].getpixel((0, 0))
        assert row[f"{IN}.1.message.content"] == r.answer
        assert row[f"{OUT}.0.message.contents.1.{IMAGE}"].startswith("data:image/png")
    # MLflow's chat view: OpenAI's request messages (with the images) and one choice per row
    mlflow_in = json.loads(ca["mlflow.spanInputs"])["messages"]
    assert [m["content"][0]["text"] for m in mlflow_in] == questions
    assert all(m["content"][1]["image_url"]["url"].startswith("data:image/png") for m in mlflow_in)
    choices = json.loads(ca["mlflow.spanOutputs"])["choices"]
    assert [(c["index"], c["message"]["content"]) for c in choices] == [(i, r.answer) for i, r in enumerate(results)]
    gen_in = json.loads(ca["gen_ai.input.messages"])
    assert [m["parts"][0]["content"] for m in gen_in] == questions
    assert json.loads(ca["input.value"]) == questions


def test_reading_a_batch_trace_back_finds_every_row(tiny_llava, tiny_proxy, calibration_uncertain, image, tmp_path):
    from guardrail.telemetry.exporters import configure_tracing, read_trace_jsonl
    from guardrail.traces.calls import guarded_calls

    provider = configure_tracing(jsonl_path=tmp_path / "t.jsonl", otlp_from_env=False)
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider,
              capture_content=True)
    g.generate_batch([(image, "What color?"), (image, "How many?")], max_new_tokens=3)
    provider.shutdown()
    calls = guarded_calls(read_trace_jsonl(tmp_path / "t.jsonl"))
    assert sorted(c["question"] for c in calls) == ["How many?", "What color?"]


@pytest.mark.parametrize("fits", [True, False])
def test_picture_is_size_bounded(fits):
    import numpy as np

    from guardrail.telemetry.map_image import overlay_data_uri

    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    uri = overlay_data_uri(noisy, rng.random((24, 24)), max_bytes=12_000 if fits else 200)
    if fits:
        assert uri is not None and len(uri) <= 12_000
    else:
        assert uri is None  # nothing fits: nothing is attached
