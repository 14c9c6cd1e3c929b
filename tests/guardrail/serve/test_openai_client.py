"""The official openai client against `guardrail serve`'s app on 127.0.0.1: what an unmodified app sees."""

import http.client
import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from guardrail import Guard
from guardrail.serve import LoopbackServer, ServeConfig, create_app
from policies.schema import Policy

from .conftest import CountingGuard, user_message

MODEL = "reference-llava"
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def server(reference_guard):
    with LoopbackServer(create_app(reference_guard, config=ServeConfig(api_key=KEY, max_batch_size=8))) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_binds_loopback_only(server):
    assert server.url.startswith("http://127.0.0.1:")


def test_plain_call_equals_guard_generate(client, reference_guard, scenes):
    image, question = scenes[2]
    direct = reference_guard.generate(image, question)
    r = client.chat.completions.create(model=MODEL, messages=user_message(image, question))
    g = r.model_extra["guardrail"]
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == direct.text
    assert r.choices[0].finish_reason == direct.finish_reason == "stop"
    assert g["token_ids"] == direct.token_ids and r.usage.completion_tokens == len(direct.token_ids)
    assert (g["verdict"], g["action"], g["rule"], g["flagged"]) == (direct.verdict, direct.action, direct.rule,
                                                                    direct.flagged)
    assert g["score"] == pytest.approx(direct.score, abs=1e-6) and g["threshold"] == direct.threshold
    assert g["scores"] and g["policy"] == {"id": "default", "version": "1"}
    # the prompt as the model saw it: the image's tokens and the question's, counted by the processor
    seen = reference_guard.processor(images=image, text=reference_guard.prompt(question), return_tensors="pt")
    assert r.usage.prompt_tokens == direct.prompt_tokens == seen["input_ids"].shape[1] > 64
    assert "maps" not in g


def test_maps_on_request_decode_to_the_guard_maps(client, reference_guard, scenes):
    from guardrail import decode_map

    image, question = scenes[0]
    direct = reference_guard.generate(image, question)
    r = client.chat.completions.create(model=MODEL, messages=user_message(image, question),
                                       extra_body={"guardrail": {"maps": True}})
    maps = r.model_extra["guardrail"]["maps"]
    assert maps["grid"] == [8, 8] and len(maps["tokens"]) == len(direct.token_ids)
    for tok, m in zip(maps["tokens"], direct.maps):
        assert abs(decode_map(tok["map"]) - m).max() <= 1 / 255 / 2 + 1e-4


