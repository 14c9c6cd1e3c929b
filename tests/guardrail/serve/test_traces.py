"""Each chat request is a SERVER span continuing the caller's traceparent, parent of the Guard's chat span."""

import threading

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from guardrail import Guard
from guardrail.serve import LoopbackServer, ServeConfig, create_app
from guardrail.serve.app import BATCH_SPAN_NAME

from .conftest import user_message

MODEL = "reference-llava"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def traced(reference_guard):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    guard = Guard(reference_guard.model, reference_guard.processor, proxy=reference_guard.proxy,
                  calibration=reference_guard.calibration, tracer_provider=provider)
    return guard, provider, exporter


def spans_by_name(exporter):
    out = {}
    for s in exporter.get_finished_spans():
        out.setdefault(s.name, []).append(s)
    return out


def test_server_span_continues_traceparent_and_parents_the_guard_span(traced, scenes):
    guard, provider, exporter = traced
    image, question = scenes[0]
    with LoopbackServer(create_app(guard, tracer_provider=provider)) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        r = c.chat.completions.create(model=MODEL, messages=user_message(image, question),
                                      extra_headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        chunks = list(c.chat.completions.create(model=MODEL, messages=user_message(image, question), stream=True,
                                                extra_headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}))
    assert r.model_extra["guardrail"]["trace_id"] == TRACE
    assert chunks[-1].model_extra["guardrail"]["trace_id"] == TRACE
    spans = spans_by_name(exporter)
    servers = spans["POST /v1/chat/completions"]
    chats = spans[f"chat {guard.model_name}"]
    assert len(servers) == 2 and len(chats) == 2
    for server, chat in zip(servers, sorted(chats, key=lambda x: x.start_time)):
        assert server.kind == SpanKind.SERVER and server.context.trace_id == int(TRACE, 16)
        assert server.parent.span_id == int(PARENT, 16) and server.parent.is_remote
        assert chat.parent.span_id == server.context.span_id and chat.context.trace_id == int(TRACE, 16)
        assert server.attributes["http.response.status_code"] == 200
    guardrail_spans = spans["apply_guardrail fastrm"]
    assert {g.parent.span_id for g in guardrail_spans} == {c.context.span_id for c in chats}


def test_without_traceparent_a_new_trace_starts(traced, scenes):
    guard, provider, exporter = traced
    with LoopbackServer(create_app(guard, tracer_provider=provider)) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        r = c.chat.completions.create(model=MODEL, messages=user_message(*scenes[0]))
    server = spans_by_name(exporter)["POST /v1/chat/completions"][0]
    assert server.parent is None and r.model_extra["guardrail"]["trace_id"] == f"{server.context.trace_id:032x}"


