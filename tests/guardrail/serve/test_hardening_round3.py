"""Hardening round 3 (issue #30), the server's rows: each hostile input gets a clear 4xx, never a 500,
a hang or a lost trace."""

import base64
import http.client
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from fastrm_common.errors import InputError
from guardrail import Guard
from guardrail.telemetry.exporters import JsonlFileSpanExporter
from guardrail.telemetry.otlp_json import read_trace_jsonl
from guardrail.serve import LoopbackServer, ServeConfig, create_app
from guardrail.serve import app as app_module
from guardrail.serve.images import image_from_url
from guardrail.serve.protocol import RequestError, json_depth_exceeds, parse_chat_request, parse_json_body

from .conftest import CountingGuard, user_message

MODEL = "reference-llava"
KEY = "s3cret-key"
JSON = {"Content-Type": "application/json"}


def post(server, body, headers=JSON, path="/v1/chat/completions"):
    conn = http.client.HTTPConnection(server.url[7:], timeout=60)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers=headers)
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read() or b"null")


def get(server, path, headers=None):
    conn = http.client.HTTPConnection(server.url[7:], timeout=60)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


def chat_body(image, question, **over):
    return {"model": MODEL, "messages": user_message(image, question), **over}


def png_data_url(img: Image.Image, fmt="PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def server(reference_guard):
    with LoopbackServer(create_app(reference_guard)) as s:
        yield s


# ------------------------------------------------------------------------------------ the request body
def test_deeply_nested_json_is_a_400_not_a_500(server):
    depth = 100_000
    body = b'{"messages":' + b"[" * depth + b"]" * depth + b"}"
    status, err = post(server, body)
    assert status == 400, err
    assert "nests deeper than 32 levels" in err["error"]["message"]


def test_json_depth_is_bounded_before_parsing():
    assert not json_depth_exceeds(b'{"a": [[1]], "b": "[[[[[[\\"[["}', 3)
    assert json_depth_exceeds(b"[[[[]]]]", 3)
    with pytest.raises(RequestError, match="nests deeper"):
        parse_json_body(b"[" * 1_000_000, max_depth=32)
    with pytest.raises(RequestError, match="not valid JSON"):
        parse_json_body(b'{"a": 1', max_depth=32)


@pytest.mark.parametrize("over, param", [
    ({"temperature": 5e-324}, "temperature"),
    ({"temperature": 0.001}, "temperature"),
    ({"seed": 2**64}, "seed"),
    ({"seed": 2**70}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
])
def test_out_of_range_sampling_settings_are_a_400(server, scenes, over, param):
    image, question = scenes[0]
    status, err = post(server, chat_body(image, question, **over))
    assert status == 400, err
    assert err["error"]["param"] == param and param in err["error"]["message"]


def test_the_server_and_the_api_share_one_sampling_check(reference_guard, scenes):
    image, question = scenes[0]
    loader = lambda url: image  # noqa: E731
    args = dict(image_loader=loader, max_tokens=64, default_max_tokens=4, max_question_chars=200)
    body = chat_body(image, question, temperature=5e-324)
    with pytest.raises(RequestError) as server_err:
        parse_chat_request(body, **args)
    with pytest.raises(InputError) as api_err:
        reference_guard.generate(image, question, do_sample=True, temperature=5e-324, max_new_tokens=2)
    assert str(server_err.value) == str(api_err.value)
    call = parse_chat_request(chat_body(image, question, seed=2**64 - 1, temperature=0.5), **args)
    assert call.seed == 2**64 - 1  # the largest seed torch.manual_seed takes


def test_non_stream_500s_are_counted_in_metrics(reference_guard, scenes):
    class Broken(CountingGuard):
        def generate_batch(self, items, **kwargs):
            raise RuntimeError("boom")

    image, question = scenes[0]
    with LoopbackServer(create_app(Broken(reference_guard))) as s:
        status, err = post(s, chat_body(image, question))
        assert status == 500 and err["error"]["message"] == "internal server error"
        _, text = get(s, "/metrics")
    assert 'guardrail_serve_responses_total{route="/v1/chat/completions",status="500"} 1' in text


def test_image_decoding_runs_off_the_event_loop(reference_guard, scenes, monkeypatch):
    """A slow decode (a large image) must not stall /healthz: parsing runs on a worker thread."""
    decoding = threading.Event()

    def slow_loader(url, **kw):
        decoding.set()
        time.sleep(3.0)  # what decoding a 4096x4096 PNG costs on a busy machine
        raise InputError("the test's image is never decoded")

    monkeypatch.setattr(app_module, "image_from_url", slow_loader)
    image, question = scenes[0]
    with LoopbackServer(create_app(reference_guard)) as s:
        results = []
        worker = threading.Thread(target=lambda: results.append(post(s, chat_body(image, question))))
        worker.start()
        assert decoding.wait(30)
        t0 = time.perf_counter()
        status, _ = get(s, "/healthz")
        took = time.perf_counter() - t0
        worker.join(60)
    assert status == 200 and took < 1.5, took
    assert results and results[0][0] == 400


# ------------------------------------------------------------------------------------ auth and origins
def test_an_empty_api_key_is_refused_at_start(monkeypatch):
    from rich.console import Console

    from guardrail.cli import main

    monkeypatch.delenv("GUARDRAIL_API_KEY", raising=False)
    buf = io.StringIO()
    # --max-batch-size 0 is a tripwire: should the empty key pass, the command fails on it, never serves
    code = main(["serve", "--api-key", "", "--max-batch-size", "0"],
                console=Console(file=buf, width=200, color_system=None))
    assert code == 2 and "--api-key is empty" in buf.getvalue()
    for key in ("", "   "):
        with pytest.raises(ValueError, match="API key is empty"):
            ServeConfig(api_key=key)


def test_a_keyless_server_refuses_browser_forgeable_requests(server, scenes):
    image, question = scenes[0]
    body = chat_body(image, question)
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, err = post(server, body, headers={"Content-Type": ctype})
        assert status == 415 and "application/json" in err["error"]["message"], (ctype, err)
    status, err = post(server, body, headers={})
    assert status == 415
    status, err = post(server, body, headers={**JSON, "Origin": "https://evil.example"})
    assert status == 403 and err["error"]["code"] == "origin_not_allowed"


def test_allowed_origins_and_keyed_servers_are_not_refused_by_origin(reference_guard, scenes):
    image, question = scenes[0]
    body = chat_body(image, question, max_tokens=2)
    config = ServeConfig(cors_origins=("https://app.example",))
    with LoopbackServer(create_app(reference_guard, config=config)) as s:
        status, _ = post(s, body, headers={**JSON, "Origin": "https://app.example", "Content-Type": "application/json; charset=utf-8"})
        assert status == 200
    with LoopbackServer(create_app(reference_guard, config=ServeConfig(api_key=KEY))) as s:
        status, _ = post(s, body, headers={**JSON, "Origin": "https://evil.example"})
        assert status == 401  # the key decides: a browser cannot add the Authorization header cross-site
        status, _ = post(s, body, headers={**JSON, "Origin": "https://x.example", "Authorization": f"Bearer {KEY}"})
        assert status == 200


def test_readyz_names_the_model_only_to_authorized_callers(reference_guard):
    with LoopbackServer(create_app(reference_guard, config=ServeConfig(api_key=KEY))) as s:
        status, text = get(s, "/readyz")
        assert status == 200 and json.loads(text) == {"status": "ready"}
        status, text = get(s, "/readyz", headers={"Authorization": f"Bearer {KEY}"})
        assert json.loads(text) == {"status": "ready", "model": MODEL}


# ------------------------------------------------------------------------------------ images
def ramp16() -> Image.Image:
    return Image.fromarray((np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16))


def test_a_16_bit_png_is_scaled_by_its_range_not_clipped():
    img = image_from_url(png_data_url(ramp16()), max_pixels=10_000)
    gray = np.asarray(img)[..., 0]
    assert img.mode == "RGB" and gray.min() == 0 and gray.max() == 255
    assert len(np.unique(gray)) > 200  # a ramp, not 0 and 255


def test_a_float_image_is_refused_clearly():
    img = Image.fromarray(np.full((8, 8), 0.5, np.float32))
    with pytest.raises(InputError, match="mode 'F'.*no fixed range"):
        image_from_url(png_data_url(img, fmt="TIFF"), max_pixels=10_000)


def test_the_server_answers_a_16_bit_png_with_its_grey_levels(server):
    status, out = post(server, {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What color is the square?"},
        {"type": "image_url", "image_url": {"url": png_data_url(ramp16())}}]}]})
    assert status == 200, out


