"""The pure decision engine: each action, rule order, every condition type, on_error."""

from __future__ import annotations

import math

import pytest

from fastrm_common.errors import InputError
from policies import (
    Conditions,
    Decision,
    DecisionContext,
    apply,
    decide,
    decide_on_error,
    load_policy,
    matches,
    parse_policy,
)

POLICY = parse_policy(
    """
id: engine
version: 7
abstain_message: Policy abstains.
rules:
  - name: tagged-review
    when: {tags_all: [medical, prod]}
    action: escalate
    escalation: {queue: /tmp/never-written.jsonl, message: Held for review.}
  - name: tagged-soft
    when: {tags_any: [beta, internal]}
    action: escalate
    escalation: {handler: "some.module:fn", withhold: false}
  - name: very-uncertain
    when: {verdict: uncertain, margin: {gte: 0.5}}
    action: abstain
    message: Rule abstains.
  - name: uncertain
    when: {verdict: uncertain}
    action: flag
    reason: diffuse maps
  - name: long-answer
    when: {n_answer_tokens: {gt: 10}}
    action: flag
  - name: peaky-token
    when: {max_token_entropy: {gte: 0.9}}
    action: abstain
  - name: low-score
    when: {score: {lt: 0.2}}
    action: allow
default:
  action: flag
  reason: nothing matched
"""
)


def ctx(**kw) -> DecisionContext:
    base = dict(verdict="confident", score=0.5, threshold=0.8, n_answer_tokens=3, max_token_entropy=0.5, tags=())
    base.update(kw)
    return DecisionContext(**base)


def test_default_when_nothing_matches():
    d = decide(POLICY, ctx())
    assert (d.rule, d.action, d.reason, d.message, d.unguarded) == ("default", "flag", "nothing matched", None, False)
    assert (d.policy_id, d.policy_version) == ("engine", "7")
    assert apply(d, "answer") == ("answer", True)


def test_allow():
    d = decide(POLICY, ctx(score=0.1))
    assert (d.rule, d.action) == ("low-score", "allow")
    assert d.reason == "rule 'low-score': score < 0.2"
    assert apply(d, "answer") == ("answer", False)


def test_flag_with_reason():
    d = decide(POLICY, ctx(verdict="uncertain", score=0.9))  # margin 0.1 < 0.5
    assert (d.rule, d.action, d.reason) == ("uncertain", "flag", "diffuse maps")
    assert apply(d, "answer") == ("answer", True)


def test_abstain_with_rule_message_and_policy_message():
    d = decide(POLICY, ctx(verdict="uncertain", score=1.4))  # margin 0.6
    assert (d.rule, d.action, d.message) == ("very-uncertain", "abstain", "Rule abstains.")
    assert apply(d, "answer") == ("Rule abstains.", False)
    d = decide(POLICY, ctx(max_token_entropy=0.95))
    assert (d.rule, d.message) == ("peaky-token", "Policy abstains.")
    assert apply(d, "answer") == ("Policy abstains.", False)


def test_escalate_withheld_and_flagged():
    d = decide(POLICY, ctx(tags=["medical", "prod", "x"]))
    assert (d.rule, d.action, d.message) == ("tagged-review", "escalate", "Held for review.")
    assert d.escalation_target == "queue:/tmp/never-written.jsonl"
    assert apply(d, "answer") == ("Held for review.", False)
    d = decide(POLICY, ctx(tags={"internal"}))
    assert (d.rule, d.action, d.message) == ("tagged-soft", "escalate", None)
    assert d.escalation_target == "handler:some.module:fn"
    assert apply(d, "answer") == ("answer", True)


def test_withheld_escalation_without_message_uses_default_text():
    p = parse_policy("id: p\nversion: 1\ndefault: {action: escalate, escalation: {queue: q.jsonl}}\n")
    d = decide(p, ctx())
    assert d.message == "This answer is being reviewed and cannot be shown yet."


def test_first_match_wins():
    # matches tagged-review, very-uncertain, uncertain, long-answer: the first listed wins
    d = decide(POLICY, ctx(verdict="uncertain", score=2.0, n_answer_tokens=20, tags={"medical", "prod"}))
    assert d.rule == "tagged-review"
    d = decide(POLICY, ctx(verdict="uncertain", score=2.0, n_answer_tokens=20))
    assert d.rule == "very-uncertain"


