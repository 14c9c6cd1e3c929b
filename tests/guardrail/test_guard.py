import json
import threading

import numpy as np
import pytest
import torch
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fastrm_core import FastRMProxy, ProxyConfig, get_adapter
from fastrm_common.errors import ConfigMismatchError, InputError
from guardrail import Guard, GuardResult, TokenEvent
from guardrail.telemetry.attributes import map_from_attributes
from policies import load_policy


KW = dict(max_new_tokens=5, min_new_tokens=5)


def policy_file(tmp_path, body: str):
    path = tmp_path / "policy.yaml"
    path.write_text(body)
    return load_policy(path)


def hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def guard(tiny_llava, tiny_proxy, calibration_uncertain):
    model, processor = tiny_llava
    return Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain)


def test_result_is_complete_and_consistent(guard, image):
    r = guard.generate(image, "What color is the circle?", **KW)
    assert isinstance(r, GuardResult)
    assert r.maps.shape == (len(r.token_ids), 4, 4) and len(r.entropies) == len(r.token_ids) == len(r.tokens)
    assert all(0.0 <= e <= 1.0 for e in r.entropies)
    content = [e for e, c in zip(r.entropies, r.content) if c]
    assert r.score == pytest.approx(np.mean(content))
    assert r.verdict == ("confident" if r.score < r.threshold else "uncertain") == "uncertain"
    assert (r.action, r.rule, r.flagged, r.text) == ("flag", "uncertain", True, r.answer)
    assert r.timings.model_s > 0 and r.timings.total_s >= r.timings.model_s
    assert r.patch_threshold == guard.proxy.config.classification_threshold
    relevant = r.relevant_patches()
    assert relevant.dtype == bool and relevant.shape == r.maps.shape
    assert np.array_equal(relevant, r.maps >= r.patch_threshold)
    dumped = json.loads(r.model_dump_json())  # serialisable, maps included
    assert dumped["patch_threshold"] == r.patch_threshold


def test_guarded_tokens_equal_plain_generate(guard, tiny_llava, image):
    model, processor = tiny_llava
    r = guard.generate(image, "What color is the circle?", **KW)
    inputs = guard.prepare([image], ["What color is the circle?"])
    plain = model.generate(**inputs, do_sample=False, **KW)[0, inputs["input_ids"].shape[1]:].tolist()
    assert r.token_ids == plain[: len(r.token_ids)]


@pytest.mark.parametrize("action,expect_text", [("allow", None), ("flag", None), ("abstain", "I cannot answer that reliably.")])
def test_each_action(tiny_llava, tiny_proxy, calibration_uncertain, image, tmp_path, action, expect_text):
    extra = f"\n    message: {expect_text}" if action == "abstain" else ""
    policy = policy_file(tmp_path, f"""
id: t
version: "2"
rules:
  - name: unsure
    when: {{verdict: uncertain}}
    action: {action}{extra}
default: {{action: allow}}
""")
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, policy=policy)
    r = g.generate(image, "What color?", **KW)
    assert r.action == action and r.rule == "unsure" and r.policy_version == "2"
    assert r.text == (expect_text if expect_text else r.answer)
    assert r.flagged == (action == "flag")


def test_escalation_to_queue_and_confident_default(tiny_llava, tiny_proxy, calibration_uncertain, calibration_confident,
                                                   image, tmp_path):
    queue = tmp_path / "q" / "escalations.jsonl"
    policy = policy_file(tmp_path, f"""
id: esc
version: "1"
rules:
  - name: review
    when: {{verdict: uncertain, tags_any: [medical]}}
    action: escalate
    escalation: {{queue: {queue}, withhold: true}}
default: {{action: allow}}
""")
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, policy=policy)
    plain = g.generate(image, "What color?", **KW)
    assert plain.action == "allow" and not queue.exists()  # tag missing: the rule does not match
    r = g.generate(image, "What color?", tags=["medical"], **KW)
    assert r.action == "escalate" and r.text != r.answer
    lines = queue.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["payload"]["answer"] == r.answer
    sure = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_confident, policy=policy)
    r2 = sure.generate(image, "What color?", tags=["medical"], **KW)
    assert r2.verdict == "confident" and r2.action == "allow"


