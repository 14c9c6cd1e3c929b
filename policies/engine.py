"""The decision engine: a policy and the outcome of a guarded call -> a decision. Pure.

``decide`` walks the policy's rules in order and returns the first match (or
the default); ``decide_on_error`` applies ``on_error`` when the guard itself
failed; ``apply`` turns a decision and the model's answer into the text the
user receives. Nothing here does I/O: running an escalation is
:func:`policies.escalation.escalate`.

Example::

    >>> from policies import DecisionContext, apply, decide, load_policy
    >>> policy = load_policy("default")
    >>> ctx = DecisionContext(verdict="uncertain", score=0.91, threshold=0.8, n_answer_tokens=2)
    >>> d = decide(policy, ctx)
    >>> d.action, apply(d, "a red square")[1]
    ('flag', True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from fastrm_common.errors import InputError

from .schema import (
    DEFAULT_WITHHELD_MESSAGE,
    VERDICTS,
    ActionName,
    ActionSpec,
    Conditions,
    Escalation,
    Policy,
    Verdict,
)

__all__ = ["Decision", "DecisionContext", "apply", "decide", "decide_on_error", "matches"]


@dataclass(frozen=True)
class DecisionContext:
    """What a policy sees of one guarded call.

    - ``verdict``: ``"confident"`` or ``"uncertain"`` (from the calibration), or None when the
      guard runs without a calibration (observe-only: ``when: {verdict: unscored}`` matches).
    - ``score``: the answer score (aggregated map entropy; higher = more uncertain), or None.
    - ``threshold``: the calibration threshold the score was compared with, or None.
    - ``n_answer_tokens``: number of answer tokens that were scored.
    - ``max_token_entropy``: largest per-token entropy among them, or None when there are none.
    - ``scores``: every answer score the guard computed, by name (None where it could not).
    - ``tags``: the request's tags (any iterable of strings; stored as a frozenset).
    - ``claim_verdicts``: each claim's verdict (None: the claim has none), in order.
    - ``claim_scores``: each claim's score (the claim calibration's), None where it has none.
    """

    verdict: Verdict | None
    score: float | None = None
    threshold: float | None = None
    n_answer_tokens: int = 0
    max_token_entropy: float | None = None
    tags: frozenset[str] = field(default_factory=frozenset)
    scores: Mapping[str, float | None] = field(default_factory=dict)
    claim_verdicts: tuple[Verdict | None, ...] = ()
    claim_scores: tuple[float | None, ...] = ()

    def __post_init__(self) -> None:
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise InputError(f"unknown verdict {self.verdict!r}; expected one of: {', '.join(VERDICTS)}")
        if isinstance(self.tags, str):
            raise InputError(f"tags must be a collection of strings, got the string {self.tags!r}")
        tags = frozenset(self.tags)
        bad = sorted(repr(t) for t in tags if not isinstance(t, str))
        if bad:
            raise InputError(f"tags must be strings; got {', '.join(bad)}")
        object.__setattr__(self, "tags", tags)
        if (
            isinstance(self.n_answer_tokens, bool)
            or not isinstance(self.n_answer_tokens, int)
            or self.n_answer_tokens < 0
        ):
            raise InputError(f"n_answer_tokens must be a non-negative integer, got {self.n_answer_tokens!r}")

    @property
    def margin(self) -> float | None:
        """``score - threshold`` (positive = on the uncertain side), or None if either is missing."""
        if self.score is None or self.threshold is None:
            return None
        return self.score - self.threshold


@dataclass(frozen=True)
class Decision:
    """The outcome of applying a policy to one call.

    - ``rule``: the matching rule's name, ``"default"``, or ``"on_error"`` (guard failure).
    - ``action``: ``allow`` | ``flag`` | ``abstain`` | ``escalate``.
    - ``reason``: why, in words (the rule's ``reason`` or its conditions).
    - ``message``: the text returned instead of the answer (abstain, withheld escalation), else None.
    - ``escalation``: the escalation settings for ``escalate``, else None.
    - ``unguarded``: True when the guard failed and ``on_error`` decided.
    """

    policy_id: str
    policy_version: str
    rule: str
    action: ActionName
    reason: str
    message: str | None = None
    escalation: Escalation | None = None
    unguarded: bool = False

    @property
    def escalation_target(self) -> str | None:
        """``"handler:pkg.mod:fn"`` / ``"queue:/path.jsonl"`` for escalations, else None."""
        return self.escalation.target if self.escalation is not None else None


def matches(conditions: Conditions, ctx: DecisionContext) -> bool:
    """True when every condition set in ``conditions`` holds for ``ctx``.

    A range on a quantity that is None or NaN in ``ctx`` does not match.
    """
    if conditions.verdict is not None:
        if (ctx.verdict or "unscored") != conditions.verdict:
            return False
    for name, bounds in (conditions.scores or {}).items():
        value = ctx.scores.get(name)
        if value is None or math.isnan(value) or not bounds.contains(value):
            return False
    for name, value in (
        ("score", ctx.score),
        ("margin", ctx.margin),
        ("n_answer_tokens", ctx.n_answer_tokens),
        ("max_token_entropy", ctx.max_token_entropy),
    ):
        bounds = getattr(conditions, name)
        if bounds is None:
            continue
        if value is None or math.isnan(value) or not bounds.contains(value):
            return False
    if conditions.claims is not None and not _claims_match(conditions.claims, ctx):
        return False
    if conditions.tags_any is not None and ctx.tags.isdisjoint(conditions.tags_any):
        return False
    if conditions.tags_all is not None and not ctx.tags.issuperset(conditions.tags_all):
        return False
    return True


def _claims_match(c, ctx: DecisionContext) -> bool:
    judged = [v for v in ctx.claim_verdicts if v is not None]
    n_uncertain = sum(v == "uncertain" for v in judged)
    if c.any_uncertain is not None and (not judged or (n_uncertain > 0) != c.any_uncertain):
        return False
    if c.n_uncertain is not None and (not judged or not c.n_uncertain.contains(n_uncertain)):
        return False
    if c.share_uncertain is not None and (not judged or not c.share_uncertain.contains(n_uncertain / len(judged))):
        return False
    if c.max_score is not None:
        scores = [s for s in ctx.claim_scores if s is not None and not math.isnan(s)]
        if not scores or not c.max_score.contains(max(scores)):
            return False
    return True


def decide(policy: Policy, ctx: DecisionContext) -> Decision:
    """The first rule of ``policy`` whose conditions hold for ``ctx``, else the default, as a :class:`Decision`."""
    for rule in policy.rules:
        if matches(rule.when, ctx):
            reason = rule.reason or f"rule {rule.name!r}: {rule.when.describe()}"
            return _decision(policy, rule.name, rule, reason)
    return _decision(policy, "default", policy.default, policy.default.reason or "no rule matched")


def decide_on_error(policy: Policy, error: BaseException | str) -> Decision:
    """The decision when the guard itself failed (proxy error, bad map, ...).

    ``on_error: fail_open`` -> ``flag`` (the answer is returned, flagged as
    unguarded); ``fail_closed`` -> ``abstain`` with the policy's abstain message.
    Both have ``rule == "on_error"`` and ``unguarded == True``.
    """
    what = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    if policy.on_error == "fail_open":
        return Decision(
            policy.id, policy.version, "on_error", "flag", f"guard failed, answer unguarded ({what})", unguarded=True
        )
    return Decision(
        policy.id,
        policy.version,
        "on_error",
        "abstain",
        f"guard failed, answer withheld ({what})",
        message=policy.abstain_message,
        unguarded=True,
    )


def apply(decision: Decision, answer_text: str, redacted_text: str | None = None) -> tuple[str, bool]:
    """The text returned to the user and whether it is flagged.

    ``redact`` returns ``redacted_text`` (the answer without its uncertain claims, made by the
    caller; the answer itself when None), or the abstain message when that text is empty.

    ``flagged`` is True when the model's own answer is returned but marked as
    not trusted (``flag``, escalation with ``withhold: false``, fail-open).
    When the answer is replaced (``abstain``, withheld escalation) the message
    is returned and ``flagged`` is False.

    >>> d = Decision("p", "1", "r", "abstain", "uncertain", message="No answer.")
    >>> apply(d, "a red square")
    ('No answer.', False)
    """
    if decision.action == "allow":
        return answer_text, False
    if decision.action == "flag":
        return answer_text, True
    if decision.action == "redact":
        text = answer_text if redacted_text is None else redacted_text
        return (text, False) if text.strip() else (decision.message or "", False)
    if decision.message is not None:  # abstain, or escalate with withhold
        return decision.message, False
    return answer_text, True


def _decision(policy: Policy, rule: str, spec: ActionSpec, reason: str) -> Decision:
    message: str | None = None
    if spec.action == "abstain":
        message = spec.message or policy.abstain_message
    elif spec.action == "redact":  # returned only when every claim is removed
        message = policy.abstain_message
    elif spec.action == "escalate" and spec.escalation is not None and spec.escalation.withhold:
        message = spec.escalation.message or DEFAULT_WITHHELD_MESSAGE
    return Decision(policy.id, policy.version, rule, spec.action, reason, message, spec.escalation)
