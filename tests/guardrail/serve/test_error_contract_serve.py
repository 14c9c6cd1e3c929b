"""The error contract (issues #18, #30) at the server's door: any request body gets an OpenAI-style
4xx naming the problem, or an answer; never a 500.

Hypothesis builds request bodies from the supported fields with valid and hostile values (wrong
types, NaN, subnormal temperatures, seeds beyond 2**64, junk and high-bit-depth images, deep
nesting) plus raw bytes. Derandomized with a fixed budget, like test_error_contract.py; ``slow``.
"""

from __future__ import annotations

import base64
import http.client
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("fastapi")

from guardrail.serve import LoopbackServer, ServeConfig, create_app

pytestmark = pytest.mark.slow  # Hypothesis runs (make test-fast skips the whole module)

MODEL = "reference-llava"
CONTRACT = settings(derandomize=True, deadline=None, database=None, max_examples=80,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])
ANSWERED = {200, 400, 404, 413, 415}


def _data_url(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


_RGB = _data_url(Image.new("RGB", (8, 8), (200, 30, 30)))
_IMAGE_URLS = st.sampled_from([
    _RGB,
    _data_url(Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000))),  # 16-bit PNG
    _data_url(Image.fromarray(np.full((8, 8), 0.5, np.float32)), "TIFF"),  # float: refused
    _data_url(Image.fromarray(np.arange(64, dtype=np.int32).reshape(8, 8)), "TIFF"),  # 32-bit: refused
    _data_url(Image.new("P", (8, 8))), _data_url(Image.new("LA", (8, 8))), _data_url(Image.new("CMYK", (8, 8)), "JPEG"),
    "data:image/png;base64,!!!", "data:image/png,notbase64", "data:image/png;base64,", "https://example.com/a.png",
    "file:///etc/passwd", "", "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 30).decode(),
])
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
_parts = st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.just("What color is it?"), st.text(max_size=20))}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": _IMAGE_URLS})}),
    _json,
), min_size=0, max_size=3)
_messages = st.one_of(
    st.builds(lambda url, q: [{"role": "user", "content": [{"type": "text", "text": q},
                                                           {"type": "image_url", "image_url": {"url": url}}]}],
              _IMAGE_URLS, st.sampled_from(["What color is the circle?", " ", "x" * 5000])),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", ""]),
                                    "content": st.one_of(_parts, st.text(max_size=10), _json)}), max_size=2),
    _json,
)
_number = st.one_of(st.floats(), st.sampled_from([5e-324, 1e-300, 0.0, 0.009, 0.01, 0.7, 2.0, 2.5, -1.0]), _json)
_fields = {
    "model": st.one_of(st.just(MODEL), _json),
    "messages": _messages,
    "max_tokens": st.one_of(st.integers(-2, 3), _json),
    "max_completion_tokens": st.one_of(st.integers(0, 3), _json),
    "temperature": _number,
    "top_p": _number,
    "seed": st.one_of(st.sampled_from([0, -1, 2**63, 2**64 - 1, 2**64, 2**70, -(2**63) - 1]), _json),
    "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=5), _json),
    "n": st.one_of(st.just(1), _json),
    "user": _json,
    "guardrail": st.one_of(st.fixed_dictionaries({}, optional={"maps": st.booleans(), "tags": _json,
                                                                "hold_until_verdict": _json}), _json),
    "frequency_penalty": _json,
}
_bodies = st.one_of(
    st.fixed_dictionaries({"messages": _messages, "max_tokens": st.integers(1, 3)},
                          optional={k: v for k, v in _fields.items() if k not in ("messages", "max_tokens")}
                          ).map(json.dumps),
    st.fixed_dictionaries({}, optional=_fields).map(json.dumps),
    _json.map(json.dumps),
    st.integers(1, 200_000).map(lambda d: '{"messages":' + "[" * d + "]" * d + "}"),
    st.binary(max_size=64),
)


@pytest.fixture(scope="module")
def server(reference_guard):
    with LoopbackServer(create_app(reference_guard, config=ServeConfig(max_tokens=3))) as s:
        yield s


@settings(CONTRACT)
@given(body=_bodies)
def test_any_request_body_gets_a_4xx_or_an_answer_never_a_500(server, body):
    conn = http.client.HTTPConnection(server.url[7:], timeout=120)
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    conn.request("POST", "/v1/chat/completions", body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    assert resp.status in ANSWERED, (resp.status, raw[:300])
    if resp.getheader("content-type", "").startswith("text/event-stream"):
        assert raw.rstrip().endswith(b"data: [DONE]")
        return
    out = json.loads(raw)
    if resp.status == 200:
        assert out["object"] == "chat.completion"
    else:
        assert set(out["error"]) == {"message", "type", "param", "code"} and out["error"]["message"]


def test_no_500_was_counted(server):
    conn = http.client.HTTPConnection(server.url[7:], timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    assert 'status="500"' not in text