def test_stream_yields_each_token_with_its_map_then_the_result(guard, image):
    events = list(guard.stream(image, "What color is the circle?", **KW))
    tokens, final = events[:-1], events[-1]
    assert all(isinstance(e, TokenEvent) for e in tokens) and isinstance(final, GuardResult)
    assert [e.token_id for e in tokens][: len(final.token_ids)] == final.token_ids
    for e in tokens[: len(final.token_ids)]:
        np.testing.assert_allclose(e.map, final.maps[e.index], rtol=1e-6)
    batch = guard.generate(image, "What color is the circle?", **KW)
    assert batch.token_ids == final.token_ids and batch.score == pytest.approx(final.score)


def test_batch_equals_single_calls(guard, image):
    from fastrm_core.testing import blank_image

    items = [(image, "What color is the circle?"), (blank_image(32, (10, 200, 10)), "How many?")]
    batch = guard.generate_batch(items, max_new_tokens=4)
    for (img, q), b in zip(items, batch):
        single = guard.generate(img, q, max_new_tokens=4)
        assert single.token_ids == b.token_ids
        np.testing.assert_allclose(single.maps, b.maps, rtol=1e-4, atol=1e-6)


def test_threads_give_serial_results(guard, image):
    from fastrm_core.testing import blank_image

    questions = ["What color?", "How many circles?", "What shape is the red object?", "Is there a square?"]
    images = [blank_image(32, (40 * i, 100, 200 - 40 * i)) for i in range(4)]
    serial = [guard.generate(img, q, **KW) for img, q in zip(images, questions)]
    out = [None] * 4

    def call(i):
        out[i] = guard.generate(images[i], questions[i], **KW)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for a, b in zip(serial, out):
        assert a.token_ids == b.token_ids and a.score == pytest.approx(b.score)
        np.testing.assert_array_equal(a.maps, b.maps)


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
def test_guard_failure_follows_on_error(tiny_llava, tiny_proxy, calibration_uncertain, image, tmp_path, mode):
    model, processor = tiny_llava
    policy = policy_file(tmp_path, f"id: p\nversion: '1'\non_error: {mode}\nabstain_message: Withheld.\ndefault: {{action: allow}}\n")
    g = Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain, policy=policy)
    expected = g.generate(image, "What color?", **KW)
    before = hooks(model)
    norm = get_adapter(model).final_norm
    handle = norm.register_forward_hook(lambda m, a, o: o * float("nan"))
    try:
        r = g.generate(image, "What color?", **KW)
    finally:
        handle.remove()
    assert hooks(model) == before
    assert r.unguarded and r.rule == "on_error" and "non-finite" in r.error and r.maps is None
    assert r.relevant_patches() is None
    if mode == "fail_open":
        assert r.action == "flag" and r.flagged and r.text == r.answer
    else:
        assert r.action == "abstain" and r.text == "Withheld." and r.answer == ""
    assert expected.error is None


def test_bad_input_fails_before_generation(guard, tmp_path, tiny_llava, tiny_proxy):
    model, _ = tiny_llava
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InputError, match="image not found"):
            guard.generate(tmp_path / "missing.png", "What?")
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not an image")
        with pytest.raises(InputError, match="unreadable image"):
            guard.generate(bad, "What?")
        with pytest.raises(InputError, match="question is empty"):
            guard.generate(np.zeros((8, 8, 3), dtype=np.uint8), "  ")
        with pytest.raises(InputError, match="not supported under guard"):
            guard.generate(np.zeros((8, 8, 3), dtype=np.uint8), "What?", num_beams=3)
    finally:
        handle.remove()
    assert calls == []


def test_artifacts_must_match(tiny_llava, tiny_proxy, make_cal):
    make_calibration = make_cal
    model, processor = tiny_llava
    wrong_proxy = FastRMProxy(ProxyConfig(hidden_size=32, n_image_tokens=16, grid=(4, 4)))
    with pytest.raises(ConfigMismatchError, match="hidden size 32"):
        Guard(model, processor, proxy=wrong_proxy, calibration=make_calibration())
    other = make_calibration(model_id="llava-1.5-7b-hf")
    with pytest.raises(ConfigMismatchError, match="llava-1.5-7b-hf"):
        Guard(model, processor, proxy=tiny_proxy, calibration=other)
    stale = make_calibration(proxy_hash="sha256:0000")
    with pytest.raises(ConfigMismatchError, match="proxy hash"):
        Guard(model, processor, proxy=tiny_proxy, calibration=stale)


