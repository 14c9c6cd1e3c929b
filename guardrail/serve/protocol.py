"""The OpenAI chat-completions wire format, as far as a guarded single-image VLM call supports it.

Parsing turns a request body into a :class:`ChatCall` (the image, the question, the generation
settings and the guard options), or raises :class:`RequestError` naming what is wrong. Building
turns a :class:`~guardrail.GuardResult` into a ``chat.completion`` object or the chunks of a
stream, each with a ``guardrail`` object beside the standard fields. No I/O and no model here.

Supported request fields: ``model``, ``messages`` (one user message: text parts and one
``image_url`` part), ``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``,
``seed``, ``stop``, ``n`` (1 only), ``stream``, ``stream_options.include_usage``, ``user``
(ignored) and the extension ``guardrail`` (``maps``, ``hold_until_verdict``, ``tags``).
Anything else is a 400 that names the fields.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional, Union

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fastrm_common.errors import InputError
from guardrail.limits import check_sampling
from guardrail.telemetry.mapcodec import encode_map

__all__ = [
    "ChatCall",
    "RequestError",
    "SUPPORTED_FIELDS",
    "chat_completion",
    "claim_object",
    "completion_id",
    "error_body",
    "finish_reason",
    "guardrail_object",
    "parse_chat_request",
    "parse_json_body",
    "stream_chunk",
]

SUPPORTED_FIELDS = ("guardrail", "max_completion_tokens", "max_tokens", "messages", "model", "n", "seed", "stop",
                    "stream", "stream_options", "temperature", "top_p", "user")
MAX_JSON_DEPTH = 32  # an OpenAI chat body nests 6 deep; json.loads recurses once per level
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
CONTENT_FILTER = "content_filter"  # finish reason when the policy replaced the answer (abstain, withheld escalation)


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status, the message is safe to return."""

    def __init__(self, message: str, *, status: int = 400, param: Optional[str] = None,
                 code: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


def error_body(message: str, *, type_: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    """An OpenAI-style error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ImageURL(_Strict):
    url: str
    detail: Optional[Literal["auto", "low", "high"]] = None


class _ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: _ImageURL


class _TextPart(_Strict):
    type: Literal["text"]
    text: str


_Part = Annotated[Union[_TextPart, _ImagePart], Field(discriminator="type")]


class _Message(_Strict):
    role: str
    content: Union[str, list[_Part]]
    name: Optional[str] = None


class _StreamOptions(_Strict):
    include_usage: bool = False


class GuardOptions(_Strict):
    """The request's ``guardrail`` extension object."""

    maps: bool = False
    hold_until_verdict: bool = False
    tags: list[str] = Field(default_factory=list, max_length=32)


class _ChatRequest(_Strict):
    model: Optional[str] = None
    messages: list[_Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    seed: Optional[int] = None
    stop: Union[None, str, list[str]] = None
    n: Optional[Literal[1]] = None
    stream: bool = False
    stream_options: Optional[_StreamOptions] = None
    user: Optional[str] = None
    guardrail: GuardOptions = Field(default_factory=GuardOptions)


@dataclass
class ChatCall:
    """One parsed request: what the Guard gets, and how to answer."""

    image: Image.Image
    question: str
    generate_kwargs: dict
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    options: GuardOptions = field(default_factory=GuardOptions)
    seed: Optional[int] = None

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys can share one ``generate_batch`` call (same generation settings)."""
        return tuple(sorted(self.generate_kwargs.items())) + (tuple(sorted(self.options.tags)),)


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"] if not isinstance(x, str) or x not in ("_TextPart", "_ImagePart"))
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "invalid request: " + "; ".join(parts)


def json_depth_exceeds(body: bytes, max_depth: int) -> bool:
    """True when the JSON text ``body`` nests arrays/objects deeper than ``max_depth`` (strings skipped).

    Linear and vectorised (strings removed by one regex, then a running sum of the brackets), so
    a 100,000-deep ``[[[[...`` is refused before ``json.loads`` recurses into it and an 8 MB body
    costs a few tens of milliseconds. Brackets inside strings do not count.

        >>> json_depth_exceeds(b'{"a": [[1]], "b": "[[[["}', 3), json_depth_exceeds(b'[[[[]]]]', 3)
        (False, True)
    """
    import numpy as np

    rest = np.frombuffer(_JSON_STRING.sub(b"", bytes(body)), np.uint8)
    step = (rest == ord("[")).astype(np.int32) + (rest == ord("{")) - (rest == ord("]")) - (rest == ord("}"))
    return bool(step.size) and int(np.cumsum(step).max()) > max_depth


def parse_json_body(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value of a request body; :class:`RequestError` (400) when it is not JSON or nests too deep."""
    if json_depth_exceeds(body, max_depth):
        raise RequestError(f"the request body nests deeper than {max_depth} levels")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RequestError("the request body is not valid JSON") from None


def parse_chat_request(body: Any, *, image_loader, max_tokens: int, default_max_tokens: int,
                       max_question_chars: int) -> ChatCall:
    """Validate a request body and pull out the guarded call.

    ``image_loader(url) -> PIL image`` decodes the one ``image_url`` (it enforces the pixel
    limit and the allow-list). Raises :class:`RequestError` (400) naming the problem.
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - set(SUPPORTED_FIELDS))
    if unknown:
        raise RequestError(f"unsupported fields: {', '.join(unknown)}; supported: {', '.join(SUPPORTED_FIELDS)}",
                           param=unknown[0])
    try:
        req = _ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise RequestError(_validation_message(exc)) from None
    if len(req.messages) != 1 or req.messages[0].role != "user":
        roles = ", ".join(m.role for m in req.messages)
        raise RequestError(f"messages must be exactly one user message (one image and its question); got: {roles}",
                           param="messages")
    content = req.messages[0].content
    parts = [_TextPart(type="text", text=content)] if isinstance(content, str) else content
    texts = [p.text for p in parts if isinstance(p, _TextPart)]
    images = [p.image_url.url for p in parts if isinstance(p, _ImagePart)]
    if len(images) != 1:
        raise RequestError(f"the user message must hold exactly one image_url part; it holds {len(images)}",
                           param="messages")
    question = "\n".join(t.strip() for t in texts if t.strip())
    if not question:
        raise RequestError("the user message holds no question text", param="messages")
    if len(question) > max_question_chars:
        raise RequestError(f"the question has {len(question)} characters; the limit is {max_question_chars}",
                           param="messages")
    if req.max_tokens is not None and req.max_completion_tokens is not None and req.max_tokens != req.max_completion_tokens:
        raise RequestError("max_tokens and max_completion_tokens disagree; send one of them", param="max_tokens")
    n_tokens = req.max_completion_tokens or req.max_tokens or default_max_tokens
    if n_tokens > max_tokens:
        raise RequestError(f"max_tokens {n_tokens} is above this server's limit of {max_tokens}", param="max_tokens")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > 4 or any(not s for s in stop):
        raise RequestError("stop takes up to 4 non-empty strings", param="stop")
    # the one check of sampling settings the Python API applies too (finite, in range, seeds torch takes)
    for name, value in (("temperature", req.temperature or None), ("top_p", req.top_p), ("seed", req.seed)):
        try:
            check_sampling(**{name: value})
        except InputError as exc:
            raise RequestError(str(exc), param=name) from None
    kwargs: dict = {"max_new_tokens": n_tokens}
    if req.temperature:  # absent or 0: greedy, the Guard's default
        kwargs.update(do_sample=True, temperature=req.temperature)
        if req.top_p is not None:
            kwargs["top_p"] = req.top_p
    image = image_loader(images[0])  # last: the costliest check
    return ChatCall(image=image, question=question, generate_kwargs=kwargs, stop=stop, stream=req.stream,
                    include_usage=bool(req.stream_options and req.stream_options.include_usage),
                    options=req.guardrail, seed=req.seed)


# ---------------------------------------------------------------------------------------------- responses
def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def replaced_by_policy(result) -> bool:
    """True when the policy showed its message instead of the answer (abstain, withheld escalation)."""
    return result.action in ("abstain", "escalate") and not result.flagged


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string (excluded), and whether one occurred."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def finish_reason(result, stopped_by_string: bool = False) -> str:
    """``content_filter`` when the policy replaced the answer, else the model's ``stop`` / ``length``."""
    if replaced_by_policy(result):
        return CONTENT_FILTER
    return "stop" if stopped_by_string else result.finish_reason


def claim_object(claim) -> dict:
    """One claim as serve shows it: offsets into the model's answer, text, kind, verdict, score, redacted."""
    return {"index": claim.index, "start": claim.start, "end": claim.end, "text": claim.text, "kind": claim.kind,
            "verdict": claim.verdict, "score": claim.score, "redacted": claim.redacted}


def guardrail_object(result, *, trace_id: Optional[str], maps: bool = False) -> dict:
    """The ``guardrail`` object of a response: verdict, score, threshold, scores, action, rule, trace id.

    ``scores`` holds every answer score the Guard computed (higher = more uncertain); ``claims`` each
    claim of the answer (offsets into the model's answer, verdict, score, whether ``redact`` removed
    it); ``maps``
    (on request) one entry per generated token with its map quantised to 8 bits and base64'd
    (:func:`guardrail.encode_map`; decode with :func:`guardrail.decode_map`).
    """
    scores = getattr(result, "scores", None)
    if not scores:
        scores = {} if result.score is None else {"map_entropy": result.score}
    obj = {
        "verdict": result.verdict,
        "score": result.score,
        "threshold": result.threshold,
        "scores": dict(scores),
        "action": result.action,
        "rule": result.rule,
        "reason": result.reason,
        "flagged": result.flagged,
        "unguarded": result.unguarded,
        "policy": {"id": result.policy_id, "version": result.policy_version},
        "token_ids": list(result.token_ids),
        "model_finish_reason": result.finish_reason,
        "error": None if result.error is None else result.error.split(":")[0],
        "trace_id": trace_id,
        "claims": [claim_object(c) for c in getattr(result, "claims", None) or []],
    }
    if maps:
        obj["maps"] = None if result.maps is None else {
            "grid": list(result.maps.shape[1:]),
            "tokens": [
                {"index": i, "token_id": tid, "entropy": ent, "content": c, "map": encode_map(m)}
                for i, (tid, ent, c, m) in enumerate(zip(result.token_ids, result.entropies, result.content,
                                                         result.maps))
            ],
        }
    return obj


def shown_text(result, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The text the caller sees (policy applied, cut at a stop string) and whether a stop string cut it."""
    if replaced_by_policy(result):
        return result.text, False
    return cut_at_stop(result.text, stop)


def chat_completion(result, call: ChatCall, *, model: str, prompt_tokens: int, trace_id: Optional[str],
                    cid: Optional[str] = None) -> dict:
    """A ``chat.completion`` object for one guarded result."""
    text, stopped = shown_text(result, call.stop)
    n_out = len(result.token_ids)
    return {
        "id": cid or completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": finish_reason(result, stopped),
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n_out, "total_tokens": prompt_tokens + n_out},
        "guardrail": guardrail_object(result, trace_id=trace_id, maps=call.options.maps),
    }


def stream_chunk(cid: str, model: str, created: int, *, delta: Optional[dict] = None,
                 finish: Optional[str] = None, extra: Optional[dict] = None, usage: Optional[dict] = None,
                 choices: bool = True) -> dict:
    """One ``chat.completion.chunk``; ``extra`` is the chunk's ``guardrail`` object."""
    chunk: dict = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]
                   if choices else []}
    if usage is not None:
        chunk["usage"] = usage
    if extra is not None:
        chunk["guardrail"] = extra
    return chunk