@pytest.mark.parametrize(
    "conditions, context, expected",
    [
        ({"verdict": "uncertain"}, dict(verdict="uncertain"), True),
        ({"verdict": "uncertain"}, dict(verdict="confident"), False),
        ({"score": {"gte": 0.5, "lt": 0.6}}, dict(score=0.5), True),
        ({"score": {"gte": 0.5, "lt": 0.6}}, dict(score=0.6), False),
        ({"score": {"gt": 0.5}}, dict(score=0.5), False),
        ({"score": {"lte": 0.5}}, dict(score=0.5), True),
        ({"score": {"gte": 0.0}}, dict(score=None), False),
        ({"score": {"gte": 0.0}}, dict(score=math.nan), False),
        ({"margin": {"gte": 0.0}}, dict(score=0.8, threshold=0.8), True),
        ({"margin": {"gte": 0.0}}, dict(score=0.79, threshold=0.8), False),
        ({"margin": {"gte": 0.0}}, dict(threshold=None), False),
        ({"n_answer_tokens": {"gte": 2, "lte": 3}}, dict(n_answer_tokens=3), True),
        ({"n_answer_tokens": {"gte": 2, "lte": 3}}, dict(n_answer_tokens=4), False),
        ({"n_answer_tokens": {"lt": 1}}, dict(n_answer_tokens=0), True),
        ({"max_token_entropy": {"gt": 0.7}}, dict(max_token_entropy=0.71), True),
        ({"max_token_entropy": {"gt": 0.7}}, dict(max_token_entropy=None), False),
        ({"tags_any": ["a", "b"]}, dict(tags={"b", "z"}), True),
        ({"tags_any": ["a", "b"]}, dict(tags={"z"}), False),
        ({"tags_all": ["a", "b"]}, dict(tags={"a", "b", "z"}), True),
        ({"tags_all": ["a", "b"]}, dict(tags={"a"}), False),
        ({}, dict(), True),
        # conditions are ANDed
        ({"verdict": "confident", "tags_any": ["a"]}, dict(tags={"a"}), True),
        ({"verdict": "confident", "tags_any": ["a"]}, dict(verdict="uncertain", tags={"a"}), False),
    ],
)
def test_every_condition_type(conditions, context, expected):
    assert matches(Conditions.model_validate(conditions), ctx(**context)) is expected


def test_context_validation():
    with pytest.raises(InputError, match="unknown verdict 'sure'; expected one of: confident, uncertain"):
        DecisionContext(verdict="sure")
    with pytest.raises(InputError, match="tags must be a collection of strings"):
        DecisionContext(verdict="confident", tags="medical")
    with pytest.raises(InputError, match="tags must be strings"):
        DecisionContext(verdict="confident", tags=[1])
    with pytest.raises(InputError, match="n_answer_tokens"):
        DecisionContext(verdict="confident", n_answer_tokens=-1)
    c = DecisionContext(verdict="confident", score=1.0, threshold=0.25, tags=["a", "a"])
    assert c.tags == frozenset({"a"}) and c.margin == 0.75


def test_on_error_fail_open_and_fail_closed():
    open_policy = parse_policy("id: p\nversion: 1\non_error: fail_open\ndefault: {action: allow}\n")
    d = decide_on_error(open_policy, RuntimeError("proxy exploded"))
    assert (d.rule, d.action, d.unguarded) == ("on_error", "flag", True)
    assert d.reason == "guard failed, answer unguarded (RuntimeError: proxy exploded)"
    assert apply(d, "answer") == ("answer", True)

    closed = load_policy("strict")
    d = decide_on_error(closed, "bad map")
    assert (d.rule, d.action, d.unguarded) == ("on_error", "abstain", True)
    assert d.reason == "guard failed, answer withheld (bad map)"
    assert apply(d, "answer") == ("I can't answer this reliably from the image.", False)


@pytest.mark.parametrize(
    "name, verdict, n_tokens, action, flagged",
    [
        ("default", "confident", 2, "allow", False),
        ("default", "uncertain", 2, "flag", True),
        ("strict", "confident", 2, "allow", False),
        ("strict", "uncertain", 2, "abstain", False),
        ("strict", "confident", 0, "abstain", False),
        ("observe-only", "uncertain", 2, "allow", False),
        ("observe-only", "confident", 2, "allow", False),
    ],
)
def test_bundled_policies_behave_as_documented(name, verdict, n_tokens, action, flagged):
    d = decide(load_policy(name), ctx(verdict=verdict, n_answer_tokens=n_tokens))
    assert d.action == action
    assert apply(d, "answer")[1] is flagged


def test_decision_is_immutable():
    d = decide(POLICY, ctx())
    assert isinstance(d, Decision)
    with pytest.raises(AttributeError):
        d.action = "allow"  # type: ignore[misc]


def test_conditions_on_named_scores_and_on_a_missing_verdict():
    from policies import Policy

    policy = Policy.model_validate({
        "id": "p", "version": "1",
        "rules": [
            {"name": "unlikely", "when": {"scores": {"token_nll": {"gt": 0.9}}}, "action": "abstain"},
            {"name": "observe", "when": {"verdict": "unscored"}, "action": "flag"},
        ],
        "default": {"action": "allow"},
    })
    assert "score token_nll" in policy.rules[0].when.describe()
    ctx = DecisionContext(verdict="confident", scores={"token_nll": 1.2})
    assert decide(policy, ctx).rule == "unlikely"
    assert decide(policy, DecisionContext(verdict="confident", scores={"token_nll": 0.1})).rule == "default"
    # a score the guard could not compute does not match
    assert decide(policy, DecisionContext(verdict="confident", scores={"token_nll": None})).rule == "default"
    # no calibration: no verdict, the policy decides on the absence
    assert decide(policy, DecisionContext(verdict=None, scores={"token_nll": 0.1})).rule == "observe"