def in_memory_provider():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_spans_names_parentage_attributes_and_maps(tiny_llava, tiny_proxy, calibration_uncertain, image):
    provider, exporter = in_memory_provider()
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider,
              model_name="tiny-llava")
    r = g.generate(image, "What color is the circle?", **KW)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    chat, guard_span = spans["chat tiny-llava"], spans["apply_guardrail fastrm"]
    assert guard_span.parent.span_id == chat.context.span_id
    a = chat.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "tiny-llava"
    assert a["gen_ai.usage.output_tokens"] == len(r.token_ids) and a["gen_ai.usage.input_tokens"] > 16
    assert tuple(a["gen_ai.response.finish_reasons"]) == (r.finish_reason,)
    assert "gen_ai.input.messages" not in a  # content capture is off by default
    ga = guard_span.attributes
    assert ga["fastrm.guardrail.verdict"] == r.verdict and ga["fastrm.guardrail.action"] == r.action
    assert ga["fastrm.guardrail.score"] == pytest.approx(r.score)
    assert ga["fastrm.guardrail.threshold"] == pytest.approx(r.threshold)
    assert ga["fastrm.guardrail.policy.id"] == "default"
    events = [e for e in guard_span.events if e.name == "fastrm.token"]
    assert len(events) == len(r.token_ids)
    assert any(e.name == "gen_ai.evaluation.result" for e in guard_span.events)
    for i, e in enumerate(events):
        decoded = map_from_attributes(dict(e.attributes))
        lo, hi = r.maps[i].min(), r.maps[i].max()
        np.testing.assert_allclose(decoded, r.maps[i], atol=(hi - lo) / 255 / 2 + 1e-7)
        assert "fastrm.token.text" not in e.attributes


def test_content_capture_records_text(tiny_llava, tiny_proxy, calibration_uncertain, image):
    provider, exporter = in_memory_provider()
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider,
              capture_content=True)
    r = g.generate(image, "What color is the circle?", **KW)
    chat = [s for s in exporter.get_finished_spans() if s.name.startswith("chat")][0]
    assert "What color is the circle?" in chat.attributes["gen_ai.input.messages"]
    assert r.text in chat.attributes["gen_ai.output.messages"]


def test_broken_exporter_never_breaks_the_call(tiny_llava, tiny_proxy, calibration_uncertain, image):
    from opentelemetry.sdk.trace.export import SpanExporter

    class Exploding(SpanExporter):
        def export(self, spans):
            raise RuntimeError("collector down")

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Exploding()))
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider)
    r = g.generate(image, "What color?", **KW)
    assert r.error is None and r.verdict == "uncertain"


def test_span_identity_attributes_and_maps_file(tiny_llava, tiny_proxy, calibration_uncertain, image, tmp_path):
    from safetensors.numpy import load_file

    provider, exporter = in_memory_provider()
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider,
              maps_dir=tmp_path / "maps")
    r = g.generate(image, "What color?", **KW)
    span = [s for s in exporter.get_finished_spans() if s.name == "apply_guardrail fastrm"][0]
    a = span.attributes
    assert a["fastrm.score.aggregation"] == "mean" and tuple(a["fastrm.map.grid"]) == (4, 4)
    assert a["fastrm.proxy.id"] == tiny_proxy.fingerprint() and a["fastrm.calibration.id"].startswith("paper_midpoint@")
    assert a["fastrm.duration.model_s"] > 0
    np.testing.assert_array_equal(load_file(a["fastrm.maps.file"])["maps"], r.maps.astype(np.float32))