def test_streamed_call_shows_tokens_then_the_verdict(client, reference_guard, scenes):
    image, question = scenes[4]
    direct = reference_guard.generate(image, question)
    chunks = list(client.chat.completions.create(model=MODEL, messages=user_message(image, question), stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_body={"guardrail": {"maps": True}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct.text
    per_token = [c.model_extra["guardrail"]["token"] for c in chunks
                 if c.choices and "token" in (c.model_extra.get("guardrail") or {})]
    assert [t["token_id"] for t in per_token] == direct.token_ids
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    g = final.model_extra["guardrail"]
    assert final.choices[0].finish_reason == "stop" and g["verdict"] == direct.verdict
    assert g["action"] == direct.action and g["token_ids"] == direct.token_ids and g["text"] == direct.text
    assert chunks[-1].usage.completion_tokens == len(direct.token_ids) and not chunks[-1].choices


def test_hold_until_verdict_sends_text_only_after_the_verdict(client, scenes):
    image, question = scenes[1]
    chunks = list(client.chat.completions.create(model=MODEL, messages=user_message(image, question), stream=True,
                                                 extra_body={"guardrail": {"hold_until_verdict": True}}))
    with_text = [i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content]
    final = [i for i, c in enumerate(chunks) if c.choices and c.choices[0].finish_reason]
    assert len(with_text) == 1 and final == [with_text[0] + 1]


def test_stop_strings_cut_the_shown_text(client, reference_guard, scenes):
    image, question = next((i, q) for i, q in scenes if len(reference_guard.generate(i, q).text) > 2)
    full = reference_guard.generate(image, question).text
    stop = full[1:3]
    r = client.chat.completions.create(model=MODEL, messages=user_message(image, question), stop=[stop])
    assert r.choices[0].message.content == full[:1] and r.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model=MODEL, messages=user_message(image, question), stop=stop,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full[:1]


def test_bad_request_is_a_400_naming_the_problem(client, scenes):
    image, question = scenes[0]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=user_message(image, question), presence_penalty=0.5)
    assert err.value.status_code == 400 and "unsupported fields: presence_penalty" in err.value.message
    with pytest.raises(openai.BadRequestError, match="not fetched"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/a.png"}}]}])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=user_message(image, question))


def test_auth_required_and_refused(server, scenes):
    image, question = scenes[0]
    for key in ("wrong", KEY[:-1], KEY + "x"):
        bad = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model=MODEL, messages=user_message(image, question))
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    conn = http.client.HTTPConnection(server.url[7:], timeout=10)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    assert resp.status == 401 and resp.getheader("WWW-Authenticate") == "Bearer"


def test_models_health_ready_and_metrics(client, server, scenes):
    assert [m.id for m in client.models.list().data] == [MODEL]
    image, question = scenes[0]  # one answer of its own (under pytest-xdist, another worker may run the rest)
    client.chat.completions.create(model=MODEL, messages=user_message(image, question))
    conn = http.client.HTTPConnection(server.url[7:], timeout=10)
    for path, status in (("/healthz", 200), ("/readyz", 200)):
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == status, resp.read()
        resp.read()
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    text = resp.read().decode()
    assert resp.status == 200 and "guardrail_serve_batches_total" in text
    assert 'guardrail_serve_responses_total{route="/v1/chat/completions",status="200"}' in text


def test_body_limit_is_a_413_before_parsing(reference_guard, scenes):
    image, question = scenes[0]
    app = create_app(reference_guard, config=ServeConfig(max_body_bytes=1000))
    with LoopbackServer(app) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model=MODEL, messages=user_message(image, question))
        assert err.value.status_code == 413 and "larger than 1000 bytes" in err.value.message


def test_errors_carry_no_stack_trace(reference_guard, scenes):
    class Broken(CountingGuard):
        def generate_batch(self, items, **kwargs):
            raise RuntimeError("secret internals /home/user/other-request.png")

    image, question = scenes[0]
    with LoopbackServer(create_app(Broken(reference_guard))) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.InternalServerError) as err:
            c.chat.completions.create(model=MODEL, messages=user_message(image, question))
    body = err.value.response.text
    assert "secret" not in body and "Traceback" not in body, body
    assert err.value.body["message"] == "internal server error"


def test_policy_abstain_replaces_the_answer(reference_guard, scenes):
    policy = Policy.model_validate({"id": "abstain-all", "version": "2", "abstain_message": "I cannot tell.",
                                    "default": {"action": "abstain", "reason": "test"}})
    g = Guard(reference_guard.model, reference_guard.processor, proxy=reference_guard.proxy,
              calibration=reference_guard.calibration, policy=policy)
    image, question = scenes[0]
    with LoopbackServer(create_app(g)) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        r = c.chat.completions.create(model=MODEL, messages=user_message(image, question))
        assert r.choices[0].message.content == "I cannot tell." and r.choices[0].finish_reason == "content_filter"
        assert r.model_extra["guardrail"]["action"] == "abstain"
        held = list(c.chat.completions.create(model=MODEL, messages=user_message(image, question), stream=True,
                                              extra_body={"guardrail": {"hold_until_verdict": True}}))
        assert "".join(ch.choices[0].delta.content or "" for ch in held if ch.choices) == "I cannot tell."
        assert [ch.choices[0].finish_reason for ch in held if ch.choices][-1] == "content_filter"


def test_503_while_loading_then_ready(reference_guard, scenes):
    release = threading.Event()

    def slow_loader():
        release.wait(30)
        return reference_guard

    image, question = scenes[0]
    with LoopbackServer(create_app(loader=slow_loader)) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model=MODEL, messages=user_message(image, question))
        assert err.value.status_code == 503 and err.value.response.headers["retry-after"]
        conn = http.client.HTTPConnection(s.url[7:], timeout=10)
        conn.request("GET", "/readyz")
        assert conn.getresponse().status == 503
        release.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection(s.url[7:], timeout=10)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                break
            time.sleep(0.05)
        assert c.chat.completions.create(model=MODEL, messages=user_message(image, question)).choices[0].message.content


