"""OpenTelemetry metrics of guarded calls (``opentelemetry-api`` only; the SDK is the application's).

Six instruments, created once per :class:`GuardMetrics` from a meter provider (default: the
global one, which is a no-op until an SDK is installed, e.g. by
:func:`guardrail.telemetry.exporters.configure_metrics`):

============================================  =========  ========  ==================================================
name                                          kind       unit      attributes
============================================  =========  ========  ==================================================
``gen_ai.client.operation.duration``          histogram  s         ``gen_ai.operation.name``, ``gen_ai.request.model``
``gen_ai.client.token.usage``                 histogram  {token}   the same, plus ``gen_ai.token.type`` (input/output)
``fastrm.guardrail.verdicts``                 counter    {call}    verdict (``unguarded`` when the guard failed),
                                                                   policy id and version, rule, model
``fastrm.guardrail.actions``                  counter    {call}    action, flagged, policy id and version, rule, model
``fastrm.guardrail.answer_score``             histogram  1         verdict, policy id, model (higher = more uncertain;
                                                                   non-negative scores only: OpenTelemetry histograms
                                                                   refuse negative values, which log-odds and
                                                                   ``visual_contrast`` scores can take)
``fastrm.guardrail.threshold_distance``       histogram  1         verdict, policy id, model: ``|score - threshold|``,
                                                                   for any score (the verdict says the side)
``fastrm.guardrail.duration``                 histogram  s         policy id, model: the guard's own time per call
============================================  =========  ========  ==================================================

The two ``gen_ai.client.*`` histograms follow the GenAI semantic conventions (names, units,
attribute keys and the advised bucket boundaries). Recording never raises: a broken meter
provider loses the measurement, not the call.

    >>> metrics = GuardMetrics()                                        # doctest: +SKIP
    >>> metrics.record(result, model="reference", input_tokens=590)     # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics as otel_metrics

import guardrail.telemetry.semconv as semconv

if TYPE_CHECKING:  # pragma: no cover
    from guardrail.result import GuardResult

__all__ = ["DURATION_BUCKETS_S", "TOKEN_BUCKETS", "GuardMetrics"]

_log = logging.getLogger(__name__)

# The GenAI conventions' advised boundaries for gen_ai.client.operation.duration and token.usage.
DURATION_BUCKETS_S = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
# Guard overhead is milliseconds; scores are entropies (normalised ones lie in [0, 1], raw ones in nats).
_GUARD_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


class GuardMetrics:
    """The instruments above, and :meth:`record` to count one guarded call on them."""

    def __init__(self, meter_provider: otel_metrics.MeterProvider | None = None) -> None:
        from guardrail.telemetry.attributes import package_version

        meter = otel_metrics.get_meter("fastrm-guard", package_version(), meter_provider)
        self.operation_duration = meter.create_histogram(
            semconv.GEN_AI_CLIENT_OPERATION_DURATION, unit="s", description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS_S),
        )
        self.token_usage = meter.create_histogram(
            semconv.GEN_AI_CLIENT_TOKEN_USAGE, unit="{token}", description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=list(TOKEN_BUCKETS),
        )
        self.verdicts = meter.create_counter(
            semconv.METRIC_VERDICTS, unit="{call}", description="Guarded calls by verdict, policy and rule"
        )
        self.actions = meter.create_counter(
            semconv.METRIC_ACTIONS, unit="{call}", description="Guarded calls by action, policy and rule"
        )
        self.answer_score = meter.create_histogram(
            semconv.METRIC_ANSWER_SCORE, unit="1", description="Answer score (aggregated map entropy; higher = more uncertain)",
            explicit_bucket_boundaries_advisory=list(_SCORE_BUCKETS),
        )
        self.threshold_distance = meter.create_histogram(
            semconv.METRIC_THRESHOLD_DISTANCE, unit="1",
            description="How far the answer score lies from the threshold, on the side the verdict says",
            explicit_bucket_boundaries_advisory=list(_SCORE_BUCKETS),
        )
        self.guard_duration = meter.create_histogram(
            semconv.METRIC_GUARD_DURATION, unit="s", description="Time the guard adds to a call (scoring, policy, escalation)",
            explicit_bucket_boundaries_advisory=list(_GUARD_BUCKETS_S),
        )

    def record(self, result: GuardResult, *, model: str, input_tokens: int | None = None,
               duration_s: float | None = None) -> None:
        """Count one guarded call. ``input_tokens`` is this call's own prompt length (not a padded
        batch's); ``duration_s`` the operation's duration (default: ``result.timings.total_s``)."""
        try:
            self._record(result, model, input_tokens, duration_s)
        except Exception:  # metrics must never break the guarded call
            _log.debug("could not record guard metrics", exc_info=True)

    def _record(self, result: GuardResult, model: str, input_tokens: int | None, duration_s: float | None) -> None:
        op = {semconv.GEN_AI_OPERATION_NAME: semconv.GEN_AI_OPERATION_CHAT, semconv.GEN_AI_REQUEST_MODEL: model}
        self.operation_duration.record(float(result.timings.total_s if duration_s is None else duration_s), op)
        if input_tokens is not None:
            self.token_usage.record(int(input_tokens), {**op, semconv.GEN_AI_TOKEN_TYPE: semconv.GEN_AI_TOKEN_TYPE_INPUT})
        self.token_usage.record(len(result.token_ids), {**op, semconv.GEN_AI_TOKEN_TYPE: semconv.GEN_AI_TOKEN_TYPE_OUTPUT})
        policy: dict[str, Any] = {
            semconv.GUARDRAIL_POLICY_ID: result.policy_id,
            semconv.GUARDRAIL_POLICY_VERSION: result.policy_version,
            semconv.GUARDRAIL_RULE: result.rule,
            semconv.GEN_AI_REQUEST_MODEL: model,
        }
        verdict = result.verdict or ("unguarded" if result.unguarded else "none")
        self.verdicts.add(1, {**policy, semconv.GUARDRAIL_VERDICT: verdict})
        self.actions.add(1, {**policy, semconv.GUARDRAIL_ACTION: result.action, semconv.GUARDRAIL_FLAGGED: result.flagged})
        small = {semconv.GUARDRAIL_POLICY_ID: result.policy_id, semconv.GEN_AI_REQUEST_MODEL: model}
        if result.score is not None:
            if result.score >= 0:
                self.answer_score.record(float(result.score), {**small, semconv.GUARDRAIL_VERDICT: verdict})
            if result.threshold is not None:
                self.threshold_distance.record(abs(float(result.score) - float(result.threshold)),
                                               {**small, semconv.GUARDRAIL_VERDICT: verdict})
        self.guard_duration.record(float(result.timings.guard_s), small)
