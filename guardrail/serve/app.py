"""The guarded OpenAI-compatible endpoint as a FastAPI app (``create_app``).

Routes: ``POST /v1/chat/completions`` (plain or SSE stream), ``GET /v1/models``, ``/healthz``
(the process lives), ``/readyz`` (the model is loaded), ``/metrics`` (Prometheus text).

A chat request is checked (auth, body size, fields, image, limits) before any model work, then
queued in the :class:`~guardrail.serve.batching.Batcher`, which answers concurrent requests
with one ``Guard.generate_batch`` call. Streams run ``Guard.stream`` and hold a queue slot
meanwhile. Every use of the Guard and its tokenizer (batches, streams, token counting, decoding
streamed text) happens on the batcher's one worker thread: a Hugging Face fast tokenizer must not
be used from two threads while one of them changes its padding settings, and the model is one
anyway, so nothing is lost. Every chat request is a SERVER span (the caller's W3C
``traceparent`` continued), the parent of the Guard's ``chat`` span; a batch of several
requests runs under a ``guardrail.serve batch`` span linked to each request's span.

Errors are OpenAI-style JSON objects; a failure inside the server is a 500 with a fixed
message (the details go to the server's log, never to the caller).

A chat request must be sent as ``Content-Type: application/json`` (415 otherwise): a browser
can send a cross-site ``text/plain`` POST without asking first, never an ``application/json``
one. A server without an API key also refuses (403) a request whose ``Origin`` header names a
site outside ``cors_origins``, so a web page (or a DNS-rebound name) cannot drive it from a
browser. The body's nesting depth is bounded before it is parsed, and parsing and image decoding
run on a worker thread, off the event loop, so ``/healthz`` answers while large images decode.
On shutdown, once in-flight requests are drained, the tracer provider is flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from fastrm_common.errors import GuardrailError, InputError
from guardrail.guard import DEFAULT_MAX_NEW_TOKENS
import guardrail.telemetry.semconv as semconv
from guardrail.result import BatchItemError
from guardrail.telemetry.attributes import verdict_label
from guardrail.telemetry.mapcodec import encode_map

from guardrail.serve.batching import Batcher, QueueFull
from guardrail.serve.config import ServeConfig
from guardrail.serve.images import image_from_url
from guardrail.serve.http_metrics import ServerMetrics
from guardrail.serve.protocol import (
    ChatCall,
    RequestError,
    chat_completion,
    completion_id,
    cut_at_stop,
    error_body,
    finish_reason,
    guardrail_object,
    parse_chat_request,
    parse_json_body,
    replaced_by_policy,
    shown_text,
    claim_object,
    stream_chunk,
)

__all__ = ["create_app"]

log = logging.getLogger("guardrail.serve")
CHAT_ROUTE = "/v1/chat/completions"
BATCH_SPAN_NAME = "guardrail.serve batch"
_TRACER_NAME = "guardrail.serve"


@dataclass
class _Job:
    call: ChatCall
    ctx: Any  # the OpenTelemetry context of the request's server span


class _State:
    """What the routes share: the Guard (None while loading), the batcher, counters."""

    def __init__(self, config: ServeConfig, guard, loader, tracer_provider):
        self.config = config
        self.guard = guard
        self.loader = loader
        self.load_error: Optional[str] = None
        self.metrics = ServerMetrics()
        self.tracer = trace.get_tracer(_TRACER_NAME, tracer_provider=tracer_provider)
        self.batcher = Batcher(self._run_batch, max_batch_size=config.max_batch_size,
                               max_wait_s=config.max_wait_ms / 1000.0, max_queue=config.max_queue)
        self.started = int(time.time())

    @property
    def model_name(self) -> Optional[str]:
        if self.config.model_name:
            return self.config.model_name
        return None if self.guard is None else self.guard.model_name

    def load(self) -> None:
        try:
            self.guard = self.loader()
        except Exception as exc:  # reported on /readyz; the details go to the log
            log.exception("loading the guard failed")
            self.load_error = type(exc).__name__

    # -------------------------------------------------------------- the batch function (worker thread)
    def _run_batch(self, jobs: Sequence[_Job], key: Hashable) -> list:
        """One ``generate_batch`` for jobs of equal settings: ``(result, prompt tokens)`` per job, or its exception."""
        calls = [j.call for j in jobs]
        token = otel_context.attach(jobs[0].ctx)
        try:
            if len(jobs) == 1:
                results = self._generate(calls)
            else:
                links = [Link(trace.get_current_span(j.ctx).get_span_context()) for j in jobs]
                with self.tracer.start_as_current_span(BATCH_SPAN_NAME, kind=SpanKind.INTERNAL, links=links) as span:
                    span.set_attribute(semconv.SERVE_BATCH_SIZE, len(jobs))
                    results = self._generate(calls)
        finally:
            otel_context.detach(token)
        return [r if isinstance(r, BaseException) else (r, r.prompt_tokens or 0) for r in results]

    def _generate(self, calls: Sequence[ChatCall]) -> list:
        first = calls[0]
        if first.seed is not None:
            import torch

            torch.manual_seed(first.seed)  # seeded requests run alone (see _batch_key)
        # one bad input must not fail its neighbours: each refused item gets its own error
        results = self.guard.generate_batch([(c.image, c.question) for c in calls], tags=first.options.tags,
                                            return_errors=True, **first.generate_kwargs)
        return [r.error if isinstance(r, BatchItemError) else r for r in results]


def _batch_key(call: ChatCall) -> Hashable:
    if call.seed is not None:  # a seed is reproducible only when the request runs alone
        return ("seeded", id(call))
    return call.batch_key


def _error(status: int, message: str, *, type_: str = "invalid_request_error", param=None, code=None,
           headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_=type_, param=param, code=code), status_code=status, headers=headers)


def _trace_id(span) -> Optional[str]:
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.trace_id else None


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(guard=None, *, loader: Optional[Callable[[], Any]] = None, config: Optional[ServeConfig] = None,
               tracer_provider: Optional[trace.TracerProvider] = None, instance_id: Optional[str] = None) -> FastAPI:
    """The guarded endpoint for ``guard`` (a :class:`guardrail.Guard`), or for the Guard ``loader()`` returns.

    With a ``loader``, the model loads on a background thread once the server starts; until it
    is ready, ``/readyz`` and the API answer 503 with ``Retry-After``. ``instance_id`` (e.g. a
    Ray Serve replica's id) is sent back in the ``X-Guardrail-Instance`` header of every response.

        >>> app = create_app(Guard.from_pretrained("reference"), config=ServeConfig(max_batch_size=16))
        >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    if (guard is None) == (loader is None):
        raise ValueError("pass either a guard or a loader")
    config = config or ServeConfig()
    state = _State(config, guard, loader, tracer_provider)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher.start()
        if state.guard is None:
            threading.Thread(target=state.load, name="guardrail-serve-load", daemon=True).start()
        yield
        await state.batcher.drain(config.shutdown_timeout_s)
        _flush_traces(tracer_provider, config.shutdown_timeout_s)

    app = FastAPI(title="fastrm-guard", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.guardrail = state
    if instance_id is not None:
        app.add_middleware(_InstanceHeader, value=str(instance_id))
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "traceparent", "tracestate"])

    def authorized(request: Request) -> bool:
        key = config.api_key
        if key is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), key.encode())

    def forgeable(request: Request) -> Optional[JSONResponse]:
        """A 415/403 for a request a web page could send from a browser without a CORS preflight."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return _error(415, "send the request body as JSON with 'Content-Type: application/json'",
                          code="unsupported_media_type")
        origin = request.headers.get("origin")
        if config.api_key is None and origin is not None and origin not in config.cors_origins:
            return _error(403, "cross-origin requests are refused by a server without an API key "
                               "(start it with --api-key, or allow the origin with --cors-origin)",
                          code="origin_not_allowed")
        return None

    def refuse_auth() -> JSONResponse:
        return _error(401, "missing or wrong API key (send Authorization: Bearer <key>)", code="invalid_api_key",
                      headers={"WWW-Authenticate": "Bearer"})

    def not_ready() -> Optional[JSONResponse]:
        if state.guard is not None:
            return None
        if state.load_error is not None:
            return _error(503, "the model failed to load; see the server log", type_="server_error")
        return _error(503, "the model is loading; retry shortly", type_="server_error", code="model_loading",
                      headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):  # never a stack trace to the caller
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, "internal server error", type_="server_error")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request):
        if state.guard is not None:  # the model's name only to whom /v1/models would tell it
            return {"status": "ready", "model": state.model_name} if authorized(request) else {"status": "ready"}
        status = "failed" if state.load_error else "loading"
        return JSONResponse({"status": status}, status_code=503)

    @app.get("/metrics")
    async def metrics(request: Request):
        if not authorized(request):
            return refuse_auth()
        text = state.metrics.render(state.batcher.stats, queue_depth=state.batcher.depth,
                                    in_flight=state.batcher.in_flight, ready=state.guard is not None)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        if not authorized(request):
            return refuse_auth()
        if (resp := not_ready()) is not None:
            return resp
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.started,
                                            "owned_by": "fastrm-guard"}]}

    @app.post(CHAT_ROUTE)
    async def chat(request: Request):
        parent = propagate.extract(dict(request.headers))
        span = state.tracer.start_span(f"POST {CHAT_ROUTE}", context=parent, kind=SpanKind.SERVER, attributes={
            semconv.HTTP_REQUEST_METHOD: "POST", semconv.URL_PATH: CHAT_ROUTE, semconv.HTTP_ROUTE: CHAT_ROUTE,
            semconv.SERVER_ADDRESS: request.url.hostname or "", semconv.NETWORK_PROTOCOL_NAME: "http",
            semconv.OPENINFERENCE_SPAN_KIND: semconv.OPENINFERENCE_KIND_CHAIN})
        started = time.perf_counter()
        streaming = False
        try:
            with trace.use_span(span, end_on_exit=False):
                response = await _chat(request, span, started)
            streaming = isinstance(response, StreamingResponse)
            return response
        except Exception as exc:  # answered 500 by _internal: counted here, as a stream's 500 is
            span.set_attribute(semconv.ERROR_TYPE, type(exc).__qualname__)
            finish_span(span, 500)
            raise
        finally:
            if not streaming:  # a stream ends its span when its last chunk is sent
                span.end()

    def finish_span(span, status: int) -> None:
        span.set_attribute(semconv.HTTP_RESPONSE_STATUS_CODE, status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        elif status < 400:
            span.set_status(Status(StatusCode.OK))
        state.metrics.response(CHAT_ROUTE, status)

    async def _chat(request: Request, span, started: float):
        def fail(status, message, **kw):
            finish_span(span, status)
            if status < 500:
                span.set_attribute(semconv.ERROR_TYPE, str(status))
            return _error(status, message, **kw)

        if not authorized(request):
            finish_span(span, 401)
            return refuse_auth()
        if (resp := forgeable(request)) is not None:
            finish_span(span, resp.status_code)
            return resp
        if (resp := not_ready()) is not None:
            finish_span(span, 503)
            return resp
        # limits before any model work: body size, fields, image, tokens
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            return fail(413, f"the request body is larger than {config.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body_bytes:
                return fail(413, f"the request body is larger than {config.max_body_bytes} bytes")
        guard = state.guard

        def load(url: str):
            return image_from_url(url, max_pixels=config.max_image_pixels, image_dir=config.image_dir)

        def parse() -> ChatCall:
            """Depth-checked JSON, then the fields and the image: on a worker thread, off the event loop."""
            payload = parse_json_body(bytes(body), max_depth=config.max_json_depth)
            if isinstance(payload, dict) and payload.get("model") not in (None, state.model_name):
                raise RequestError(f"the model {str(payload.get('model'))[:200]!r} does not exist; this server "
                                   f"serves {state.model_name!r}", status=404, param="model", code="model_not_found")
            return parse_chat_request(payload, image_loader=load, max_tokens=config.max_tokens,
                                      default_max_tokens=DEFAULT_MAX_NEW_TOKENS,
                                      max_question_chars=config.max_question_chars)

        try:
            call = await asyncio.to_thread(parse)
        except RequestError as exc:
            return fail(exc.status, str(exc), param=exc.param, code=exc.code)
        except InputError as exc:
            return fail(400, str(exc), param="messages")
        _request_summary(span, call, state.model_name, capture=bool(getattr(guard, "capture_content", False)))
        if call.stream:
            try:
                state.batcher.reserve()
            except QueueFull as exc:
                return fail(429, str(exc), type_="rate_limit_error", code="queue_full",
                            headers={"Retry-After": str(exc.retry_after)})
            return StreamingResponse(_stream(guard, call, span, started), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        job = _Job(call, otel_context.get_current())
        work = asyncio.ensure_future(state.batcher.submit(job, _batch_key(call)))
        gone = asyncio.ensure_future(_wait_disconnect(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not work.done():  # the caller left: drop the queued job (a running batch finishes anyway)
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            finish_span(span, 499)
            span.set_attribute(semconv.ERROR_TYPE, "client_disconnected")
            return Response(status_code=499)
        try:
            outcome = work.result()
            if isinstance(outcome, BaseException):
                raise outcome
            result, n_prompt = outcome
        except QueueFull as exc:
            return fail(429, str(exc), type_="rate_limit_error", code="queue_full",
                        headers={"Retry-After": str(exc.retry_after)})
        except InputError as exc:
            return fail(400, str(exc), param="messages")
        except GuardrailError as exc:
            log.error("guarded call failed: %s", exc)
            return fail(500, "the guarded call failed", type_="server_error")
        state.metrics.result(result.verdict, result.action, time.perf_counter() - started)
        _annotate(span, result, shown_text(result, call.stop)[0], capture=bool(getattr(guard, "capture_content", False)))
        finish_span(span, 200)
        return JSONResponse(chat_completion(result, call, model=state.model_name,
                                            prompt_tokens=n_prompt, trace_id=_trace_id(span)))

    async def _stream(guard, call: ChatCall, span, started: float):
        """SSE chunks: role, content deltas (with each token's map on request), the verdict last."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop_flag = threading.Event()
        ctx = trace.set_span_in_context(span)
        hold = call.options.hold_until_verdict
        keep = max((len(s) for s in call.stop), default=1) - 1  # characters held back: a stop string may be starting

        def emit(*item):
            loop.call_soon_threadsafe(events.put_nowait, item)

        def produce():
            """On the worker thread: run the stream, decode the text to show, hand events to the loop."""
            token = otel_context.attach(ctx)
            gen = None
            try:
                if stop_flag.is_set():  # the client left while the stream waited for the worker
                    return
                if call.seed is not None:
                    import torch

                    torch.manual_seed(call.seed)
                tok = guard.processor.tokenizer
                ids: list[int] = []
                sent, stopped = "", False
                gen = guard.stream(call.image, call.question, tags=call.options.tags, **call.generate_kwargs)
                for item in gen:
                    if stop_flag.is_set():
                        break
                    if hasattr(item, "token_id"):  # a TokenEvent
                        ids.append(item.token_id)
                        piece = ""
                        if not hold and not stopped:
                            text = tok.decode(ids, skip_special_tokens=True).lstrip()
                            cut, stopped = cut_at_stop(text, call.stop)
                            ready = cut if stopped else cut[: max(len(sent), len(cut) - keep)]
                            if ready.startswith(sent):
                                piece, sent = ready[len(sent):], ready
                        emit("token", item, piece)
                    elif hasattr(item, "token_start"):  # a Claim, as soon as it closes
                        emit("claim", item)
                    else:  # the GuardResult, last
                        emit("result", item, (sent, stopped), item.prompt_tokens or 0)
            except BaseException as exc:
                emit("error", exc)
            finally:
                if gen is not None:
                    gen.close()
                otel_context.detach(token)
                emit("done",)
                loop.call_soon_threadsafe(state.batcher.release)

        worker = asyncio.ensure_future(state.batcher.run_on_worker(produce))
        cid, created, model = completion_id(), int(time.time()), state.model_name
        status = 200

        def sse(obj) -> str:
            return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"

        try:
            yield sse(stream_chunk(cid, model, created, delta={"role": "assistant", "content": ""}))
            while True:
                kind, *rest = await events.get()
                if kind == "done":
                    break
                if kind == "error":
                    exc = rest[0]
                    status = 400 if isinstance(exc, InputError) else 500
                    if status == 500:
                        log.error("stream failed: %s", type(exc).__name__)
                    message = str(exc) if status == 400 else "the guarded call failed"
                    yield sse(error_body(message, type_="invalid_request_error" if status == 400 else "server_error"))
                elif kind == "token":
                    item, piece = rest
                    extra = None
                    if call.options.maps:
                        extra = {"token": {"index": item.index, "token_id": item.token_id, "entropy": item.entropy,
                                           "map": encode_map(item.map)}}
                    if piece or extra:
                        yield sse(stream_chunk(cid, model, created, delta={"content": piece} if piece else {},
                                               extra=extra))
                elif kind == "claim":  # a claim's verdict as soon as the claim is closed (several-claim answers)
                    yield sse(stream_chunk(cid, model, created, delta={}, extra={"claim": claim_object(rest[0])}))
                else:  # the result
                    result, (sent, stopped), n_prompt = rest
                    text, by_stop = shown_text(result, call.stop)
                    if hold:
                        if text:
                            yield sse(stream_chunk(cid, model, created, delta={"content": text}))
                    elif not replaced_by_policy(result) and text.startswith(sent) and len(text) > len(sent):
                        yield sse(stream_chunk(cid, model, created, delta={"content": text[len(sent):]}))
                    obj = guardrail_object(result, trace_id=_trace_id(span), maps=False)
                    obj["text"] = text  # what the policy lets the user see; differs from the streamed tokens on abstain
                    state.metrics.result(result.verdict, result.action, time.perf_counter() - started)
                    _annotate(span, result, text, capture=bool(getattr(guard, "capture_content", False)))
                    yield sse(stream_chunk(cid, model, created, finish=finish_reason(result, by_stop or stopped),
                                           extra=obj))
                    if call.include_usage:
                        n_out = len(result.token_ids)
                        yield sse(stream_chunk(cid, model, created, choices=False, usage={
                            "prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}))
            yield "data: [DONE]\n\n"
        except BaseException:  # the client left (cancelled) or the loop is shutting down
            stop_flag.set()
            status = 499
            raise
        finally:
            if not worker.done():
                worker.add_done_callback(lambda f: f.cancelled() or f.exception())
            finish_span(span, status)
            span.end()

    return app


def _flush_traces(tracer_provider, timeout_s: float) -> None:
    """Export the spans still buffered (a batch span processor holds them for seconds) before the
    process exits: after a SIGTERM, uvicorn re-raises the signal once the app has shut down, so
    nothing after ``uvicorn.run`` is sure to run."""
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    if flush is None:  # the API's no-op provider
        return
    try:
        flush(int(max(timeout_s, 1.0) * 1000))
    except Exception:  # telemetry never breaks a shutdown
        log.warning("flushing the traces at shutdown failed", exc_info=True)


class _InstanceHeader:
    """Pure ASGI middleware adding ``X-Guardrail-Instance`` (no buffering, streams untouched)."""

    def __init__(self, app, value: str):
        self.app = app
        self.header = (b"x-guardrail-instance", value.encode("latin-1"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


def _request_summary(span, call: ChatCall, model, *, capture: bool) -> None:
    """The request span's input, for a viewer's span list: the request's settings (and question under content capture)."""
    try:
        if span.is_recording():
            summary = {"model": model, "stream": call.stream, **call.generate_kwargs}
            if capture:
                summary["question"] = call.question
            span.set_attributes({semconv.INPUT_VALUE: json.dumps(summary, ensure_ascii=False, default=str),
                                 semconv.INPUT_MIME_TYPE: semconv.MIME_JSON})
    except Exception:  # telemetry never breaks a response
        log.debug("telemetry failed", exc_info=True)


def _annotate(span, result, text: str, *, capture: bool) -> None:
    """The request span's outcome: the verdict as a label (also the trace's annotation at a viewer,
    :mod:`guardrail.telemetry.annotations`) and the response's summary as its output."""
    try:
        if span.is_recording():
            label = verdict_label(result.verdict, result.unguarded)
            outcome = {"verdict": label, "action": result.action, "score": result.score,
                       "finish_reason": result.finish_reason}
            if capture:
                outcome["text"] = text
            span.set_attributes({
                semconv.SERVE_VERDICT: label, semconv.SERVE_ACTION: result.action,
                semconv.OUTPUT_VALUE: json.dumps(outcome, ensure_ascii=False), semconv.OUTPUT_MIME_TYPE: semconv.MIME_JSON,
            })
            if result.score is not None:
                span.set_attribute(semconv.SERVE_SCORE, float(result.score))
            if capture or not result.unguarded:  # an unguarded reason may quote the question
                span.set_attribute(semconv.SERVE_REASON, result.reason)
    except Exception:  # telemetry never breaks a response
        log.debug("telemetry failed", exc_info=True)
