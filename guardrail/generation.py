"""The model's work in one guarded call: one ``model.generate`` under the FastRM capture and the
token-signal recorder, under a per-model lock, with the guard's own failures kept apart from the
model's (fail open: the unguarded answer; fail closed: none).

Thread safety: calls on the same model are serialised by a per-model lock (``generate`` on one model
is not re-entrant anyway), and the capture only listens to the thread that runs the guarded
generation, so an unguarded call elsewhere never mixes in.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from calibration import token_entropy
from fastrm_common.errors import CaptureError, GuardrailError
from fastrm_core import capture

from guardrail.answers.pipeline import RowSignals, add_imageless_logprobs, generation_rows
from guardrail.answers.token_signals import TokenSignals

__all__ = ["Generation", "GenerationStream", "StepClock", "generate_under_guard", "model_lock", "scores_after_generate",
           "with_recorder"]

_MODEL_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.Lock:
    """The lock that serialises guarded calls on ``model`` (one per model object)."""
    with _LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


class StepClock:
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


@dataclass(frozen=True)
class Generation:
    """What the model's work gave: ``out`` (B, prompt + T) token ids, ``rows``: per row its maps ((T, rows, cols) for one
    region, (T, 1, N_img) for several) and each row's image ``regions``, or None when the guard failed
    (``error``), each row's signals (:class:`~guardrail.answers.pipeline.RowSignals`), the model's time and the token times."""

    out: torch.Tensor
    regions: list | None
    rows: list[RowSignals] | None
    error: GuardrailError | None
    model_s: float
    token_times: list[int]


def with_recorder(kwargs: dict, recorder: TokenSignals) -> dict:
    """``kwargs`` with the token-signal recorder appended to any logits processors of the caller."""
    from transformers import LogitsProcessorList

    return {**kwargs, "logits_processor": LogitsProcessorList([*(kwargs.get("logits_processor") or []), recorder])}


# generate keeps every step's (B, V) scores until it returns when asked for output_scores: allowed up to this
SCORES_BUDGET_BYTES = 256 << 20


def scores_after_generate(model: Any, inputs: dict, kwargs: dict) -> bool:
    """Whether a call can take its token signals from ``output_scores`` after ``generate`` instead of a
    processor called at every step (:meth:`TokenSignals.record`): greedy decoding (with sampling, the
    warpers run after the caller's processors, so ``output_scores`` is not what the recorder sees), no
    processor the generation config appends last (watermarking, renormalisation), and every step's
    scores within :data:`SCORES_BUDGET_BYTES`."""
    if kwargs.get("do_sample") or "generation_config" in kwargs:
        return False
    config = getattr(model, "generation_config", None)
    if config is None or kwargs.get("renormalize_logits", getattr(config, "renormalize_logits", False)) \
            or kwargs.get("watermarking_config", getattr(config, "watermarking_config", None)) is not None:
        return False
    try:
        vocab = int(model.config.get_text_config().vocab_size)
        rows = int(inputs["input_ids"].shape[0])
        steps = int(kwargs["max_new_tokens"])
    except (AttributeError, KeyError, TypeError, ValueError):
        return False
    return rows * vocab * steps * 4 <= SCORES_BUDGET_BYTES


def generate_under_guard(model: Any, proxy: Any, adapter: Any, lock: threading.Lock, inputs: dict, kwargs: dict, *,
                         fail_open: bool, on_capture: Callable | None = None,
                         on_token: Callable | None = None, visual_contrast: bool = False,
                         regions: list | None = None) -> Generation:
    """The model's work under ``lock``: one captured ``generate`` (maps, token signals, token
    times), with ``visual_contrast`` the image-free pass over its answers
    (:func:`fastrm_core.contrast.imageless_logprobs`, signal ``imageless_logprob``), and on a guard
    failure the unguarded answer (``fail_open``) or none.

    The lock covers the model's work only: span processors, scoring, the policy and an escalation
    handler (which may be slow) run outside it, so they never stall other calls. ``regions``: the
    rows' image regions when the caller has found them already (the capture then reuses them)."""
    # when each step's token came out, for the token events: a stream's streamer notes it; otherwise the
    # capture's step times (no streamer, whose put costs a copy and a call per step)
    clock = StepClock(on_token) if on_token is not None else None
    error: GuardrailError | None = None
    out = rows = found = cap = None
    with lock:
        t0 = time.perf_counter()
        try:
            recorder = TokenSignals()
            with torch.no_grad():
                with capture(model, proxy, thread="current", adapter=adapter, keep_states=True, regions=regions) as cap:
                    if on_capture is not None:
                        on_capture(cap, recorder)
                    if on_capture is None and on_token is None and scores_after_generate(model, inputs, kwargs):
                        res = model.generate(**inputs, **{**kwargs, "output_scores": True,
                                                          "return_dict_in_generate": True})
                        out = res.sequences
                        recorder.record(res.scores, out)
                    else:  # a stream reads the signals while generate runs
                        out = model.generate(**inputs, **with_recorder(kwargs, recorder),
                                             **({} if clock is None else {"streamer": clock}))
                rows = generation_rows(cap, recorder, out)  # B x maps (T, rows, cols) | (T, 1, N_img) + signals
            found = cap.regions
            if visual_contrast:  # one more forward over prompt + answer, the image's evidence removed
                add_imageless_logprobs(rows, model, inputs, out, adapter)
        except (CaptureError, GuardrailError) as exc:  # the guard failed, not the model
            error = exc
        if out is None:
            if fail_open:  # the user still gets the (unguarded) answer
                with torch.no_grad():
                    out = model.generate(**inputs, **kwargs)
            else:
                out = inputs["input_ids"]  # nothing generated is shown
        model_s = time.perf_counter() - t0
    times = clock.times if clock is not None else (cap.times if cap is not None else [])
    return Generation(out=out, rows=rows, regions=found, error=error, model_s=model_s, token_times=times)


