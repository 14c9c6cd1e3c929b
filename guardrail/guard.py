"""The Guard: wraps an app's LLaVA call with FastRM maps, a calibrated verdict and a policy.

    >>> guard = Guard.from_pretrained("reference")            # shipped model, proxy, calibration
    >>> result = guard.generate("scene.png", "What color is the circle?")
    >>> result.answer, result.verdict, result.action, result.text
    ('red', 'confident', 'allow', 'red')
    >>> result.maps.shape                                      # (T, rows, cols): one map per token

Per call: the processor builds the prompt, ``model.generate`` runs inside
:func:`fastrm_core.capture` (one proxy query per token, no gradients, no stored
attentions), the maps' entropies give the answer score, the calibration gives the
verdict and the policy the action. One ``chat {model}`` span with a child
``apply_guardrail fastrm`` span records it (OpenTelemetry API only; telemetry failures
never reach the caller).

Thread safety: calls on the same model are serialised by a per-model lock (``generate``
on one model is not re-entrant anyway), and the capture only listens to the thread that
runs the guarded generation, so an unguarded call elsewhere never mixes in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from calibration import Calibration, token_entropy
from fastrm_core import FastRMProxy, capture, get_adapter, load_vlm, weights_fingerprint
from fastrm_core.inputs import prepare_inputs
from fastrm_common.images import ImageLike, load_image
from fastrm_common.tokens import eos_token_ids
from fastrm_common.errors import CaptureError, GuardrailError, InputError, PolicyError
from fastrm_common.presets import list_presets, preset_path
from policies import Decision, DecisionContext, Policy, apply, decide, decide_on_error, escalate, load_policy

from . import semconv
from .contained import contained_span, event_limit
from .metrics import GuardMetrics
from .render import view_box
from .limits import Limits, check_generate_kwargs, check_question, check_tags
from .result import GuardResult, MapRegion, Timings, TokenEvent
from .scoring import Scorer, answer_signals, cut_at_eos, score_answer
from .signals import TokenSignals
from .telemetry import (
    MapBudget,
    chat_attributes,
    chat_content_attributes,
    content_capture_enabled,
    get_tracer,
    guardrail_attributes,
    guardrail_result_event_attributes,
    image_attributes,
    image_data_uri,
    image_reference,
    map_budget_attributes,
    token_event_attributes,
)

__all__ = ["Guard", "load_image"]

IMAGE_PATH_ATTRIBUTE = semconv.FASTRM_IMAGE_PATH  # only with content capture
DEFAULT_MAX_NEW_TOKENS = 16

_MODEL_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


class _Image:
    """One call's image as the processor got it, and its identity for traces and escalations (computed once)."""

    def __init__(self, pil: Any, source: Any, processor: Any) -> None:
        self.pil = pil
        self.path = source if isinstance(source, (str, os.PathLike)) else None
        self.processor = processor
        self._ref: dict[str, Any] | None = None

    def reference(self) -> dict[str, Any]:
        if self._ref is None:
            try:
                box = view_box(self.processor, *self.pil.size)
            except Exception:  # an unusual processor: no box, the viewer falls back to the centred square
                box = None
            self._ref = image_reference(self.pil, self.path, box=box)
        return self._ref


class _StepClock:
    """A generate streamer that only notes the wall-clock time (ns) at which each step's tokens came out."""

    def __init__(self) -> None:
        self.times: list[int] = []
        self._prompt = True

    def put(self, value) -> None:
        if self._prompt:  # generate first sends the prompt
            self._prompt = False
            return
        self.times.append(time.time_ns())

    def end(self) -> None:
        pass


def _model_lock(model: torch.nn.Module) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


