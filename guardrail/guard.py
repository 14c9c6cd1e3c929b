"""The Guard: wraps an app's LLaVA call with FastRM maps, a calibrated verdict and a policy.

    >>> guard = Guard.from_pretrained("reference")            # shipped model, proxy, calibration
    >>> result = guard.generate("scene.png", "What color is the circle?")
    >>> result.answer, result.verdict, result.action, result.text
    ('red', 'confident', 'allow', 'red')
    >>> result.maps.shape                                      # (T, rows, cols): one map per token

Per call: the processor builds the prompt, ``model.generate`` runs inside
:func:`fastrm_core.capture` (one proxy query per token, no gradients, no stored
attentions), the maps' entropies give the answer score, the calibration gives the
verdict and the policy the action. ``generate``, ``generate_batch`` and ``stream`` share one
path (``_run``: report the call, generate, fail open or closed, decide each row). The Guard
reports each call through hooks (:mod:`guardrail.instrumentation`), whose OpenTelemetry
implementation records one ``chat {model}`` span with a child ``apply_guardrail fastrm`` span
per row (OpenTelemetry API only; telemetry failures never reach the caller).

Thread safety: calls on the same model are serialised by a per-model lock (``generate``
on one model is not re-entrant anyway), and the capture only listens to the thread that
runs the guarded generation, so an unguarded call elsewhere never mixes in.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from opentelemetry import trace

from calibration import Calibration, token_entropy
from fastrm_core import FastRMProxy, capture, get_adapter, load_vlm, weights_fingerprint
from fastrm_core.inputs import prepare_inputs
from fastrm_common.images import ImageLike, load_image
from fastrm_common.tokens import eos_token_ids
from fastrm_common.errors import CaptureError, GuardrailError, InputError, PolicyError
from fastrm_common.presets import list_presets, preset_path
from policies import Decision, DecisionContext, Policy, apply, decide, decide_on_error, escalate, load_policy

from .instrumentation import GuardHooks, HookChain, OpenTelemetryHooks, RowReport
from .render import view_box
from .limits import Limits, check_generate_kwargs, check_question, check_tags
from .result import BatchItemError, GuardResult, MapRegion, Timings, TokenEvent
from .scoring import Scorer, answer_signals, cut_at_eos, score_answer
from .signals import TokenSignals
from .telemetry import MapBudget, content_capture_enabled, image_data_uri, image_reference

__all__ = ["Guard", "load_image"]

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
    """A generate streamer that notes the wall-clock time (ns) at which each step's tokens came out,
    and hands each step's tokens (B,) to ``on_token`` (a stream's consumer) if given."""

    def __init__(self, on_token: Callable[[torch.Tensor], None] | None = None) -> None:
        self.times: list[int] = []
        self._prompt = True
        self._on_token = on_token

    def put(self, value) -> None:
        if self._prompt:  # generate first sends the prompt
            self._prompt = False
            return
        self.times.append(time.time_ns())
        if self._on_token is not None:
            self._on_token(value)

    def end(self) -> None:
        pass


@dataclass
class _Call:
    """One call's prepared input: its rows' questions and images, the processor's batch, the checked
    tags and ``generate`` arguments, and when it started (``start_ns``: a stream's real start)."""

    questions: list[str]
    images: list[_Image]
    inputs: dict
    tags: tuple[str, ...]
    kwargs: dict
    start: float  # time.perf_counter()
    start_ns: int | None = None


@dataclass(frozen=True)
class _Generation:
    """What the model's work gave: ``out`` (B, prompt + T) token ids, ``maps`` per row ((T, rows, cols) for one
    region, (T, 1, N_img) for several) and each row's image ``regions``, or None when the guard failed
    (``error``), each row's token signals, the model's time and the token times."""

    out: torch.Tensor
    maps: list[np.ndarray] | None
    regions: list | None
    signals: list[dict]
    error: GuardrailError | None
    model_s: float
    token_times: list[int]


@dataclass(frozen=True)
class _Row:
    """One row of a call: its question and image, the generated token ids, its maps ((T, rows, cols), or
    (T, 1, N_img) over several ``regions``) and signals, and its prompt's length without padding."""

    index: int
    question: str
    image: _Image
    token_ids: list[int]
    maps: np.ndarray | None
    regions: list | None
    signals: dict
    n_prompt: int


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
        meter_provider: OpenTelemetry meter provider for the guard's metrics (default: the global one).
        hooks: your own :class:`~guardrail.instrumentation.GuardHooks` (one or a sequence), called at
            the same points of every call as the OpenTelemetry hooks and after them (the row's
            :class:`~guardrail.instrumentation.RowReport`: result, decision, the model's own answer,
            timings); their errors are logged and dropped, never raised into the call.
        allow_unhashed_calibration: accept a calibration that names its model but records no
            ``model_hash`` (files from before hashes were recorded), checking the model by name
            only. Off by default: such a file is refused (a name does not vouch for the weights);
            re-run ``guardrail calibrate`` to record the hash.
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
        allow_unhashed_calibration: bool = False,
    ):
        if limits is not None and not isinstance(limits, Limits):
            raise InputError(f"limits must be a guardrail.Limits, got {type(limits).__name__}")
        user_hooks = list(hooks) if isinstance(hooks, (list, tuple)) else [] if hooks is None else [hooks]
        for h in user_hooks:
            if not isinstance(h, GuardHooks):
                raise InputError(f"hooks must be a guardrail.GuardHooks or a list of them, got {type(h).__name__}")
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
            # The weights are hashed (one pass) when the calibration names a model: a recorded hash is
            # compared, a missing one refused; the folder name alone never vouches for the model.
            named = self.calibration.model_hash is not None or self.calibration.model_id is not None
            if self.calibration.model_hash is None and allow_unhashed_calibration:
                named = False  # the caller's explicit opt-out: compare names only
            # Identified by hash only, as the proxy is: a file that names the model without a hash is refused.
            self.calibration.check_compatible(model_id=None if named else self.adapter.model_id,
                                              model_hash=weights_fingerprint(model) if named else None,
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
        self.capture_content = content_capture_enabled(capture_content)
        self.map_budget = map_budget or MapBudget()
        # Spans, events and metrics live behind hooks the call path calls (guardrail.instrumentation).
        self._hooks: GuardHooks = OpenTelemetryHooks(
            model_name=self.model_name, tracer_provider=tracer_provider, meter_provider=meter_provider,
            capture_content=self.capture_content, map_budget=self.map_budget, maps_dir=self.maps_dir,
            timeout_s=self.limits.telemetry_timeout_s, grid=self.adapter.fixed_grid, proxy_id=self.proxy_id,
            calibration_id=self.calibration_id,
            score_name="none" if self.calibration is None else self.calibration.score.name,
            aggregation="none" if self.calibration is None else self.calibration.aggregation)
        if user_hooks:
            self._hooks = HookChain([self._hooks, *user_hooks])
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

    def _check_items(self, images: Sequence[ImageLike], questions: Sequence[str]) -> list:
        """The RGB images of the items once each question and image passed its checks; the error of a
        batch of several names the item (``item 2: the question is empty``)."""
        lim = self.limits
        tok = self.processor.tokenizer
        several = len(questions) > 1
        for i, q in enumerate(questions):  # cheap checks first: a 100k-character question never reaches the processor
            try:
                check_question(q, lim, tok)
            except InputError as exc:
                raise InputError(f"item {i}: {exc}") if several else exc from None
        pil = []
        for i, img in enumerate(images):
            try:
                pil.append(load_image(img, max_pixels=lim.max_image_pixels, max_aspect_ratio=lim.max_image_aspect_ratio))
            except InputError as exc:
                raise InputError(f"item {i}: {exc}") if several else exc from None
        return pil

    def _prepare_with_images(self, images: Sequence[ImageLike], questions: Sequence[str]) -> tuple[dict, list[_Image]]:
        pil = self._check_items(images, questions)
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
        tags = check_tags(tags)
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise InputError(f"items must be a sequence of (image, question) pairs, got {type(items).__name__}")
        if not items:
            return []
        if not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
            raise InputError("items must be a sequence of (image, question) pairs")
        if return_errors:
            return self._generate_batch_per_item(items, tags, generate_kwargs)
        call = self._call([it[0] for it in items], [it[1] for it in items], tags, generate_kwargs)
        return self._run(call, lambda: self._generate(call))

    def _generate_batch_per_item(self, items, tags, generate_kwargs: dict) -> list[GuardResult | BatchItemError]:
        """``generate_batch(return_errors=True)``: each item checked alone, the good ones answered together."""
        self._generate_kwargs(generate_kwargs)  # the whole call's arguments: raised, not per item
        out: list[GuardResult | BatchItemError | None] = [None] * len(items)
        good: list[int] = []
        for i, (image, question) in enumerate(items):
            try:
                self._check_items([image], [question])
                good.append(i)
            except InputError as exc:
                out[i] = BatchItemError(index=i, error=InputError(f"item {i}: {exc}"))
        try:
            if good:
                for i, r in zip(good, self.generate_batch([items[i] for i in good], tags=tags, **generate_kwargs)):
                    out[i] = r
        except InputError:  # the processor refused the batch as a whole: find the item(s) one by one
            for i in good:
                try:
                    out[i] = self.generate_batch([items[i]], tags=tags, **generate_kwargs)[0]
                except InputError as exc:
                    out[i] = BatchItemError(index=i, error=InputError(f"item {i}: {exc}"))
        return out  # type: ignore[return-value]

    def stream(
        self, image: ImageLike, question: str, *, tags: Iterable[str] = (), **generate_kwargs: Any
    ) -> Iterator[Union[TokenEvent, GuardResult]]:
        """Yield a :class:`TokenEvent` per token as it is generated, then the final :class:`GuardResult`.

        The map of a token is computed before the token is sampled, so each event carries both.
        """
        call = self._call([image], [question], check_tags(tags), generate_kwargs)
        call.start_ns = time.time_ns()  # the call is reported after the stream, with the real start time
        tokens: "queue.Queue[Any]" = queue.Queue()
        done = object()
        box: dict[str, Any] = {}

        def worker():
            try:
                box["generation"] = self._generate(call, on_capture=lambda cap: box.setdefault("cap", cap),
                                                   on_token=lambda value: tokens.put(int(value.reshape(-1)[0])))
            except BaseException as exc:  # handed to the consumer thread
                box["error"] = exc
            finally:
                tokens.put(done)

        def finished() -> _Generation:
            if "error" in box:
                raise box["error"]
            return box["generation"]

        thread = threading.Thread(target=worker, name="fastrm-guard-stream", daemon=True)
        thread.start()
        tok = self.processor.tokenizer
        index = 0
        while True:
            item = tokens.get()
            if item is done:
                break
            m = box["cap"].map(index).numpy()
            m = m if m.ndim == 2 else m[None]  # several regions: (1, N_img), as in the result's maps
            try:
                entropy = float(token_entropy(m, normalized=True, map_ndim=2))
            except GuardrailError:  # a bad map (NaN): the final result applies on_error
                entropy = float("nan")
            yield TokenEvent(index=index, token_id=item, token=tok.decode([item]), map=m, entropy=entropy)
            index += 1
        thread.join()
        yield self._run(call, finished)[0]

    # ------------------------------------------------------------------ the one path of every call
    def _call(self, images: Sequence[ImageLike], questions: Sequence[str], tags: tuple[str, ...],
              generate_kwargs: dict) -> "_Call":
        """Check and prepare one call's input; bad input fails here, before any generation."""
        kwargs = self._generate_kwargs(generate_kwargs)
        inputs, pil = self._prepare_with_images(images, questions)
        return _Call(questions=list(questions), images=pil, inputs=inputs, tags=tags, kwargs=kwargs,
                     start=time.perf_counter())

    def _generate(self, call: "_Call", *, on_capture=None, on_token=None) -> "_Generation":
        """The model's work under the model lock: one captured ``generate`` (maps, token signals, token
        times), and on a guard failure the unguarded answer (fail_open) or none (fail_closed).

        The lock covers the model's work only: span processors, scoring, the policy and an escalation
        handler (which may be slow) run outside it, so they never stall other calls."""
        inputs, kwargs = call.inputs, call.kwargs
        clock = _StepClock(on_token)  # when each step's tokens came out, for the token events
        error: GuardrailError | None = None
        out = maps = regions = None
        signals: list[dict] = [{} for _ in call.questions]
        with self._lock:
            t0 = time.perf_counter()
            try:
                recorder = TokenSignals()
                with torch.no_grad(), capture(self.model, self.proxy, thread="current", adapter=self.adapter) as cap:
                    if on_capture is not None:
                        on_capture(cap)
                    out = self.model.generate(**inputs, **self._with_recorder(kwargs, recorder), streamer=clock)
                maps = [cap.maps_2d(b).numpy() for b in range(out.shape[0])]  # B x (T, rows, cols) | (T, 1, N_img)
                regions = cap.regions
                signals = self._signal_rows(cap, recorder, out)
            except (CaptureError, GuardrailError) as exc:  # the guard failed, not the model
                error = exc
            if out is None:
                if self.policy.on_error == "fail_open":  # the user still gets the (unguarded) answer
                    with torch.no_grad():
                        out = self.model.generate(**inputs, **kwargs)
                else:
                    out = inputs["input_ids"]  # nothing generated is shown
            model_s = time.perf_counter() - t0
        return _Generation(out=out, maps=maps, regions=regions, signals=signals, error=error, model_s=model_s,
                           token_times=clock.times)

    def _run(self, call: "_Call", produce: "Callable[[], _Generation]") -> list[GuardResult]:
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
                maps=None if generation.maps is None else generation.maps[b],
                regions=None if generation.regions is None else generation.regions[b],
                signals=generation.signals[b],
                n_prompt=int(call.inputs["attention_mask"][b].sum()),  # this row's prompt, without padding
            ), handle) for b, question in enumerate(call.questions)]
            self._hooks.call_done(handle, reports, call.kwargs)
        return [r.result for r in reports]

    # ------------------------------------------------------------------ scoring and deciding
    def _finish(self, call: "_Call", generation: "_Generation", row: "_Row", handle: Any) -> RowReport:
        """Score, decide and escalate one row, inside the row's hooks."""
        with self._hooks.row(handle) as row_handle:
            t_guard = time.perf_counter()
            result, decision, answer = self._decide(call, row, generation.error, self._hooks.row_ids(row_handle))
            if row.regions is not None and result.maps is not None:
                result.regions = [MapRegion(image=r.image, kind=r.kind, grid=r.grid) for r in row.regions]
            guard_s = time.perf_counter() - t_guard
            result.prompt_tokens = row.n_prompt
            result.timings = Timings(model_s=generation.model_s, guard_s=guard_s,
                                     total_s=time.perf_counter() - call.start)
            report = RowReport(result=result, decision=decision, answer=answer, image=row.image, index=row.index,
                               n_rows=len(call.questions), n_prompt=row.n_prompt, model_s=generation.model_s,
                               guard_s=guard_s, token_times=generation.token_times)
            self._hooks.row_done(row_handle, report)
        return report

    def _decide(self, call: "_Call", row: "_Row", error: BaseException | None,
                ids: dict[str, str]) -> tuple[GuardResult, Decision, str]:
        """The row's result, the policy's decision and the model's own answer (which the result may withhold)."""
        tok = self.processor.tokenizer
        tags, question, image = call.tags, row.question, row.image
        gen, stopped = cut_at_eos(row.token_ids, self._eos_ids)
        finish = "stop" if stopped else "length"
        answer = tok.decode(gen, skip_special_tokens=True).strip()
        token_strs = [tok.decode([t]) for t in gen]
        entropies: list[float] = []
        content: list[bool] = []
        score = verdict = None
        scores: dict = {}
        maps = None if row.maps is None else row.maps[: len(gen)]
        if error is None:
            try:
                if maps is None or len(maps) != len(gen):
                    raise CaptureError(f"{0 if maps is None else len(maps)} maps for {len(gen)} generated tokens")
                cal = self.calibration
                scored = score_answer(maps, gen, tok, normalized=True if cal is None else cal.entropy_normalized,
                                      aggregation="mean" if cal is None else cal.aggregation, eos_ids=self._eos_ids)
                entropies = scored.entropies.tolist()
                content = scored.content.tolist()
                sig = answer_signals(gen, tok, maps=maps, eos_ids=self._eos_ids, **row.signals)
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
                         timeout_s=self.limits.handler_timeout_s, **ids)
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