def test_hanging_exporter_does_not_slow_the_call_beyond_a_bound(tiny_llava, tiny_proxy, calibration_uncertain, image):
    import time

    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from guardrail import configure_tracing

    class Hanging(SpanExporter):
        def export(self, spans):
            time.sleep(5)
            return SpanExportResult.SUCCESS

    provider = configure_tracing(exporters=[Hanging()], otlp_from_env=False, export_timeout_s=0.5)
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider)
    g.generate(image, "What color?", **KW)  # warm-up
    start = time.perf_counter()
    for _ in range(3):
        r = g.generate(image, "What color?", **KW)
    assert r.error is None and time.perf_counter() - start < 3.0
    t0 = time.perf_counter()
    provider.shutdown()
    assert time.perf_counter() - t0 < 3.0


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
def test_stream_failure_follows_on_error(tiny_llava, tiny_proxy, calibration_uncertain, image, tmp_path, mode):
    model, processor = tiny_llava
    policy = policy_file(tmp_path, f"id: p\nversion: '1'\non_error: {mode}\nabstain_message: Withheld.\ndefault: {{action: allow}}\n")
    import copy

    expected = Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain).generate(image, "What color?", **KW)
    broken = copy.deepcopy(tiny_proxy)
    with torch.no_grad():
        broken.q_proj.weight.fill_(float("nan"))  # the proxy fails, the model is fine
    g = Guard(model, processor, proxy=broken, calibration=calibration_uncertain, policy=policy)
    events = list(g.stream(image, "What color?", **KW))
    final = events[-1]
    assert isinstance(final, GuardResult) and final.unguarded and "non-finite" in final.error
    if mode == "fail_open":
        assert final.action == "flag" and final.answer == expected.answer and final.text == expected.answer
    else:
        assert final.action == "abstain" and final.text == "Withheld." and final.answer == ""


def test_answer_without_content_is_uncertain_and_reaches_the_policy(tiny_llava, tiny_proxy, calibration_confident,
                                                                    image, tmp_path):
    model, processor = tiny_llava
    tok = processor.tokenizer
    policy = policy_file(tmp_path, """
id: p
version: "1"
rules:
  - name: nothing-scored
    when: {n_answer_tokens: {lt: 1}}
    action: abstain
default: {action: allow}
""")
    g = Guard(model, processor, proxy=tiny_proxy, calibration=calibration_confident, policy=policy)
    # force an answer made of punctuation only: every word token is suppressed
    words = [i for i in range(len(tok)) if tok.decode([i]).strip().isalpha()]
    r = g.generate(image, "What color?", max_new_tokens=3, suppress_tokens=words + [get_adapter(model).image_token_id])
    assert r.score is None and r.verdict == "uncertain" and not any(r.content)
    assert r.rule == "nothing-scored" and r.action == "abstain" and r.error is None


def test_prompt_suffix_is_appended(tiny_llava, tiny_proxy, calibration_uncertain):
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, prompt_suffix="Answer briefly.")
    assert g.prompt("What color?") == "USER: <image>\nWhat color? Answer briefly. ASSISTANT:"


def test_openinference_view_of_a_guarded_call(tiny_llava, tiny_proxy, calibration_uncertain, tmp_path):
    """What Phoenix reads (tests/guardrail/test_phoenix.py checks it live), here through the in-memory exporter:
    span kinds, input/output, the image as a data URI, the evaluation event; the guard span covers the guard's
    work; token events carry their own times."""
    import json

    from PIL import Image

    from guardrail.telemetry.phoenix import annotation_for

    path = tmp_path / "wide.png"
    Image.new("RGB", (64, 32), (200, 30, 30)).save(path)
    provider, exporter = in_memory_provider()
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider,
              capture_content=True, model_name="tiny-llava")
    r = g.generate(path, "What color is the circle?", max_new_tokens=5, min_new_tokens=3)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    chat, guard_span = spans["chat tiny-llava"], spans["apply_guardrail fastrm"]
    a, ga = chat.attributes, guard_span.attributes
    assert a["openinference.span.kind"] == "LLM" and ga["openinference.span.kind"] == "GUARDRAIL"
    assert a["input.value"] == "What color is the circle?" and a["output.value"] == r.answer
    assert a["llm.input_messages.0.message.contents.1.message_content.image.image.url"].startswith("data:image/png")
    assert a["llm.token_count.prompt"] == a["gen_ai.usage.input_tokens"] and a["llm.token_count.completion"] == len(r.token_ids)
    assert ga["input.value"] == r.answer and json.loads(ga["output.value"])["verdict"] == r.verdict
    assert ga["fastrm.image.path"] == str(path.resolve()) and tuple(ga["fastrm.image.size"]) == (64, 32)
    assert len(ga["fastrm.image.sha256"]) == 64
    assert tuple(ga["fastrm.image.box"]) == (16.0, 0.0, 48.0, 32.0)  # the tiny processor's centre crop
    evaluation = [e for e in guard_span.events if e.name == "gen_ai.evaluation.result"]
    assert evaluation[0].attributes["gen_ai.evaluation.score.value"] == pytest.approx(r.score)
    # the guard span covers scoring, deciding and escalating: its duration is at least the measured guard time
    assert (guard_span.end_time - guard_span.start_time) / 1e9 >= ga["fastrm.duration.guard_s"]
    assert guard_span.start_time >= chat.start_time and guard_span.end_time <= chat.end_time
    # token events carry the times the tokens came out, in order, inside the chat span, not one shared time
    times = [e.timestamp for e in guard_span.events if e.name == "fastrm.token"]
    assert len(times) == len(r.token_ids) >= 3 and times == sorted(times) and len(set(times)) == len(times)
    assert chat.start_time <= times[0] and times[-1] < guard_span.start_time
    note = annotation_for(f"{guard_span.context.span_id:016x}", dict(ga))
    assert note["result"] == {"label": r.verdict, "explanation": r.reason}
    assert note["metadata"]["score"] == pytest.approx(r.score)