# ------------------------------------------------------------------------------------------ batching
def test_concurrent_clients_get_serial_answers_from_fewer_batches(reference_guard, scenes):
    serial = [reference_guard.generate(i, q) for i, q in scenes]
    counting = CountingGuard(reference_guard)
    with LoopbackServer(create_app(counting, config=ServeConfig(max_batch_size=8, max_wait_ms=200))) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=60)
        out = [None] * len(scenes)

        def ask(k):
            out[k] = c.chat.completions.create(model=MODEL, messages=user_message(*scenes[k]))

        threads = [threading.Thread(target=ask, args=(k,)) for k in range(len(scenes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    for r, d in zip(out, serial):
        g = r.model_extra["guardrail"]
        assert r.choices[0].message.content == d.text and g["token_ids"] == d.token_ids
        assert g["verdict"] == d.verdict and g["action"] == d.action
    assert sum(counting.batch_sizes) == len(scenes) and len(counting.batch_sizes) < len(scenes)
    assert max(counting.batch_sizes) > 1


def test_queue_full_is_429_with_retry_after(reference_guard, scenes):
    gate = threading.Event()
    counting = CountingGuard(reference_guard, gate=gate)
    image, question = scenes[0]
    app = create_app(counting, config=ServeConfig(max_batch_size=1, max_wait_ms=0, max_queue=1))
    with LoopbackServer(app) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=60)
        results = {}

        def ask(name):
            results[name] = c.chat.completions.create(model=MODEL, messages=user_message(image, question))

        first = threading.Thread(target=ask, args=("running",))
        first.start()
        assert counting.entered.wait(10)  # on the (held) model
        second = threading.Thread(target=ask, args=("queued",))
        second.start()
        deadline = time.monotonic() + 10
        while app.state.guardrail.batcher.depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as err:
            c.chat.completions.create(model=MODEL, messages=user_message(image, question))
        assert int(err.value.response.headers["retry-after"]) >= 1
        gate.set()
        first.join(30)
        second.join(30)
    assert set(results) == {"running", "queued"} and counting.batch_sizes == [1, 1]


def test_client_disconnect_cancels_queued_work(reference_guard, scenes):
    gate = threading.Event()
    counting = CountingGuard(reference_guard, gate=gate)
    image, question = scenes[0]
    app = create_app(counting, config=ServeConfig(max_batch_size=1, max_wait_ms=0))
    body = json.dumps({"model": MODEL, "messages": user_message(image, question)}).encode()
    with LoopbackServer(app) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=60)
        first = threading.Thread(target=lambda: c.chat.completions.create(model=MODEL,
                                                                          messages=user_message(image, question)))
        first.start()
        assert counting.entered.wait(10)
        port = int(s.url.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        batcher = app.state.guardrail.batcher
        deadline = time.monotonic() + 10
        while batcher.depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.depth == 1
        sock.close()  # the caller leaves while queued
        while batcher.stats.cancelled < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        first.join(30)
        time.sleep(0.2)
    assert batcher.stats.cancelled == 1 and counting.batch_sizes == [1]  # the dropped request never ran


def test_shutdown_drains_in_flight_requests(reference_guard, scenes):
    gate = threading.Event()
    counting = CountingGuard(reference_guard, gate=gate)
    image, question = scenes[0]
    server = LoopbackServer(create_app(counting, config=ServeConfig(max_batch_size=1))).start()
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault(
        "r", c.chat.completions.create(model=MODEL, messages=user_message(image, question))))
    worker.start()
    assert counting.entered.wait(10)  # the request is on the model
    stopper = threading.Thread(target=server.stop)
    stopper.start()  # shutdown begins while the request is in flight
    time.sleep(0.3)
    gate.set()
    worker.join(30)
    stopper.join(30)
    assert out["r"].choices[0].message.content  # answered, not dropped


def test_a_stream_whose_client_leaves_frees_its_slot(reference_guard, scenes):
    gate = threading.Event()

    class HeldStream(CountingGuard):
        def stream(self, image, question, **kwargs):
            self.entered.set()
            assert self.gate.wait(30)
            yield from self._guard.stream(image, question, **kwargs)

    held = HeldStream(reference_guard, gate=gate)
    image, question = scenes[0]
    app = create_app(held)
    body = json.dumps({"model": MODEL, "stream": True, "messages": user_message(image, question)}).encode()
    with LoopbackServer(app) as s:
        sock = socket.create_connection(("127.0.0.1", int(s.url.rsplit(":", 1)[1])))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert held.entered.wait(10)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # headers and the role chunk
        batcher = app.state.guardrail.batcher
        assert batcher.depth == 1  # the stream holds a queue slot
        sock.close()
        time.sleep(0.3)
        gate.set()
        deadline = time.monotonic() + 20
        while batcher.depth and time.monotonic() < deadline:
            time.sleep(0.05)
        assert batcher.depth == 0
        text = app.state.guardrail.metrics.render(batcher.stats, queue_depth=0, in_flight=0, ready=True)
        assert 'status="499"' in text  # recorded as a client that went away
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        assert c.chat.completions.create(model=MODEL, messages=user_message(image, question)).choices[0].message.content
