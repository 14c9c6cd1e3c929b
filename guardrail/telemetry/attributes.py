"""Pure helpers for instrumenting a guarded call with OpenTelemetry (``opentelemetry-api`` only).

The Guard opens the spans; this module builds their attribute dicts with the
names of :mod:`guardrail.telemetry.semconv`, so every key is spelled in one place and
every value has a type OpenTelemetry accepts (None values are left out, numpy
scalars become Python numbers). Map encoding and the byte budget live in
:mod:`guardrail.telemetry.mapcodec` and are re-exported here.

Typical use inside the Guard (sketch)::

    tracer = get_tracer(tracer_provider)
    with tracer.start_as_current_span(chat_span_name(model_name), kind=SpanKind.INTERNAL) as chat:
        chat.set_attributes(chat_attributes(model_name, input_tokens=n_in, output_tokens=n_out))
        with tracer.start_as_current_span(GUARDRAIL_SPAN_NAME, kind=SpanKind.INTERNAL) as span:
            if span.is_recording():
                span.set_attributes(guardrail_attributes(decision, verdict=v, score=s, threshold=t, flagged=f))
                plan = budget.plan(maps, priority=scored_positions)
                for i, tok in enumerate(tokens):
                    span.add_event(TOKEN_EVENT, token_event_attributes(
                        i, entropies[i], encoded_map=plan.encoded.get(i), text=tok if capture else None))
                span.set_attributes(map_budget_attributes(plan, budget))
                span.add_event(EVALUATION_RESULT_EVENT, guardrail_result_event_attributes(decision, ...))

Nothing here raises on telemetry's behalf: callers still wrap span work so that
telemetry never breaks inference.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

import guardrail.telemetry.semconv as semconv
from guardrail.telemetry.mapcodec import (
    DEFAULT_MAP_BUDGET_BYTES,
    MapBudget,
    MapPlan,
    decode_map,
    encode_map,
    encoded_nbytes,
    map_attributes,
    map_from_attributes,
)

if TYPE_CHECKING:  # pragma: no cover
    from policies import Decision

__all__ = [
    "DEFAULT_MAP_BUDGET_BYTES",
    "MapBudget",
    "MapPlan",
    "chat_attributes",
    "chat_content_attributes",
    "content_capture_enabled",
    "decode_map",
    "encode_map",
    "encoded_nbytes",
    "get_tracer",
    "batch_content_attributes",
    "guardrail_attributes",
    "guardrail_messages_attributes",
    "guardrail_result_event_attributes",
    "image_attributes",
    "image_data_uri",
    "image_reference",
    "input_messages_json",
    "map_attributes",
    "map_budget_attributes",
    "map_from_attributes",
    "message_text",
    "messages_attributes",
    "openai_chat_attributes",
    "output_messages_json",
    "token_event_attributes",
    "verdict_label",
]

_TRUE = {"1", "true", "yes", "on", "span_only", "event_only", "span_and_event"}


def get_tracer(tracer_provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """The tracer fastrm-guard uses: from ``tracer_provider`` if given, else the global provider."""
    return trace.get_tracer("fastrm-guard", package_version(), tracer_provider)


def content_capture_enabled(explicit: bool | None = None) -> bool:
    """Whether prompt/answer/token text may be recorded.

    ``explicit`` (e.g. ``Guard(capture_content=True)``) wins; otherwise the
    standard ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` variable
    (``true``/``1``/``yes``/``span_only``/``span_and_event`` ...). Off by default.
    """
    if explicit is not None:
        return bool(explicit)
    return os.environ.get(semconv.CAPTURE_CONTENT_ENV, "").strip().lower() in _TRUE


def chat_attributes(
    model: str,
    *,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    finish_reasons: Sequence[str] | None = None,
    provider: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
) -> dict[str, Any]:
    """Attributes of the ``chat {model}`` span: GenAI conventions and, beside them, OpenInference's
    LLM keys (span kind, model name, token counts, invocation parameters) for Phoenix-style viewers.

    >>> chat_attributes("tiny-llava", input_tokens=12, output_tokens=3, finish_reasons=["stop"])["gen_ai.operation.name"]
    'chat'
    """
    params = _clean({"max_new_tokens": max_tokens, "temperature": temperature, "top_p": top_p})
    total = None if input_tokens is None or output_tokens is None else int(input_tokens) + int(output_tokens)
    return _clean(
        {
            semconv.GEN_AI_OPERATION_NAME: semconv.GEN_AI_OPERATION_CHAT,
            semconv.GEN_AI_REQUEST_MODEL: model,
            semconv.GEN_AI_PROVIDER_NAME: provider,
            semconv.GEN_AI_USAGE_INPUT_TOKENS: input_tokens,
            semconv.GEN_AI_USAGE_OUTPUT_TOKENS: output_tokens,
            semconv.GEN_AI_RESPONSE_FINISH_REASONS: tuple(finish_reasons) if finish_reasons is not None else None,
            semconv.GEN_AI_REQUEST_MAX_TOKENS: max_tokens,
            semconv.GEN_AI_REQUEST_TEMPERATURE: temperature,
            semconv.GEN_AI_REQUEST_TOP_P: top_p,
            semconv.OPENINFERENCE_SPAN_KIND: semconv.OPENINFERENCE_KIND_LLM,
            semconv.LLM_MODEL_NAME: model,
            semconv.LLM_TOKEN_COUNT_PROMPT: input_tokens,
            semconv.LLM_TOKEN_COUNT_COMPLETION: output_tokens,
            semconv.LLM_TOKEN_COUNT_TOTAL: total,
            semconv.LLM_INVOCATION_PARAMETERS: _dumps(params) if params else None,
        }
    )


def chat_content_attributes(
    question: str, answer: str, *, finish_reason: str = "stop", image_uri: str | None = None
) -> dict[str, Any]:
    """The ``chat`` span's content attributes (content capture only; the caller decides).

    ``answer`` is what the model generated, also when a policy withheld it from the user.
    GenAI: ``gen_ai.input.messages`` / ``gen_ai.output.messages``. OpenInference:
    ``input.value`` (the question), ``output.value`` (the answer) and the flattened
    ``llm.input_messages`` / ``llm.output_messages``; ``image_uri`` (a ``data:`` URI from
    :func:`image_data_uri`) becomes an image part of the user message, which Phoenix displays.

    >>> a = chat_content_attributes("How many?", "3")
    >>> a["input.value"], a["output.value"], a["llm.output_messages.0.message.content"]
    ('How many?', '3', '3')
    """
    user = f"{semconv.LLM_INPUT_MESSAGES}.0.{semconv.MESSAGE_CONTENTS}"
    attrs: dict[str, Any] = {
        semconv.GEN_AI_INPUT_MESSAGES: input_messages_json(question),
        semconv.GEN_AI_OUTPUT_MESSAGES: output_messages_json(answer, finish_reason),
        semconv.INPUT_VALUE: question,
        semconv.INPUT_MIME_TYPE: semconv.MIME_TEXT,
        semconv.OUTPUT_VALUE: answer,
        semconv.OUTPUT_MIME_TYPE: semconv.MIME_TEXT,
        f"{semconv.LLM_INPUT_MESSAGES}.0.{semconv.MESSAGE_ROLE}": "user",
        f"{user}.0.{semconv.MESSAGE_CONTENT_TYPE}": "text",
        f"{user}.0.{semconv.MESSAGE_CONTENT_TEXT}": question,
        f"{semconv.LLM_OUTPUT_MESSAGES}.0.{semconv.MESSAGE_ROLE}": "assistant",
        f"{semconv.LLM_OUTPUT_MESSAGES}.0.{semconv.MESSAGE_CONTENT}": answer,
    }
    if image_uri:
        attrs[f"{user}.1.{semconv.MESSAGE_CONTENT_TYPE}"] = "image"
        attrs[f"{user}.1.{semconv.MESSAGE_CONTENT_IMAGE}.{semconv.IMAGE_URL}"] = image_uri
    attrs.update(openai_chat_attributes([question], [answer], finish_reasons=[finish_reason], image_uris=[image_uri]))
    return attrs


def openai_chat_attributes(questions: Sequence[str], answers: Sequence[str], *,
                           finish_reasons: Sequence[str] | None = None,
                           image_uris: Sequence[str | None] | None = None) -> dict[str, Any]:
    """MLflow's span inputs/outputs in OpenAI's chat format (content capture only): the request's
    ``messages`` (each row's question with its image as an ``image_url`` part) and the response's
    ``choices`` (one per row, ``index`` = the row), which MLflow's trace view shows as a chat."""
    n = len(questions)
    uris = list(image_uris or [None] * n)
    reasons = list(finish_reasons or ["stop"] * n)
    messages = [{"role": "user", "content": [{"type": "text", "text": q},
                                             *([{"type": "image_url", "image_url": {"url": u}}] if u else [])]}
                for q, u in zip(questions, uris)]
    choices = [{"index": i, "message": {"role": "assistant", "content": a}, "finish_reason": f}
               for i, (a, f) in enumerate(zip(answers, reasons))]
    return {semconv.MLFLOW_SPAN_INPUTS: _dumps({"messages": messages}),
            semconv.MLFLOW_SPAN_OUTPUTS: _dumps({"choices": choices})}


#: a message part: ("text", the text) or ("image", a data: or http(s): URL)
Part = tuple[str, str]


def messages_attributes(key: str, messages: Sequence[tuple[str, Sequence[Part]]]) -> dict[str, Any]:
    """OpenInference's flattened messages under ``key`` (``llm.input_messages`` / ``llm.output_messages``).

    ``messages`` are ``(role, parts)``; a message of one text part is written as ``message.content``,
    others part by part (``message.contents.{j}.message_content.type`` = ``text`` or ``image``), which
    is how Phoenix shows text beside images.

    >>> messages_attributes("llm.output_messages", [("assistant", [("text", "3")])])
    {'llm.output_messages.0.message.role': 'assistant', 'llm.output_messages.0.message.content': '3'}
    """
    attrs: dict[str, Any] = {}
    for i, (role, parts) in enumerate(messages):
        attrs[f"{key}.{i}.{semconv.MESSAGE_ROLE}"] = role
        if len(parts) == 1 and parts[0][0] == "text":
            attrs[f"{key}.{i}.{semconv.MESSAGE_CONTENT}"] = parts[0][1]
            continue
        for j, (kind, value) in enumerate(parts):
            base = f"{key}.{i}.{semconv.MESSAGE_CONTENTS}.{j}"
            attrs[f"{base}.{semconv.MESSAGE_CONTENT_TYPE}"] = kind
            if kind == "image":
                attrs[f"{base}.{semconv.MESSAGE_CONTENT_IMAGE}.{semconv.IMAGE_URL}"] = value
            else:
                attrs[f"{base}.{semconv.MESSAGE_CONTENT_TEXT}"] = value
    return attrs


def _user_parts(question: str, image_uri: str | None) -> list[Part]:
    return [("text", question), *([("image", image_uri)] if image_uri else [])]


def batch_content_attributes(questions: Sequence[str], answers: Sequence[str], *,
                             finish_reasons: Sequence[str] | None = None,
                             image_uris: Sequence[str | None] | None = None) -> dict[str, Any]:
    """The ``chat`` span's content for a batch (content capture only): one user message per row (its
    question, ``[i]`` first, and its image) and one assistant message per row (its answer), in row order.

    GenAI ``gen_ai.input.messages`` / ``gen_ai.output.messages`` list the rows' messages (without the
    images); ``input.value`` / ``output.value`` stay the JSON lists of questions and answers.
    """
    n = len(questions)
    uris = list(image_uris or [None] * n)
    reasons = list(finish_reasons or ["stop"] * n)
    return {
        semconv.GEN_AI_INPUT_MESSAGES: _dumps([{"role": "user", "parts": [{"type": "text", "content": q}]}
                                               for q in questions]),
        semconv.GEN_AI_OUTPUT_MESSAGES: _dumps([{"role": "assistant", "parts": [{"type": "text", "content": a}],
                                                 "finish_reason": f} for a, f in zip(answers, reasons)]),
        semconv.INPUT_VALUE: _dumps(list(questions)),
        semconv.INPUT_MIME_TYPE: semconv.MIME_JSON,
        semconv.OUTPUT_VALUE: _dumps(list(answers)),
        semconv.OUTPUT_MIME_TYPE: semconv.MIME_JSON,
        **messages_attributes(semconv.LLM_INPUT_MESSAGES,
                              [("user", _user_parts(f"[{i}] {q}", u)) for i, (q, u) in enumerate(zip(questions, uris))]),
        **messages_attributes(semconv.LLM_OUTPUT_MESSAGES,
                              [("assistant", [("text", f"[{i}] {a}")]) for i, a in enumerate(answers)]),
        **openai_chat_attributes(questions, answers, finish_reasons=reasons, image_uris=uris),
    }


def guardrail_messages_attributes(question: str, answer: str, *, verdict_text: str, image_uri: str | None = None,
                                  overlay_uri: str | None = None) -> dict[str, Any]:
    """The guard span's messages (content capture only), what a viewer shows of one guarded answer:
    input, the conversation under test (the user's question with its image, the model's answer);
    output, the verdict in words with the answer's map painted over the image (``overlay_uri``,
    :func:`guardrail.telemetry.map_image.overlay_data_uri`)."""
    return {
        **messages_attributes(semconv.LLM_INPUT_MESSAGES,
                              [("user", _user_parts(question, image_uri)), ("assistant", [("text", answer)])]),
        **messages_attributes(semconv.LLM_OUTPUT_MESSAGES,
                              [("assistant", [("text", verdict_text), *([("image", overlay_uri)] if overlay_uri else [])])]),
    }


def image_data_uri(image: Any, *, max_side: int = 256, max_bytes: int = 96_000) -> str | None:
    """A PIL image as a ``data:image/...;base64,`` URI for a span, downscaled and size-bounded.

    The image is shrunk (aspect ratio kept) so that its longer side is at most ``max_side``
    pixels, then written as PNG; if the URI is longer than ``max_bytes`` characters it is
    written as JPEG (quality 85, then 60); if still too long, None (nothing is attached).
    Only call this with content capture on: the image is content.
    """
    import base64
    import io

    from PIL import Image

    img = image.convert("RGB")
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    for fmt, kwargs in (("PNG", {"optimize": True}), ("JPEG", {"quality": 85}), ("JPEG", {"quality": 60})):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kwargs)
        uri = f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        if len(uri) <= max_bytes:
            return uri
    return None


def image_reference(image: Any, path: str | os.PathLike | None = None, box: Sequence[float] | None = None) -> dict[str, Any]:
    """What identifies a call's image without storing it: SHA-256 of its RGB pixels and (w, h).

    ``{"sha256": ..., "size": [w, h]}``, plus ``"path"`` (absolute) when one is given and ``"box"``
    (the part the model saw, :func:`guardrail.traces.render.view_box`) when given.
    The hash is of the decoded RGB pixels, so the same picture saved as PNG or re-encoded
    losslessly hashes the same.
    """
    import hashlib

    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()
    ref: dict[str, Any] = {"sha256": digest, "size": [rgb.width, rgb.height]}
    if path is not None:
        ref["path"] = str(Path(path).resolve())
    if box is not None:
        ref["box"] = [float(v) for v in box]
    return ref


def image_attributes(reference: Mapping[str, Any], *, capture_content: bool) -> dict[str, Any]:
    """Span attributes of an :func:`image_reference`; the path only with content capture."""
    return _clean(
        {
            semconv.FASTRM_IMAGE_SHA256: reference.get("sha256"),
            semconv.FASTRM_IMAGE_SIZE: list(reference["size"]) if reference.get("size") else None,
            semconv.FASTRM_IMAGE_BOX: [float(v) for v in reference["box"]] if reference.get("box") else None,
            semconv.FASTRM_IMAGE_PATH: reference.get("path") if capture_content else None,
        }
    )


def guardrail_attributes(
    decision: Decision,
    *,
    verdict: str | None = None,
    score: float | None = None,
    threshold: float | None = None,
    flagged: bool | None = None,
    n_answer_tokens: int | None = None,
    max_token_entropy: float | None = None,
    answer: str | None = None,
    returned_text: str | None = None,
) -> dict[str, Any]:
    """Attributes of the ``apply_guardrail fastrm`` span: verdict, score, threshold, policy, rule, action.

    ``decision`` is a :class:`policies.Decision`; verdict/score/threshold may be
    None when the guard failed (then ``fastrm.guardrail.unguarded`` is true).
    ``answer`` (the model's answer, kept even when withheld) and ``returned_text`` (what the
    caller got) are content: pass them only with content capture on.
    For OpenInference viewers the span is of kind ``GUARDRAIL``, its ``input.value`` is the
    answer under test (content capture only) and its ``output.value`` a JSON summary of the
    decision (with the returned text under content capture).
    """
    summary = _clean(
        {
            "verdict": verdict,
            "score": score,
            "threshold": threshold,
            "action": decision.action,
            "rule": decision.rule,
            "flagged": flagged,
            "unguarded": decision.unguarded,
            "text": returned_text,
        }
    )
    return _clean(
        {
            semconv.OPENINFERENCE_SPAN_KIND: semconv.OPENINFERENCE_KIND_GUARDRAIL,
            semconv.GUARDRAIL_NAME_KEY: semconv.GUARDRAIL_NAME,
            semconv.GUARDRAIL_VERDICT: verdict,
            semconv.GUARDRAIL_SCORE: score,
            semconv.GUARDRAIL_THRESHOLD: threshold,
            semconv.GUARDRAIL_POLICY_ID: decision.policy_id,
            semconv.GUARDRAIL_POLICY_VERSION: decision.policy_version,
            semconv.GUARDRAIL_RULE: decision.rule,
            semconv.GUARDRAIL_ACTION: decision.action,
            semconv.GUARDRAIL_REASON: decision.reason,
            semconv.GUARDRAIL_FLAGGED: flagged,
            semconv.GUARDRAIL_UNGUARDED: decision.unguarded,
            semconv.GUARDRAIL_ESCALATION_TARGET: decision.escalation_target,
            semconv.GUARDRAIL_ANSWER: answer,
            semconv.GUARDRAIL_RETURNED_TEXT: returned_text,
            semconv.FASTRM_ANSWER_TOKENS: n_answer_tokens,
            semconv.FASTRM_MAX_TOKEN_ENTROPY: max_token_entropy,
            semconv.INPUT_VALUE: answer,
            semconv.INPUT_MIME_TYPE: semconv.MIME_TEXT if answer is not None else None,
            semconv.OUTPUT_VALUE: _dumps(summary),
            semconv.OUTPUT_MIME_TYPE: semconv.MIME_JSON,
        }
    )


def verdict_label(verdict: str | None, unguarded: bool = False) -> str:
    """``confident`` / ``uncertain``; ``unguarded`` when the guard failed; ``unscored`` without a verdict."""
    if unguarded:
        return "unguarded"
    return verdict if verdict else "unscored"


def guardrail_result_event_attributes(
    decision: Decision,
    *,
    verdict: str | None = None,
    score: float | None = None,
    threshold: float | None = None,
    flagged: bool | None = None,
    error_type: str | None = None,
) -> dict[str, Any]:
    """Attributes of the ``gen_ai.evaluation.result`` event (GenAI conventions' evaluation event).

    The official keys: ``gen_ai.evaluation.name = "fastrm"``, ``score.value`` (the answer
    score, higher = more uncertain), ``score.label`` (the verdict, or ``"unguarded"`` when
    the guard failed), ``explanation`` (the decision's reason), ``error.type`` when the guard
    failed; plus our decision keys (``fastrm.guardrail.*``: threshold, policy, rule, action).
    """
    attrs = {
        k: v
        for k, v in guardrail_attributes(
            decision, verdict=verdict, score=score, threshold=threshold, flagged=flagged
        ).items()
        if k.startswith("fastrm.guardrail.")
    }
    attrs.update(
        _clean(
            {
                semconv.GEN_AI_EVALUATION_NAME: semconv.GUARDRAIL_NAME,
                semconv.GEN_AI_EVALUATION_SCORE_VALUE: score,
                semconv.GEN_AI_EVALUATION_SCORE_LABEL: verdict if verdict is not None else (
                    "unguarded" if decision.unguarded else None),
                semconv.GEN_AI_EVALUATION_EXPLANATION: decision.reason,
                semconv.ERROR_TYPE: error_type,
            }
        )
    )
    return attrs


def token_event_attributes(
    index: int,
    entropy: float | None,
    *,
    token_id: int | None = None,
    text: str | None = None,
    entropy_normalized: float | None = None,
    scored: bool | None = None,
    encoded_map: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Attributes of one ``fastrm.token`` event.

    ``index`` is the token's 0-based position among the generated tokens;
    ``entropy`` its map entropy in nats (higher = more diffuse);
    ``text`` only when content capture is on (the caller decides);
    ``scored`` whether the token counts in the answer score;
    ``encoded_map`` an :func:`encode_map` dict, flattened to ``fastrm.map.*`` (omit it for a dropped map).
    """
    attrs = _clean(
        {
            semconv.TOKEN_INDEX: index,
            semconv.TOKEN_ID: token_id,
            semconv.TOKEN_TEXT: text,
            semconv.TOKEN_ENTROPY: entropy,
            semconv.TOKEN_ENTROPY_NORMALIZED: entropy_normalized,
            semconv.TOKEN_SCORED: scored,
        }
    )
    if encoded_map is not None:
        attrs.update(map_attributes(encoded_map))
    return attrs


def map_budget_attributes(plan: MapPlan, budget: MapBudget | None = None) -> dict[str, Any]:
    """Span attributes reporting what a :class:`MapPlan` attached and dropped."""
    return _clean(
        {
            semconv.FASTRM_MAPS_ATTACHED: len(plan.encoded),
            semconv.FASTRM_MAPS_DROPPED: len(plan.dropped),
            semconv.FASTRM_MAPS_BITS: plan.bits,
            semconv.FASTRM_MAPS_BYTES: plan.nbytes,
            semconv.FASTRM_MAPS_BUDGET_BYTES: budget.max_bytes if budget is not None else None,
        }
    )


def input_messages_json(question: str) -> str:
    """``gen_ai.input.messages`` for one user question (content capture only); the image is not included.

    >>> input_messages_json("How many squares?")
    '[{"role":"user","parts":[{"type":"text","content":"How many squares?"}]}]'
    """
    return _dumps([{"role": "user", "parts": [{"type": "text", "content": question}]}])


def output_messages_json(answer: str, finish_reason: str = "stop") -> str:
    """``gen_ai.output.messages`` for the model's answer (content capture only)."""
    return _dumps(
        [{"role": "assistant", "parts": [{"type": "text", "content": answer}], "finish_reason": finish_reason}]
    )


def message_text(messages_json: str) -> str:
    """The text parts of a ``gen_ai.*.messages`` value joined with newlines ("" if it cannot be parsed)."""
    try:
        messages = json.loads(messages_json)
    except (TypeError, ValueError):
        return ""
    texts: list[str] = []
    for message in messages if isinstance(messages, list) else []:
        for part in message.get("parts", []) if isinstance(message, dict) else []:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("content"), str):
                texts.append(part["content"])
    return "\n".join(texts)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _clean(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Drop None values; numpy scalars -> Python numbers (OpenTelemetry rejects them)."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            value = value.item()
        out[key] = value
    return out


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fastrm-guard")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"