def test_batch_rows_have_their_own_counts_and_content(tiny_llava, tiny_proxy, calibration_uncertain, image):
    provider, exporter = in_memory_provider()
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider,
              capture_content=True, model_name="tiny-llava")
    questions = ["What color?", "How many circles are in the picture?", "Where is the square?"]
    results = g.generate_batch([(image, q) for q in questions], max_new_tokens=4)
    spans = exporter.get_finished_spans()
    chat = next(s for s in spans if s.name == "chat tiny-llava")
    rows = sorted((s for s in spans if s.name.startswith("apply_guardrail fastrm")),
                  key=lambda s: s.attributes["fastrm.batch.index"])
    assert [s.attributes["fastrm.batch.index"] for s in rows] == [0, 1, 2]
    assert all(s.attributes["fastrm.batch.size"] == 3 for s in rows)
    assert [s.attributes["fastrm.guardrail.question"] for s in rows] == questions
    inputs = [s.attributes["fastrm.usage.input_tokens"] for s in rows]
    assert len(set(inputs)) == 3  # each row's own prompt, not the padded length
    assert chat.attributes["gen_ai.usage.input_tokens"] == sum(inputs)
    assert chat.attributes["gen_ai.usage.output_tokens"] == sum(len(r.token_ids) for r in results)
    assert [s.attributes["fastrm.usage.output_tokens"] for s in rows] == [len(r.token_ids) for r in results]
    assert json.loads(chat.attributes["input.value"]) == questions
    # the result says the same count: this row's prompt as the model saw it, without the batch's padding
    assert [r.prompt_tokens for r in results] == inputs
    alone = g.processor(images=image, text=g.prompt(questions[1]), return_tensors="pt")["input_ids"].shape[1]
    assert results[1].prompt_tokens == alone


def test_withheld_answer_is_recorded_and_escalation_has_trace_ids(tiny_llava, tiny_proxy, calibration_uncertain,
                                                                 image, tmp_path):
    import json

    from policies import parse_policy

    queue = tmp_path / "q.jsonl"
    policy = parse_policy(f"id: p\nversion: 1\ndefault: {{action: escalate, escalation: {{queue: {queue}, "
                          f"withhold: true, message: under review}}}}\n")
    provider, exporter = in_memory_provider()
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider,
              policy=policy, capture_content=True, model_name="tiny-llava")
    r = g.generate(image, "What color?", max_new_tokens=4, min_new_tokens=2)
    assert r.action == "escalate" and r.text == "under review"
    spans = {s.name: s for s in exporter.get_finished_spans()}
    chat, guard_span = spans["chat tiny-llava"], spans["apply_guardrail fastrm"]
    assert chat.attributes["output.value"] == r.answer != "under review"
    assert "under review" not in chat.attributes["gen_ai.output.messages"]
    assert guard_span.attributes["fastrm.guardrail.answer"] == r.answer
    assert guard_span.attributes["fastrm.guardrail.returned_text"] == "under review"
    record = json.loads(queue.read_text())
    assert record["trace_id"] == f"{guard_span.context.trace_id:032x}"
    assert record["span_id"] == f"{guard_span.context.span_id:016x}"
    p = record["payload"]
    assert p["answer"] == r.answer and p["returned_text"] == "under review" and p["model"] == "tiny-llava"
    assert len(p["image"]["sha256"]) == 64 and p["image"]["data_uri"].startswith("data:image/png")