def test_a_batch_runs_under_a_span_linked_to_every_request(traced, scenes):
    guard, provider, exporter = traced
    app = create_app(guard, tracer_provider=provider, config=ServeConfig(max_batch_size=4, max_wait_ms=300))
    with LoopbackServer(app) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=60)
        threads = [threading.Thread(target=c.chat.completions.create,
                                    kwargs=dict(model=MODEL, messages=user_message(*scenes[k]))) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    spans = spans_by_name(exporter)
    batches = spans.get(BATCH_SPAN_NAME, [])
    assert batches, f"no batch formed: {app.state.guardrail.batcher.stats.sizes}"
    servers = {s.context.span_id: s for s in spans["POST /v1/chat/completions"]}
    for batch in batches:
        linked = {link.context.span_id for link in batch.links}
        assert len(linked) == batch.attributes["fastrm.serve.batch.size"] > 1 and linked <= set(servers)
        assert batch.parent.span_id in linked  # under its oldest request
        chat = [c for c in spans[f"chat {guard.model_name}"] if c.parent.span_id == batch.context.span_id]
        assert len(chat) == 1


def test_request_span_is_a_chain_with_the_request_and_the_verdict(reference_guard, scenes):
    """Phoenix's span list shows the request span with a kind, what was asked and what came back, status
    OK; its verdict becomes the trace root's annotation."""
    import json

    from guardrail.telemetry.phoenix import PhoenixAnnotationExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    guard = Guard(reference_guard.model, reference_guard.processor, proxy=reference_guard.proxy,
                  calibration=reference_guard.calibration, tracer_provider=provider, capture_content=True)
    image, question = scenes[0]
    with LoopbackServer(create_app(guard, tracer_provider=provider)) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        r = c.chat.completions.create(model=MODEL, messages=user_message(image, question), max_tokens=6)
    g = r.model_extra["guardrail"]
    server = spans_by_name(exporter)["POST /v1/chat/completions"][0]
    a = server.attributes
    assert a["openinference.span.kind"] == "CHAIN" and server.status.status_code is StatusCode.OK
    asked = json.loads(a["input.value"])
    assert asked["question"] == question and asked["max_new_tokens"] == 6 and asked["stream"] is False
    answered = json.loads(a["output.value"])
    assert answered["verdict"] == g["verdict"] and answered["action"] == g["action"]
    assert answered["text"] == r.choices[0].message.content
    assert a["fastrm.serve.verdict"] == g["verdict"] and a["fastrm.serve.score"] == pytest.approx(g["score"])
    notes = PhoenixAnnotationExporter("http://127.0.0.1:9").notes_for(exporter.get_finished_spans())
    root = [n for n in notes if n.root]
    assert len(root) == 1 and root[0].span_id == f"{server.context.span_id:016x}" and root[0].label == g["verdict"]


def _traced_client(url, client_provider):
    """The documented recipe (docs/serve.md): the openai client sends the current span as ``traceparent``."""
    from opentelemetry import propagate

    def inject(request):
        propagate.inject(request.headers)

    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0,
                         http_client=openai.DefaultHttpxClient(event_hooks={"request": [inject]}))


def test_a_traced_client_and_the_server_are_one_trace(traced, scenes):
    guard, provider, exporter = traced
    client_spans = InMemorySpanExporter()
    client_provider = TracerProvider()
    client_provider.add_span_processor(SimpleSpanProcessor(client_spans))
    tracer = client_provider.get_tracer("app")
    with LoopbackServer(create_app(guard, tracer_provider=provider)) as s:
        c = _traced_client(s.url, client_provider)
        with tracer.start_as_current_span("ChatCompletion") as mine:  # what an instrumentor opens around the call
            r = c.chat.completions.create(model=MODEL, messages=user_message(*scenes[0]))
    server = spans_by_name(exporter)["POST /v1/chat/completions"][0]
    assert server.parent.span_id == mine.get_span_context().span_id and server.parent.is_remote
    assert r.model_extra["guardrail"]["trace_id"] == f"{mine.get_span_context().trace_id:032x}"


def test_an_openinference_instrumented_client_and_the_server_are_one_trace(traced, scenes):
    instrumentation = pytest.importorskip("openinference.instrumentation.openai")
    guard, provider, exporter = traced
    client_spans = InMemorySpanExporter()
    client_provider = TracerProvider()
    client_provider.add_span_processor(SimpleSpanProcessor(client_spans))
    instrumentor = instrumentation.OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=client_provider)
    try:
        with LoopbackServer(create_app(guard, tracer_provider=provider)) as s:
            _traced_client(s.url, client_provider).chat.completions.create(model=MODEL,
                                                                             messages=user_message(*scenes[0]))
    finally:
        instrumentor.uninstrument()
    (llm,) = [sp for sp in client_spans.get_finished_spans() if sp.attributes.get("openinference.span.kind") == "LLM"]
    server = spans_by_name(exporter)["POST /v1/chat/completions"][0]
    assert server.context.trace_id == llm.context.trace_id and server.parent.span_id == llm.context.span_id
