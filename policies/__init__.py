"""Policies: what the guard does with a verdict.

A policy is a YAML file (schema in :mod:`policies.schema`, reference in
``docs/policies.md``) of ordered rules -- conditions on the verdict, score,
answer length, per-token entropy and request tags -- each with an action
(``allow``, ``flag``, ``abstain``, ``escalate``), a default action and an
``on_error`` mode for when the guard itself fails.

    >>> from policies import DecisionContext, apply, decide, load_policy
    >>> policy = load_policy("strict")
    >>> decision = decide(policy, DecisionContext(verdict="uncertain", score=1.2, threshold=0.9))
    >>> apply(decision, "three")[0] == policy.abstain_message
    True

Modules: ``schema`` (pydantic models), ``loading`` (YAML with file/field/line
errors, bundled policies), ``engine`` (pure decisions), ``escalation``
(handler / JSONL queue), ``explain`` (``policy check``).
"""

from .engine import Decision, DecisionContext, apply, decide, decide_on_error, matches
from .escalation import escalate, escalation_record, resolve_handler
from .explain import cli_check, describe_action, explain_policy, policy_warnings
from .loading import list_bundled_policies, load_policy, parse_policy
from .schema import ACTIONS, ActionSpec, Bounds, Conditions, Escalation, Policy, Rule

__all__ = [
    "ACTIONS",
    "ActionSpec",
    "Bounds",
    "Conditions",
    "Decision",
    "DecisionContext",
    "Escalation",
    "Policy",
    "Rule",
    "apply",
    "cli_check",
    "decide",
    "decide_on_error",
    "describe_action",
    "escalate",
    "escalation_record",
    "explain_policy",
    "list_bundled_policies",
    "load_policy",
    "matches",
    "parse_policy",
    "policy_warnings",
    "resolve_handler",
]