class GenerationStream:
    """A guarded generation run in a worker thread whose tokens are handed out as they come.

    ``produce(on_capture, on_token)`` runs the generation (e.g. :func:`generate_under_guard`);
    :meth:`events` yields one :class:`~guardrail.result.TokenEvent` per token, with its map (computed
    before the token is sampled) and normalised entropy, and each closed claim
    (:class:`~guardrail.result.Claim`); :meth:`finished` then returns the
    :class:`Generation` (or raises what the worker raised).
    """

    def __init__(self, produce: Callable[[Callable, Callable], Generation]) -> None:
        self._produce = produce
        self._tokens: "queue.Queue[Any]" = queue.Queue()
        self._done = object()
        self._box: dict[str, Any] = {}
        self._thread: threading.Thread | None = None

    def _worker(self) -> None:
        try:
            self._box["generation"] = self._produce(lambda cap, rec: self._box.update(cap=cap, recorder=rec),
                                                    lambda value: self._tokens.put(int(value.reshape(-1)[0])))
        except BaseException as exc:  # handed to the consumer thread
            self._box["error"] = exc
        finally:
            self._tokens.put(self._done)

    def events(self, tokenizer: Any, claims: Any = None):
        """Token events as the tokens come; with ``claims`` (a
        :class:`~guardrail.answers.claims.ClaimStream`), each claim as soon as it closes."""
        from guardrail.result import TokenEvent

        self._thread = threading.Thread(target=self._worker, name="fastrm-guard-stream", daemon=True)
        self._thread.start()
        index = 0
        ids: list[int] = []
        while True:
            item = self._tokens.get()
            if item is self._done:
                break
            m = self._box["cap"].map(index).numpy()
            m = m if m.ndim == 2 else m[None]  # several regions: (1, N_img), as in the result's maps
            try:
                entropy = float(token_entropy(m, normalized=True, map_ndim=2))
            except GuardrailError:  # a bad map (NaN): the final result applies on_error
                entropy = float("nan")
            yield TokenEvent(index=index, token_id=item, token=tokenizer.decode([item]), map=m, entropy=entropy)
            index += 1
            ids.append(item)
            if claims is not None:
                try:
                    yield from claims.update(ids, self._box["cap"], self._box["recorder"])
                except GuardrailError:  # a claim that cannot be scored now comes with the final result
                    pass
        self._thread.join()

    def finished(self) -> Generation:
        if "error" in self._box:
            raise self._box["error"]
        return self._box["generation"]