# ------------------------------------------------------------------------------------ shutdown and sockets
def test_shutdown_flushes_the_spans_of_a_recent_request(reference_guard, scenes, tmp_path):
    """SIGTERM makes uvicorn return and re-raise the signal: only the app's shutdown is sure to run."""
    path = tmp_path / "t.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(JsonlFileSpanExporter(path), schedule_delay_millis=600_000))
    guard = Guard(reference_guard.model, reference_guard.processor, proxy=reference_guard.proxy,
                  calibration=reference_guard.calibration, tracer_provider=provider)
    image, question = scenes[0]
    with LoopbackServer(create_app(guard, tracer_provider=provider)) as s:
        status, _ = post(s, chat_body(image, question, max_tokens=2))
        assert status == 200
        assert not path.exists()  # still buffered in the processor
    names = {span["name"] for span in read_trace_jsonl(path)}
    assert "POST /v1/chat/completions" in names and any(n.startswith("chat ") for n in names)
    provider.shutdown()


def test_a_connection_that_never_finishes_its_headers_is_closed(reference_guard):
    with LoopbackServer(create_app(reference_guard), header_timeout_s=0.5) as s:
        host, port = s.url[7:].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            t0 = time.perf_counter()
            assert sock.recv(1024) == b""  # closed by the server
            assert time.perf_counter() - t0 < 5
        with socket.create_connection((host, int(port)), timeout=10) as sock:  # an idle socket, not one byte
            assert sock.recv(1024) == b""
        status, _ = get(s, "/healthz")  # complete requests are unaffected
        assert status == 200