class Guard:
    """Guarded generation for a LLaVA-style model.

    Args:
        model, processor: as returned by :func:`fastrm_core.load_vlm` (or the app's own).
        proxy: a :class:`FastRMProxy` or its folder; must match the model.
        calibration: a :class:`calibration.Calibration` or its JSON file; its recorded model
            and proxy identity must match (else :class:`ConfigMismatchError`).
        policy: a :class:`policies.Policy`, a YAML path or a bundled name (``"default"``).
        tracer_provider: OpenTelemetry tracer provider (default: the global one).
        capture_content: record prompt/answer text in spans (default: the
            ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` variable; off).
        map_budget: bytes of encoded maps one span may carry (:class:`MapBudget`).
        prompt_template: how a question becomes a prompt (must contain ``<image>`` and ``{question}``);
            default: the processor's chat template, else LLaVA-1.5's format
            (:func:`fastrm_common.prompting.build_prompt`, as used for distillation and calibration).
        prompt_suffix: text appended to every question (e.g. "Answer the question using up to two
            words."); use the same suffix the proxy and calibration were fitted with.
        model_name: the name used in spans (default: the model's id).
        maps_dir: if set, every guarded call also writes its full-precision maps (T, rows, cols) to
            ``maps_dir/<trace id>-<span id>.safetensors`` and records the path on the span
            (``fastrm.maps.file``), for when the span's byte budget is too small.
        limits: bounds on one call (:class:`~guardrail.limits.Limits`: image pixels and aspect
            ratio, question characters and tokens, ``max_new_tokens``), checked before any model work.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        *,
        proxy: FastRMProxy | str | os.PathLike,
        calibration: Calibration | str | os.PathLike | None = None,
        policy: Policy | str | os.PathLike = "default",
        tracer_provider: trace.TracerProvider | None = None,
        capture_content: bool | None = None,
        map_budget: MapBudget | None = None,
        prompt_template: str | None = None,
        prompt_suffix: str | None = None,
        model_name: str | None = None,
        maps_dir: str | os.PathLike | None = None,
        limits: Limits | None = None,
        meter_provider: Any = None,
    ):
        if limits is not None and not isinstance(limits, Limits):
            raise InputError(f"limits must be a guardrail.Limits, got {type(limits).__name__}")
        self.limits = limits or Limits()
        self.model = model
        self.processor = processor
        self.adapter = get_adapter(model)
        self.proxy = proxy if isinstance(proxy, FastRMProxy) else FastRMProxy.from_pretrained(proxy)
        self.proxy.check_compatible(self.adapter)
        self.proxy.to(next(self.adapter.final_norm.parameters()).device)  # a sharded model's last shard
        if calibration is not None and not isinstance(calibration, Calibration):
            calibration = Calibration.load(calibration)
        self.calibration = calibration  # None: observe-only (every score, no verdict)
        self.model_name = model_name or self.adapter.model_id
        self.proxy_id = self.proxy.fingerprint()
        self.calibration_id = "none"
        if self.calibration is not None:
            # The weights are hashed only when the calibration records a hash to compare with (one
            # pass over the weights); the folder name alone never vouches for the model.
            model_hash = weights_fingerprint(model) if self.calibration.model_hash is not None else None
            self.calibration.check_compatible(model_id=self.adapter.model_id, model_hash=model_hash,
                                              proxy_hash=self.proxy_id)
            threshold = self.calibration.threshold
            self.calibration_id = (f"{self.calibration.rule}@{'none' if threshold is None else format(threshold, '.6g')}"
                                   f" score:{self.calibration.score.name}")
            if self.calibration.dataset_hash:
                self.calibration_id += f" data:{self.calibration.dataset_hash[:16]}"
        self._scorer = Scorer(self.calibration)
        self.maps_dir = None if maps_dir is None else Path(maps_dir)
        self.policy = policy if isinstance(policy, Policy) else load_policy(policy)
        self._check_policy_scores()
        if prompt_template is not None and ("{question}" not in prompt_template or "<image>" not in prompt_template):
            raise InputError("prompt_template must contain '<image>' and '{question}'")
        self.prompt_template = prompt_template
        self.prompt_suffix = prompt_suffix
        self.tracer = get_tracer(tracer_provider)
        self.capture_content = content_capture_enabled(capture_content)
        self.map_budget = map_budget or MapBudget()
        self.metrics = GuardMetrics(meter_provider)
        self._lock = _model_lock(model)
        tok = processor.tokenizer
        self._eos_ids = set(eos_token_ids(self.model, tok)) | self.adapter.stop_token_ids(tok)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = "reference",
        *,
        proxy: FastRMProxy | str | os.PathLike | None = None,
        calibration: Calibration | str | os.PathLike | None = None,
        policy: Policy | str | os.PathLike = "default",
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> "Guard":
        """Load a model by name or folder (``"reference"``: the shipped ShapesVQA model) and guard it.

        ``proxy`` and ``calibration`` default to the preset's when ``model`` is a preset name
        (:mod:`fastrm_common.presets`, e.g. ``"reference"``); for any other model they are required.
        """
        proxy = proxy if proxy is not None else preset_path(model, "proxy")
        calibration = calibration if calibration is not None else preset_path(model, "calibration")
        if proxy is None or calibration is None:
            raise InputError("a proxy and a calibration are required for models other than a preset "
                             f"(presets: {', '.join(list_presets()) or 'none installed'})")
        vlm, processor = load_vlm(model, dtype=dtype, device=device)
        return cls(vlm, processor, proxy=proxy, calibration=calibration, policy=policy, **kwargs)

    def _check_policy_scores(self) -> None:
        unknown = sorted({name for rule in self.policy.rules for name in (rule.when.scores or {})}
                         - set(self._scorer.names()))
        if unknown:
            raise PolicyError(f"policy {self.policy.id!r} has conditions on unknown score(s) {', '.join(unknown)}; "
                              f"this guard computes: {', '.join(self._scorer.names())}")

    def _with_recorder(self, kwargs: dict, recorder: TokenSignals) -> dict:
        """``kwargs`` with the token-signal recorder appended to any logits processors of the caller."""
        from transformers import LogitsProcessorList

        return {**kwargs, "logits_processor": LogitsProcessorList([*(kwargs.get("logits_processor") or []), recorder])}

    @staticmethod
    def _signal_rows(cap, recorder: TokenSignals, out) -> list[dict]:
        """Per batch row, the token signals (T,) and pooled prompt features (F,) of the one generate."""
        tsig = recorder.result(out)
        feats = cap.features if cap.prompt_features is not None else None
        return [{"token_logprob": tsig.token_logprob[b], "predictive_entropy": tsig.predictive_entropy[b],
                 "margin": tsig.margin[b], "features": None if feats is None else feats[b]}
                for b in range(out.shape[0])]

    # ------------------------------------------------------------------ inputs
    def prompt(self, question: str) -> str:
        """The prompt sent to the model for ``question``."""
        if self.prompt_template is None:
            return self.adapter.build_prompt(self.processor, question, self.prompt_suffix)[0]
        text = question if not self.prompt_suffix else f"{question.strip()} {self.prompt_suffix.strip()}"
        return self.prompt_template.format(question=text)

    def _prepare(self, images: Sequence[ImageLike], questions: Sequence[str]) -> dict:
        return self._prepare_with_images(images, questions)[0]

    def _prepare_with_images(self, images: Sequence[ImageLike], questions: Sequence[str]) -> tuple[dict, list[_Image]]:
        lim = self.limits
        tok = self.processor.tokenizer
        for q in questions:  # cheap checks first: a 100k-character question never reaches the processor
            check_question(q, lim, tok)
        pil = [load_image(img, max_pixels=lim.max_image_pixels, max_aspect_ratio=lim.max_image_aspect_ratio)
               for img in images]
        try:
            inputs = prepare_inputs(self.model, self.processor, pil, [self.prompt(q) for q in questions])
        except Exception as exc:  # the processor's own errors (image size, mode, ...) become one clear error
            raise InputError(f"the processor could not prepare the input: {type(exc).__name__}: {exc}") from exc
        try:
            self.adapter.batch_regions(inputs)
        except InputError as exc:
            raise InputError(f"the prompt does not hold one image's tokens: {exc}") from exc
        return inputs, [_Image(p, src, self.processor) for p, src in zip(pil, images)]

    def _generate_kwargs(self, generate_kwargs: dict) -> dict:
        return check_generate_kwargs(generate_kwargs, self.limits, default_max_new_tokens=DEFAULT_MAX_NEW_TOKENS)

    # ------------------------------------------------------------------ public calls
    def generate(self, image: ImageLike, question: str, *, tags: Iterable[str] = (), **generate_kwargs: Any) -> GuardResult:
        """Answer ``question`` about ``image`` under guard; ``generate_kwargs`` go to ``model.generate``."""
        return self.generate_batch([(image, question)], tags=tags, **generate_kwargs)[0]

    def generate_batch(
        self, items: Sequence[tuple[ImageLike, str]], *, tags: Iterable[str] = (), **generate_kwargs: Any
    ) -> list[GuardResult]:
        """Guard several (image, question) pairs in one padded ``generate`` call; one result each, in order."""
        tags = check_tags(tags)
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise InputError(f"items must be a sequence of (image, question) pairs, got {type(items).__name__}")
        if not items:
            return []
        if not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
            raise InputError("items must be a sequence of (image, question) pairs")
        kwargs = self._generate_kwargs(generate_kwargs)
        images, questions = zip(*items)
        inputs, pil = self._prepare_with_images(images, questions)  # bad input fails here, before any generation
        n_prompt = inputs["input_ids"].shape[1]
        clock = _StepClock()  # when each step's tokens came out, for the token events
        start = time.perf_counter()
        # The model lock covers the model's work only: span processors, scoring, the policy and
        # an escalation handler (which may be slow) run outside it, so they never stall other calls.
        with self._span(f"{semconv.CHAT_SPAN_PREFIX} {self.model_name}") as chat_span:
            error: BaseException | None = None
            maps = out = regions = None
            rows_signals: list[dict] = [{} for _ in questions]
            with self._lock:
                t0 = time.perf_counter()
                try:
                    recorder = TokenSignals()
                    with torch.no_grad(), capture(self.model, self.proxy, thread="current", adapter=self.adapter) as cap:
                        out = self.model.generate(**inputs, **self._with_recorder(kwargs, recorder), streamer=clock)
                    maps = [cap.maps_2d(b).numpy() for b in range(out.shape[0])]  # B x (T, rows, cols) | (T, 1, N_img)
                    regions = cap.regions
                    rows_signals = self._signal_rows(cap, recorder, out)
                except (CaptureError, GuardrailError) as exc:  # the guard failed, not the model
                    error = exc
                except (ValueError, TypeError) as exc:  # generate validates its arguments before any work
                    self._record_error(chat_span)
                    raise InputError(f"model.generate refused the call: {type(exc).__name__}: {exc}") from exc
                except Exception:
                    self._record_error(chat_span)
                    raise
                if out is None:
                    if self.policy.on_error == "fail_open":  # the user still gets the (unguarded) answer
                        with torch.no_grad():
                            out = self.model.generate(**inputs, **kwargs)
                    else:
                        out = inputs["input_ids"]  # nothing generated is shown
                model_s = time.perf_counter() - t0
            results, answers, prompts = [], [], []
            for b, question in enumerate(questions):
                gen = out[b, n_prompt:].tolist()
                row_maps = None if maps is None else maps[b]
                prompts.append(int(inputs["attention_mask"][b].sum()))  # this row's prompt, without padding
                result, answer = self._finish(question, gen, row_maps, error, tags, kwargs, model_s, start,
                                              n_prompt=prompts[-1], image=pil[b], row=b, n_rows=len(questions),
                                              token_times=clock.times, signals=rows_signals[b],
                                              regions=None if regions is None else regions[b])
                results.append(result)
                answers.append(answer)
            self._annotate_chat(chat_span, results, answers, prompts, kwargs, pil)
        return results

    def stream(
        self, image: ImageLike, question: str, *, tags: Iterable[str] = (), **generate_kwargs: Any
    ) -> Iterator[Union[TokenEvent, GuardResult]]:
        """Yield a :class:`TokenEvent` per token as it is generated, then the final :class:`GuardResult`.

        The map of a token is computed before the token is sampled, so each event carries both.
        """
        from transformers.generation.streamers import BaseStreamer

        tags = check_tags(tags)
        kwargs = self._generate_kwargs(generate_kwargs)
        inputs, pil = self._prepare_with_images([image], [question])
        tokens: "queue.Queue[Any]" = queue.Queue()
        times: list[int] = []
        done = object()
        tok = self.processor.tokenizer

        class _Streamer(BaseStreamer):
            def __init__(self):
                self.prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:  # generate first sends the prompt
                    self.prompt_seen = True
                    return
                times.append(time.time_ns())
                tokens.put(int(value.reshape(-1)[0]))

            def end(self):
                pass

        box: dict[str, Any] = {}

        def worker():
            try:
                recorder = TokenSignals()
                with self._lock, torch.no_grad(), capture(self.model, self.proxy, thread="current",
                                                          adapter=self.adapter) as cap:
                    box["cap"] = cap
                    box["out"] = self.model.generate(**inputs, **self._with_recorder(kwargs, recorder),
                                                     streamer=_Streamer())
                box["signals"] = self._signal_rows(cap, recorder, box["out"])[0]
            except BaseException as exc:  # handed to the consumer thread
                box["error"] = exc
            finally:
                tokens.put(done)

        start = time.perf_counter()
        start_ns = time.time_ns()  # the chat span is opened after the stream, with the real start time
        thread = threading.Thread(target=worker, name="fastrm-guard-stream", daemon=True)
        thread.start()
        index = 0
        while True:
            item = tokens.get()
            if item is done:
                break
            cap = box["cap"]
            m = cap.map(index).numpy()
            m = m if m.ndim == 2 else m[None]  # several regions: (1, N_img), as in the result's maps
            try:
                entropy = float(token_entropy(m, normalized=True, map_ndim=2))
            except GuardrailError:  # a bad map (NaN): the final result applies on_error
                entropy = float("nan")
            yield TokenEvent(index=index, token_id=item, token=tok.decode([item]), map=m, entropy=entropy)
            index += 1
        thread.join()
        model_s = time.perf_counter() - start
        error = box.get("error")
        if error is not None and not isinstance(error, GuardrailError):
            raise error
        n_prompt = inputs["input_ids"].shape[1]
        gen, maps, regions = [], None, None
        if error is None:
            gen = box["out"][0, n_prompt:].tolist()
            try:
                maps = box["cap"].maps_2d(0).numpy()
                regions = box["cap"].regions[0]
            except GuardrailError as exc:
                error = exc
        if error is not None and not gen and self.policy.on_error == "fail_open":  # the answer, unguarded
            with self._lock, torch.no_grad():
                gen = self.model.generate(**inputs, **kwargs)[0, n_prompt:].tolist()
        with self._span(f"{semconv.CHAT_SPAN_PREFIX} {self.model_name}", start_time=start_ns) as chat_span:
            result, answer = self._finish(question, gen, maps, error, tags, kwargs, model_s, start,
                                          n_prompt=n_prompt, image=pil[0], token_times=times,
                                          signals=box.get("signals") or {}, regions=regions)
            self._annotate_chat(chat_span, [result], [answer], [n_prompt], kwargs, pil)
        yield result

    # ------------------------------------------------------------------ scoring and deciding
    def _finish(self, question, gen, maps, error, tags, kwargs, model_s, start, *, n_prompt, image=None, row=0,
                n_rows=1, token_times=(), signals: dict | None = None, regions=None) -> tuple[GuardResult, str]:
        """Score, decide and escalate one row, inside its ``apply_guardrail`` span; returns the result and
        the model's own answer (which the result may withhold)."""
        with self._span(semconv.GUARDRAIL_SPAN_NAME) as span:
            t_guard = time.perf_counter()
            result, decision, answer = self._decide(question, gen, maps, error, tags, span, image,
                                                      signals=signals)
            if regions is not None and result.maps is not None:
                result.regions = [MapRegion(image=r.image, kind=r.kind, grid=r.grid) for r in regions]
            guard_s = time.perf_counter() - t_guard
            result.timings = Timings(model_s=model_s, guard_s=guard_s, total_s=time.perf_counter() - start)
            self._annotate_guard(span, result, decision, answer, model_s, guard_s, image=image, row=row,
                                 n_rows=n_rows, n_prompt=n_prompt, token_times=token_times)
        self.metrics.record(result, model=self.model_name, input_tokens=n_prompt)
        return result, answer

    def _decide(self, question, gen, maps, error, tags, span, image,
                signals: dict | None = None) -> tuple[GuardResult, Decision, str]:
        tok = self.processor.tokenizer
        gen, stopped = cut_at_eos(gen, self._eos_ids)
        finish = "stop" if stopped else "length"
        answer = tok.decode(gen, skip_special_tokens=True).strip()
        token_strs = [tok.decode([t]) for t in gen]
        entropies: list[float] = []
        content: list[bool] = []
        score = verdict = None
        scores: dict = {}
        if maps is not None:
            maps = maps[: len(gen)]
        if error is None:
            try:
                if maps is None or len(maps) != len(gen):
                    raise CaptureError(f"{0 if maps is None else len(maps)} maps for {len(gen)} generated tokens")
                cal = self.calibration
                scored = score_answer(maps, gen, tok, normalized=True if cal is None else cal.entropy_normalized,
                                      aggregation="mean" if cal is None else cal.aggregation, eos_ids=self._eos_ids)
                entropies = scored.entropies.tolist()
                content = scored.content.tolist()
                sig = answer_signals(gen, tok, maps=maps, eos_ids=self._eos_ids, **(signals or {}))
                group = next((t for t in tags if cal is not None and cal.groups and t in cal.groups.thresholds), None)
                # no calibration: every score, verdict None ("unscored"); no content token: "uncertain"
                scores, score, verdict = self._scorer.evaluate(sig, group=group)
            except (GuardrailError, ValueError) as exc:
                error = exc
        n_content = int(sum(content))
        max_entropy = max((e for e, c in zip(entropies, content) if c), default=None)
        if error is None:
            decision = decide(self.policy, DecisionContext(verdict=verdict, score=score, threshold=self._threshold(tags),
                                                           n_answer_tokens=n_content, max_token_entropy=max_entropy,
                                                           tags=tags, scores=scores))
        else:
            decision = decide_on_error(self.policy, error)
        text, flagged = apply(decision, answer)
        if decision.action == "escalate" and error is None:
            try:
                escalate(decision, {**self._escalation_payload(question, answer, text, score, verdict, tags, image),
                                    "scores": scores},
                         timeout_s=self.limits.handler_timeout_s, **_ids(span))
            except PolicyError as exc:
                error = exc
                decision = decide_on_error(self.policy, exc)
                text, flagged = apply(decision, answer)
        if error is not None and self.policy.on_error == "fail_closed":
            answer_shown = ""
        else:
            answer_shown = answer
        result = GuardResult(
            question=question, answer=answer_shown, text=text, token_ids=gen, tokens=token_strs,
            maps=maps if error is None else None, entropies=entropies, content=content, score=score,
            scores=scores, threshold=self._threshold(tags), patch_threshold=self.proxy.config.classification_threshold,
            verdict=verdict, action=decision.action, rule=decision.rule,
            reason=decision.reason, flagged=flagged, unguarded=decision.unguarded, policy_id=decision.policy_id,
            policy_version=decision.policy_version, finish_reason=finish,
            error=None if error is None else f"{type(error).__name__}: {error}", tags=list(tags),
        )
        return result, decision, answer

    def _escalation_payload(self, question, answer, text, score, verdict, tags, image) -> dict[str, Any]:
        """What a reviewer needs: the question, the model's answer and what the user got, the scores, the
        model and guard artifacts, and the image by reference (its data only with content capture)."""
        payload: dict[str, Any] = {
            "question": question, "answer": answer, "returned_text": text, "score": score, "verdict": verdict,
            "threshold": self._threshold(tags), "tags": list(tags), "model": self.model_name,
            "proxy_id": self.proxy_id, "calibration_id": self.calibration_id,
        }
        if image is not None:
            payload["image"] = dict(image.reference())
            if self.capture_content:
                payload["image"]["data_uri"] = image_data_uri(image.pil)
        return payload

    def _threshold(self, tags) -> float | None:
        if self.calibration is None:
            return None
        group = next((t for t in tags if self.calibration.groups and t in self.calibration.groups.thresholds), None)
        return self.calibration.threshold_for(group)

    # ------------------------------------------------------------------ telemetry (never raises)
    def _span(self, name: str, start_time: int | None = None):
        # span processors run in a bounded worker: one that raises or hangs never reaches the caller
        return contained_span(self.tracer, name, kind=SpanKind.INTERNAL, timeout_s=self.limits.telemetry_timeout_s,
                              start_time=start_time)

    def _record_error(self, span) -> None:
        try:
            import sys

            exc = sys.exc_info()[1]
            if span.is_recording() and exc is not None:
                span.set_attribute(semconv.ERROR_TYPE, type(exc).__qualname__)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
        except Exception:
            pass

    def _annotate_chat(self, span, results: list[GuardResult], answers: list[str], prompts: list[int], kwargs: dict,
                       images: Sequence[_Image] = ()) -> None:
        """The ``chat`` span: token counts summed over the rows (each row's prompt without padding); content
        (question, the model's answer even when withheld, the image) for a single call under content capture.
        A batch's per-row content is on each row's ``apply_guardrail`` span."""
        try:
            if not span.is_recording():
                return
            span.set_attributes(chat_attributes(
                self.model_name,
                input_tokens=sum(prompts),
                output_tokens=sum(len(r.token_ids) for r in results),
                finish_reasons=[r.finish_reason for r in results],
                max_tokens=kwargs.get("max_new_tokens"),
                temperature=kwargs.get("temperature") if kwargs.get("do_sample") else None,
            ))
            if not self.capture_content:
                return
            if len(results) == 1:
                uri = image_data_uri(images[0].pil) if images else None
                span.set_attributes(chat_content_attributes(results[0].question, answers[0],
                                                            finish_reason=results[0].finish_reason, image_uri=uri))
            else:
                span.set_attributes({
                    semconv.INPUT_VALUE: json.dumps([r.question for r in results], ensure_ascii=False),
                    semconv.INPUT_MIME_TYPE: semconv.MIME_JSON,
                    semconv.OUTPUT_VALUE: json.dumps(answers, ensure_ascii=False),
                    semconv.OUTPUT_MIME_TYPE: semconv.MIME_JSON,
                })
        except Exception:
            pass

    def _write_maps(self, maps: np.ndarray, span) -> Path:
        from safetensors.numpy import save_file

        ctx = span.get_span_context()
        path = self.maps_dir / f"{ctx.trace_id:032x}-{ctx.span_id:016x}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"maps": np.ascontiguousarray(maps, dtype=np.float32)}, str(tmp))
        tmp.replace(path)  # never a half-written file
        return path

    def _annotate_guard(self, span, result: GuardResult, decision: Decision, answer: str, model_s: float,
                        guard_s: float, *, image: _Image | None, row: int, n_rows: int, n_prompt: int,
                        token_times: Sequence[int] = ()) -> None:
        try:
            content = self.capture_content
            if decision.unguarded and not self.capture_content:
                # the reason quotes the error's message, which may quote the question (a handler's
                # exception): with content capture off only the error's type leaves the process
                decision = dataclasses.replace(decision, reason=decision.reason.split(" (", 1)[0]
                                               + f" ({(result.error or 'error').split(':')[0]})")
            if not span.is_recording():
                return
            span.set_attributes(guardrail_attributes(
                decision, verdict=result.verdict, score=result.score, threshold=result.threshold,
                flagged=result.flagged, n_answer_tokens=sum(result.content),
                max_token_entropy=max((e for e, c in zip(result.entropies, result.content) if c), default=None),
                answer=answer if content else None, returned_text=result.text if content else None,
            ))
            span.set_attributes({
                semconv.FASTRM_SCORE_AGGREGATION: "none" if self.calibration is None else self.calibration.aggregation,
                semconv.FASTRM_SCORE_NAME: "none" if self.calibration is None else self.calibration.score.name,
                **{f"{semconv.FASTRM_SCORES_PREFIX}{k}": float(v) for k, v in result.scores.items() if v is not None},
                semconv.FASTRM_MAP_GRID: list(result.grid or self.adapter.fixed_grid or ()),
                semconv.FASTRM_PROXY_ID: self.proxy_id,
                semconv.FASTRM_CALIBRATION_ID: self.calibration_id,
                semconv.FASTRM_MODEL_DURATION: float(model_s),
                semconv.FASTRM_GUARD_DURATION: float(guard_s),  # scoring, deciding, escalating
                semconv.FASTRM_INPUT_TOKENS: int(n_prompt),
                semconv.FASTRM_OUTPUT_TOKENS: len(result.token_ids),
            })
            if n_rows > 1:
                span.set_attributes({semconv.FASTRM_BATCH_INDEX: row, semconv.FASTRM_BATCH_SIZE: n_rows})
                if content:
                    span.set_attribute(semconv.GUARDRAIL_QUESTION, result.question)
            if image is not None:
                span.set_attributes(image_attributes(image.reference(), capture_content=content))
            if result.error:
                span.set_attribute(semconv.ERROR_TYPE, result.error.split(":")[0])
            if result.regions:
                span.set_attribute(semconv.FASTRM_MAP_REGIONS, json.dumps([r.model_dump(mode="json") for r in result.regions]))
            if self.maps_dir is not None and result.maps is not None:
                span.set_attribute(semconv.FASTRM_MAPS_FILE, str(self._write_maps(result.maps, span)))
            if result.maps is not None:
                n_tokens = len(result.tokens)
                # The SDK keeps at most event_limit events per span and drops the *oldest*
                # silently: emit no more token events than fit beside the result event,
                # answer (scored) tokens first, and say how many tokens got none.
                limit = event_limit(span)
                room = n_tokens if limit is None else max(0, min(n_tokens, limit - 1))
                scored = [i for i, c in enumerate(result.content) if c]
                order = list(dict.fromkeys([*scored, *range(n_tokens)]))
                emitted = sorted(order[:room])
                plan = self.map_budget.plan([result.maps[i] for i in emitted],
                                            priority=[k for k, i in enumerate(emitted) if result.content[i]])
                raw = np.atleast_1d(token_entropy(result.maps, map_ndim=2))  # (T,) nats
                log_n = np.log(result.maps.shape[1] * result.maps.shape[2])
                for k, i in enumerate(emitted):
                    span.add_event(semconv.TOKEN_EVENT, token_event_attributes(
                        i, float(raw[i]), entropy_normalized=float(raw[i] / log_n), scored=result.content[i],
                        encoded_map=plan.encoded.get(k),
                        token_id=result.token_ids[i] if self.capture_content else None,
                        text=result.tokens[i] if self.capture_content else None,
                    ), timestamp=token_times[i] if i < len(token_times) else None)
                span.set_attributes(map_budget_attributes(plan, self.map_budget))
                span.set_attributes({
                    semconv.FASTRM_MAPS_DROPPED: n_tokens - len(plan.encoded),  # incl. tokens without an event
                    semconv.FASTRM_TOKEN_EVENTS_DROPPED: n_tokens - len(emitted),
                })
            span.add_event(semconv.EVALUATION_RESULT_EVENT, guardrail_result_event_attributes(
                decision, verdict=result.verdict, score=result.score, threshold=result.threshold,
                flagged=result.flagged, error_type=result.error.split(":")[0] if result.error else None,
            ))
        except Exception:  # telemetry must never break the guarded call
            pass


def _ids(span) -> dict[str, str]:
    """``{"trace_id", "span_id"}`` of a recording span, lowercase hex; empty for a non-recording one."""
    try:
        ctx = span.get_span_context()
        if ctx.is_valid:
            return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}
    except Exception:
        pass
    return {}
