"""The Guard: wraps an app's LLaVA call with FastRM maps, a calibrated verdict and a policy.

    >>> guard = Guard.from_pretrained("reference")            # shipped model, proxy, calibration
    >>> result = guard.generate("scene.png", "What color is the circle?")
    >>> result.answer, result.verdict, result.action, result.text
    ('red', 'confident', 'allow', 'red')
    >>> result.maps.shape                                      # (T, rows, cols): one map per token

Per call: inputs checked and prepared (:mod:`guardrail.inputs`), one ``model.generate`` under the
FastRM capture and a per-model lock (:mod:`guardrail.generation`), each row's signals, scores,
verdict and claims (:mod:`guardrail.answers`), the policy's action. ``generate``,
``generate_batch`` and ``stream`` share one path (``_run``). Each call is reported through hooks
(:mod:`guardrail.telemetry.hooks`): one ``chat {model}`` span with a child ``apply_guardrail fastrm``
span per row; telemetry failures never reach the caller.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from opentelemetry import trace

from calibration import Calibration
from fastrm_core import FastRMProxy, get_adapter, load_vlm
from fastrm_common.images import ImageLike, load_image
from fastrm_common.tokens import decode_each, eos_token_ids, special_token_ids
from fastrm_common.errors import CaptureError, GuardrailError, InputError, PolicyError
from fastrm_common.presets import list_presets, preset_claims, preset_path
from policies import Decision, DecisionContext, Policy, apply, decide, decide_on_error, escalate, load_policy

from guardrail.answers.claims import ClaimStream, claims_left, load_claim_calibration, redact, score_claims
from guardrail.answers.pipeline import (RowScoring, Scorer, calibration_id, check_calibration_identity, cut_at_eos,
                                       gathers_visual_contrast)
from guardrail.generation import Generation, GenerationStream, generate_under_guard, model_lock
from guardrail.inputs import (CallImage, check_items, check_pairs, escalation_payload, per_item_batch,  # noqa: I001
                              prepare_call_inputs, row_warnings)
from guardrail.limits import Limits, check_generate_kwargs, check_tags
from guardrail.result import BatchItemError, Claim, GuardResult, MapRegion, Timings, TokenEvent
from guardrail.telemetry.attributes import MapBudget, content_capture_enabled
from guardrail.telemetry.hooks import GuardHooks, HookChain, OpenTelemetryHooks, RowReport

__all__ = ["Guard", "load_image"]

DEFAULT_MAX_NEW_TOKENS = 16


@dataclass
class _Call:
    """One call's prepared input: its rows' questions and images, the processor's batch, the checked
    tags and ``generate`` arguments, and when it started (``start_ns``: a stream's real start)."""

    questions: list[str]
    images: list[CallImage]
    inputs: dict
    tags: tuple[str, ...]
    kwargs: dict
    start: float  # time.perf_counter()
    start_ns: int | None = None
    regions: list | None = None  # each row's image regions, found when the input was checked


@dataclass(frozen=True)
class _Row:
    """One row of a call: its question and image, the generated token ids, its maps ((T, rows, cols), or
    (T, 1, N_img) over several ``regions``) and signals, and its prompt's length without padding."""

    index: int
    question: str
    image: CallImage
    token_ids: list[int]
    maps: np.ndarray | None
    regions: list | None
    signals: dict
    n_prompt: int


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
        prompt_template: how a question becomes a prompt (with ``<image>`` and ``{question}``); default:
            the processor's chat template, else LLaVA-1.5's (:func:`fastrm_common.prompting.build_prompt`).
        prompt_suffix: text appended to every question (e.g. "Answer the question using up to two
            words."); use the same suffix the proxy and calibration were fitted with.
        model_name: the name used in spans (default: the model's id).
        maps_dir: if set, every guarded call also writes its full-precision maps (T, rows, cols) to
            ``maps_dir/<trace id>-<span id>.safetensors`` and records the path on the span
            (``fastrm.maps.file``), for when the span's byte budget is too small.
        limits: bounds on one call (:class:`~guardrail.limits.Limits`: image pixels and aspect
            ratio, question characters and tokens, ``max_new_tokens``), checked before any model work.
        meter_provider: OpenTelemetry meter provider for the guard's metrics (default: the global one).
        hooks: your own :class:`~guardrail.telemetry.hooks.GuardHooks` (one or several), called after the
            OpenTelemetry hooks with each row's :class:`~guardrail.telemetry.hooks.RowReport`; their
            errors are logged and dropped, never raised into the call.
        claims: the claim splitter (a :data:`fastrm_common.claims.SPLITTERS` name or a callable; None:
            no claims); claim_calibration: a claim-level calibration that judges each claim.
        allow_unhashed_calibration: accept a calibration that names its model but records no
            ``model_hash`` (older files), checking the model by name only; off by default.
        visual_contrast: run the image-free pass (:mod:`fastrm_core.contrast`) and report ``visual_contrast``;
            ``None``: when a calibration uses it, ``False`` refuses one that does. Streams then give
            their claims with the final result (the pass needs the whole answer).
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
        hooks: GuardHooks | Sequence[GuardHooks] | None = None,
        claims: str | Callable | None = "clauses",
        claim_calibration: Calibration | str | os.PathLike | None = None,
        allow_unhashed_calibration: bool = False,
        visual_contrast: bool | None = None,
    ):
        if limits is not None and not isinstance(limits, Limits):
            raise InputError(f"limits must be a guardrail.Limits, got {type(limits).__name__}")
        user_hooks = list(hooks) if isinstance(hooks, (list, tuple)) else [] if hooks is None else [hooks]
        for h in user_hooks:
            if not isinstance(h, GuardHooks):
                raise InputError(f"hooks must be a guardrail.GuardHooks or a list of them, got {type(h).__name__}")
        self.limits, self.model, self.processor, self.adapter = limits or Limits(), model, processor, get_adapter(model)
        self.proxy = proxy if isinstance(proxy, FastRMProxy) else FastRMProxy.from_pretrained(proxy)
        self.proxy.check_compatible(self.adapter)
        self.proxy.to(next(self.adapter.final_norm.parameters()).device)  # a sharded model's last shard
        if calibration is not None and not isinstance(calibration, Calibration):
            calibration = Calibration.load(calibration)
        self.calibration = calibration  # None: observe-only (every score, no verdict)
        self.model_name, self.proxy_id = model_name or self.adapter.model_id, self.proxy.fingerprint()
        if self.calibration is not None:
            check_calibration_identity(self.calibration, self.adapter, model, self.proxy_id, allow_unhashed_calibration)
        self.calibration_id = calibration_id(self.calibration)
        self._scorer = Scorer(self.calibration)
        self.claim_calibration, self.claims = load_claim_calibration(claim_calibration, claims, self.adapter,
                                                                     self.proxy_id, model, allow_unhashed_calibration)
        self._claim_scorer = None if self.claim_calibration is None else Scorer(self.claim_calibration)
        self.visual_contrast = gathers_visual_contrast(visual_contrast, self._scorer, self._claim_scorer)
        self.maps_dir = None if maps_dir is None else Path(maps_dir)
        self.policy = policy if isinstance(policy, Policy) else load_policy(policy)
        self._scorer.check_policy(self.policy)
        if prompt_template is not None and ("{question}" not in prompt_template or "<image>" not in prompt_template):
            raise InputError("prompt_template must contain '<image>' and '{question}'")
        self.prompt_template, self.prompt_suffix = prompt_template, prompt_suffix
        self.capture_content, self.map_budget = content_capture_enabled(capture_content), map_budget or MapBudget()
        # Spans, events and metrics live behind hooks the call path calls (guardrail.telemetry.hooks).
        self._hooks: GuardHooks = OpenTelemetryHooks(
            model_name=self.model_name, tracer_provider=tracer_provider, meter_provider=meter_provider,
            capture_content=self.capture_content, map_budget=self.map_budget, maps_dir=self.maps_dir,
            timeout_s=self.limits.telemetry_timeout_s, grid=self.adapter.fixed_grid, proxy_id=self.proxy_id,
            calibration_id=self.calibration_id,
            score_name="none" if self.calibration is None else self.calibration.score.name,
            aggregation="none" if self.calibration is None else self.calibration.aggregation)
        if user_hooks:
            self._hooks = HookChain([self._hooks, *user_hooks])
        self._lock, tok = model_lock(model), processor.tokenizer
        self._eos_ids, self._special_ids = set(eos_token_ids(self.model, tok)) | self.adapter.stop_token_ids(tok), special_token_ids(tok)

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
        kwargs = {**preset_claims(model), **kwargs}  # the preset's claim splitter and calibration, unless given
        if proxy is None or calibration is None:
            raise InputError("a proxy and a calibration are required for models other than a preset "
                             f"(presets: {', '.join(list_presets()) or 'none installed'})")
        from fastrm_core.verbosity import quiet_loading

        with quiet_loading(model):  # no "Loading weights" bar in the app's output for a local model
            vlm, processor = load_vlm(model, dtype=dtype, device=device)
        return cls(vlm, processor, proxy=proxy, calibration=calibration, policy=policy, **kwargs)

    def prompt(self, question: str) -> str:
        """The prompt sent to the model for ``question``."""
        if self.prompt_template is None:
            return self.adapter.build_prompt(self.processor, question, self.prompt_suffix)[0]
        text = question if not self.prompt_suffix else f"{question.strip()} {self.prompt_suffix.strip()}"
        return self.prompt_template.format(question=text)

    def prepare(self, images: Sequence[ImageLike], questions: Sequence[str]) -> dict:
        """The processor's batch for ``questions`` about ``images``, checked against the guard's
        limits exactly as a guarded call checks it (for a plain ``model.generate`` beside the guard)."""
        return self._prepare_with_images(images, questions)[0]

    def _prepare_with_images(self, images: Sequence[ImageLike], questions: Sequence[str]) -> tuple[dict, list[CallImage], list]:
        return prepare_call_inputs(self.model, self.processor, self.adapter, self.limits, images, questions,
                                   self.prompt)

    def _generate_kwargs(self, generate_kwargs: dict) -> dict:
        return check_generate_kwargs(generate_kwargs, self.limits, default_max_new_tokens=DEFAULT_MAX_NEW_TOKENS)

    # ------------------------------------------------------------------ public calls
    def generate(self, image: ImageLike, question: str, *, tags: Iterable[str] = (), **generate_kwargs: Any) -> GuardResult:
        """Answer ``question`` about ``image`` under guard; ``generate_kwargs`` go to ``model.generate``."""
        return self.generate_batch([(image, question)], tags=tags, **generate_kwargs)[0]

    def generate_batch(
        self, items: Sequence[tuple[ImageLike, str]], *, tags: Iterable[str] = (), return_errors: bool = False,
        **generate_kwargs: Any
    ) -> list[GuardResult] | list[GuardResult | BatchItemError]:
        """Guard several (image, question) pairs in one padded ``generate`` call; one result each, in order.

        By default one bad item (an empty question, an unreadable image) raises an
        :class:`InputError` whose message names it (``item 2: ...``) and nothing is generated. With
        ``return_errors=True`` the good items are answered together and each bad one gets a
        :class:`~guardrail.result.BatchItemError` (its ``index`` and ``error``) in its place; errors
        that concern the whole call (``tags``, ``generate_kwargs``, ``items`` not a sequence of pairs)
        still raise.
        """
        tags, items = check_tags(tags), check_pairs(items)
        if not items:
            return []
        if return_errors:  # each item checked alone, the good ones answered together
            self._generate_kwargs(generate_kwargs)  # the whole call's arguments: raised, not per item
            return per_item_batch(items, lambda im, q: check_items([im], [q], self.limits, self.processor.tokenizer),
                                  lambda good: self.generate_batch(good, tags=tags, **generate_kwargs))
        call = self._call([it[0] for it in items], [it[1] for it in items], tags, generate_kwargs)
        return self._run(call, lambda: self._generate(call))

    def stream(
        self, image: ImageLike, question: str, *, tags: Iterable[str] = (), **generate_kwargs: Any
    ) -> Iterator[Union[TokenEvent, Claim, GuardResult]]:
        """Yield a :class:`TokenEvent` per token as it is generated (its map is computed before the token
        is sampled), each :class:`Claim` of a several-claim answer as soon as it closes (its verdict
        equals the final one), then the final :class:`GuardResult`."""
        call = self._call([image], [question], check_tags(tags), generate_kwargs)
        call.start_ns = time.time_ns()  # the call is reported after the stream, with the real start time
        stream = GenerationStream(lambda on_capture, on_token: self._generate(call, on_capture=on_capture,
                                                                              on_token=on_token))
        claims = None if self.claims is None or self.visual_contrast else ClaimStream(  # the pass needs the whole answer
            self.processor.tokenizer, self._eos_ids, self.claims, self._scorer, self._claim_scorer, call.tags)
        yield from stream.events(self.processor.tokenizer, claims)
        result = self._run(call, stream.finished)[0]
        yield from claims_left(result, claims, deferred=self.claims is not None and self.visual_contrast)
        yield result

    # ------------------------------------------------------------------ the one path of every call
    def _call(self, images: Sequence[ImageLike], questions: Sequence[str], tags: tuple[str, ...],
              generate_kwargs: dict) -> "_Call":
        """Check and prepare one call's input; bad input fails here, before any generation."""
        kwargs = self._generate_kwargs(generate_kwargs)
        inputs, pil, regions = self._prepare_with_images(images, questions)
        return _Call(questions=list(questions), images=pil, inputs=inputs, tags=tags, kwargs=kwargs,
                     start=time.perf_counter(), regions=regions)

    def _generate(self, call: "_Call", *, on_capture=None, on_token=None) -> Generation:
        """The model's work for ``call`` (:func:`guardrail.generation.generate_under_guard`)."""
        return generate_under_guard(self.model, self.proxy, self.adapter, self._lock, call.inputs, call.kwargs,
                                    fail_open=self.policy.on_error == "fail_open", on_capture=on_capture,
                                    on_token=on_token, visual_contrast=self.visual_contrast, regions=call.regions)

    def _run(self, call: "_Call", produce: "Callable[[], Generation]") -> list[GuardResult]:
        """Report the call, get its generation from ``produce`` and decide each row: the sequence every
        public call shares (``generate``, ``generate_batch``, and ``stream`` once its tokens are out)."""
        with self._hooks.call(start_time=call.start_ns) as handle:
            try:
                generation = produce()
            except (ValueError, TypeError) as exc:  # generate validates its arguments before any work
                self._hooks.call_failed(handle)
                raise InputError(f"model.generate refused the call: {type(exc).__name__}: {exc}") from exc
            except Exception:
                self._hooks.call_failed(handle)
                raise
            n_prompt = call.inputs["input_ids"].shape[1]
            reports = [self._finish(call, generation, _Row(
                index=b, question=question, image=call.images[b],
                token_ids=generation.out[b, n_prompt:].tolist(),
                maps=None if generation.rows is None else generation.rows[b].maps,
                regions=None if generation.regions is None else generation.regions[b],
                signals={} if generation.rows is None else generation.rows[b].token_signals,
                n_prompt=int(call.inputs["attention_mask"][b].sum()),  # this row's prompt, without padding
            ), handle) for b, question in enumerate(call.questions)]
            self._hooks.call_done(handle, reports, call.kwargs)
        return [r.result for r in reports]

    # ------------------------------------------------------------------ scoring and deciding
    def _finish(self, call: "_Call", generation: Generation, row: "_Row", handle: Any) -> RowReport:
        """Score, decide and escalate one row, inside the row's hooks."""
        with self._hooks.row(handle) as row_handle:
            t_guard = time.perf_counter()
            result, decision, answer, signals = self._decide(call, row, generation.error,
                                                             self._hooks.row_ids(row_handle))
            if row.regions is not None and result.maps is not None:
                result.regions = [MapRegion(image=r.image, kind=r.kind, grid=r.grid) for r in row.regions]
            guard_s = time.perf_counter() - t_guard
            result.prompt_tokens = row.n_prompt
            result.timings = Timings(model_s=generation.model_s, guard_s=guard_s,
                                     total_s=time.perf_counter() - call.start)
            report = RowReport(result=result, decision=decision, answer=answer, image=row.image, index=row.index,
                               n_rows=len(call.questions), n_prompt=row.n_prompt, model_s=generation.model_s,
                               guard_s=guard_s, token_times=generation.token_times, signals=signals)
            self._hooks.row_done(row_handle, report)
        return report

    def _decide(self, call: "_Call", row: "_Row", error: BaseException | None,
                ids: dict[str, str]) -> tuple[GuardResult, Decision, str, Any]:
        """The row's result, the policy's decision, the model's own answer (which the result may
        withhold) and the answer's signals (None when the guard failed)."""
        tok, tags, question, image = self.processor.tokenizer, call.tags, row.question, row.image
        gen, stopped = cut_at_eos(row.token_ids, self._eos_ids)
        answer = decode_each(tok, [gen], skip_special_tokens=True)[0].strip()
        token_strs = decode_each(tok, [[t] for t in gen])
        scored, claims = RowScoring.empty(), []
        maps = None if row.maps is None else row.maps[: len(gen)]
        if error is None:
            try:  # every signal once, every score, the verdict and why (guardrail.answers.pipeline)
                if maps is None or len(maps) != len(gen):
                    raise CaptureError(f"{0 if maps is None else len(maps)} maps for {len(gen)} generated tokens")
                scored = self._scorer.score_row(gen, tok, maps, row.signals, self._eos_ids, tags, token_strs, self._special_ids)
                if self.claims is not None:
                    claims = score_claims(answer, gen, tok, scored, maps, self.claims, self._scorer, self._claim_scorer, tags)
            except (GuardrailError, ValueError) as exc:
                error, claims = exc, []
        entropies, content, scores, score, verdict = (scored.entropies, scored.content, scored.scores, scored.score,
                                                      scored.verdict)
        n_content = int(sum(content))
        max_entropy = max((e for e, c in zip(entropies, content) if c), default=None)
        if error is None:
            decision = decide(self.policy, DecisionContext(verdict=verdict, score=score, threshold=self._threshold(tags),
                                                           n_answer_tokens=n_content, max_token_entropy=max_entropy,
                                                           tags=tags, scores=scores,
                                                           claim_verdicts=tuple(c.verdict for c in claims),
                                                           claim_scores=tuple(c.score for c in claims)))
        else:
            decision = decide_on_error(self.policy, error)
        if decision.action == "redact":  # the answer without its uncertain claims
            for c in claims:
                c.redacted = c.verdict == "uncertain"
        text, flagged = apply(decision, answer, redact(answer, claims, [c.index for c in claims if c.redacted]))
        if decision.action == "escalate" and error is None:
            try:
                escalate(decision, {**escalation_payload(
                    question=question, answer=answer, returned_text=text, score=score, verdict=verdict,
                    threshold=self._threshold(tags), tags=list(tags), model=self.model_name, proxy_id=self.proxy_id,
                    calibration_id=self.calibration_id, image=image, capture_content=self.capture_content),
                                    "scores": scores},
                         timeout_s=self.limits.handler_timeout_s, **ids)
            except PolicyError as exc:
                error = exc
                decision = decide_on_error(self.policy, exc)
                text, flagged = apply(decision, answer)
        answer_shown = "" if error is not None and self.policy.on_error == "fail_closed" else answer
        result = GuardResult(
            question=question, answer=answer_shown, text=text, token_ids=gen, tokens=token_strs,
            maps=maps if error is None else None, entropies=entropies, content=content, score=score,
            scores=scores, threshold=self._threshold(tags), patch_threshold=self.proxy.config.classification_threshold,
            verdict=verdict, verdict_reason=scored.verdict_reason, action=decision.action, rule=decision.rule,
            reason=decision.reason, flagged=flagged, unguarded=decision.unguarded, policy_id=decision.policy_id,
            policy_version=decision.policy_version, finish_reason="stop" if stopped else "length",
            error=None if error is None else f"{type(error).__name__}: {error}", tags=list(tags),
            image_cropped=image.cropped() if image is not None else None,
            warnings=row_warnings(image, answer, stopped, error), claims=claims,
        )
        return result, decision, answer, scored.signals

    def _threshold(self, tags) -> float | None:
        return self._scorer.threshold(tags)
