"""Loading valid and invalid policy files; error messages are checked verbatim."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastrm_common.errors import GuardrailError, PolicyError
from policies import ACTIONS, Policy, list_bundled_policies, load_policy, parse_policy

FULL = """
id: full-example
version: "2.1"
description: every field used once
on_error: fail_closed
abstain_message: Not sure.
rules:
  - name: confident
    when:
      verdict: confident
      score: {lt: 0.5}
      margin: {lte: 0}
      n_answer_tokens: {gte: 1, lte: 20}
      max_token_entropy: {gt: 0.1, lt: 0.99}
      tags_any: [a, b]
      tags_all: [c]
    action: allow
    reason: looks grounded
  - name: review
    when: {tags_any: [medical]}
    action: escalate
    escalation:
      queue: queue/escalations.jsonl
      withhold: false
  - name: page
    action: escalate
    escalation: {handler: "my_pkg.hooks:page", message: Under review.}
  - name: refuse
    when: {verdict: uncertain}
    action: abstain
    message: No.
default:
  action: flag
  reason: no rule matched
"""


def test_full_policy_loads_with_every_field(write_policy):
    path = write_policy(FULL)
    p = load_policy(path)
    assert isinstance(p, Policy)
    assert (p.id, p.version, p.on_error, p.abstain_message) == ("full-example", "2.1", "fail_closed", "Not sure.")
    assert [r.name for r in p.rules] == ["confident", "review", "page", "refuse"]
    when = p.rules[0].when
    assert when.verdict == "confident" and when.tags_any == ["a", "b"] and when.tags_all == ["c"]
    assert (when.n_answer_tokens.gte, when.n_answer_tokens.lte) == (1, 20)
    assert (when.max_token_entropy.gt, when.max_token_entropy.lt) == (0.1, 0.99)
    assert p.rules[2].escalation.handler == "my_pkg.hooks:page"
    assert p.rules[2].escalation.withhold is True
    assert p.default.action == "flag"


def test_relative_queue_is_resolved_against_the_policy_file(write_policy):
    path = write_policy(FULL)
    queue = load_policy(path).rules[1].escalation.queue
    assert Path(queue) == path.resolve().parent / "queue" / "escalations.jsonl"


def test_string_source_with_separator_is_a_file(write_policy):
    path = write_policy(FULL)
    assert load_policy(str(path)).id == "full-example"


def test_minimal_policy_and_integer_version():
    p = parse_policy("id: p\nversion: 3\ndefault: {action: allow}\n")
    assert p.version == "3" and p.rules == [] and p.on_error == "fail_open" and p.description is None


def test_policy_object_passes_through():
    p = parse_policy("id: p\nversion: 1\ndefault: {action: allow}\n")
    assert load_policy(p) is p


@pytest.mark.parametrize("name", ["default", "strict", "observe-only"])
def test_bundled_policies_load(name):
    p = load_policy(name)
    assert p.id == name
    assert p.version == "1"
    assert p.description


def test_bundled_list():
    assert list_bundled_policies() == ["default", "observe-only", "redact-claims", "strict"]


def test_actions_constant_matches_schema():
    assert ACTIONS == ("allow", "flag", "redact", "abstain", "escalate")


# ------------------------------------------------------------------ invalid files


def _error(path: Path) -> str:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert isinstance(info.value, GuardrailError) and isinstance(info.value, ValueError)
    return str(info.value)


def test_unknown_key_names_file_line_field_and_choices(write_policy):
    path = write_policy(
        """
        id: p
        version: 1
        rules:
          - name: r
            when:
              verdict: uncertain
              treshold: 0.5
            action: flag
        default: {action: allow}
        """
    )
    assert _error(path) == (
        f"{path}:7: rules[0].when.treshold: unknown key 'treshold'; expected one of: "
        "claims, margin, max_token_entropy, n_answer_tokens, score, scores, tags_all, tags_any, verdict"
    )


def test_unknown_top_level_key(write_policy):
    path = write_policy("id: p\nversion: 1\ndefaults: {action: allow}\ndefault: {action: allow}\n")
    assert _error(path) == (
        f"{path}:3: defaults: unknown key 'defaults'; expected one of: "
        "abstain_message, default, description, id, on_error, rules, version"
    )


def test_unknown_key_inside_optional_blocks(write_policy):
    path = write_policy(
        """
        id: p
        version: 1
        rules:
          - name: r
            when:
              score: {gte: 0.1, below: 2}
            action: flag
        default:
          action: escalate
          escalation: {queue: q.jsonl, hold: true}
        """
    )
    assert _error(path) == (
        f"{path}:6: rules[0].when.score.below: unknown key 'below'; expected one of: gt, gte, lt, lte\n"
        f"{path}:10: default.escalation.hold: unknown key 'hold'; expected one of: handler, message, queue, withhold"
    )


def test_bad_action_lists_the_choices(write_policy):
    path = write_policy(
        """
        id: p
        version: 1
        rules:
          - name: r
            action: abstian
        default: {action: allow}
        """
    )
    assert _error(path) == (
        f"{path}:5: rules[0].action: unknown action 'abstian'; expected one of: allow, flag, redact, abstain, escalate"
    )


def test_bad_default_action_and_on_error(write_policy):
    path = write_policy("id: p\nversion: 1\non_error: open\ndefault:\n  action: deny\n")
    assert _error(path) == (
        f"{path}:3: on_error: unknown on_error 'open'; expected one of: fail_open, fail_closed\n"
        f"{path}:5: default.action: unknown action 'deny'; expected one of: allow, flag, redact, abstain, escalate"
    )


def test_wrong_type(write_policy):
    path = write_policy(
        """
        id: p
        version: 1
        rules:
          - name: r
            when:
              score: {gte: high}
            action: flag
        default: {action: allow}
        """
    )
    assert _error(path) == f"{path}:6: rules[0].when.score.gte: expected a number, got a string ('high')"


def test_wrong_type_no_coercion(write_policy):
    path = write_policy("id: p\nversion: 1\nrules: {name: r}\ndefault: {action: allow}\n")
    assert _error(path) == f"{path}:3: rules: expected a list, got a mapping"
    path = write_policy(
        "id: p\nversion: 1\ndefault: {action: escalate, escalation: {queue: q.jsonl, withhold: 'no'}}\n"
    )
    assert _error(path) == f"{path}:3: default.escalation.withhold: expected true or false, got a string ('no')"


def test_missing_required_field(write_policy):
    path = write_policy(
        """
        id: p
        version: 1
        rules:
          - when: {verdict: uncertain}
            action: flag
        """
    )
    assert _error(path) == (
        f"{path}:1: default: missing required field\n{path}:4: rules[0].name: missing required field"
    )


def test_float_version_asks_for_quotes(write_policy):
    path = write_policy("id: p\nversion: 1.10\ndefault: {action: allow}\n")
    assert _error(path) == f'{path}:2: version: expected a string or an integer, got the number 1.10; quote it: "1.10"'


def test_escalate_needs_a_target(write_policy):
    path = write_policy("id: p\nversion: 1\ndefault:\n  action: escalate\n")
    assert _error(path) == (
        f"{path}:4: default.escalation: action 'escalate' needs an 'escalation' block with a 'handler' or a 'queue'"
    )
    path = write_policy(
        "id: p\nversion: 1\ndefault:\n  action: escalate\n  escalation:\n    handler: a.b:c\n    queue: q.jsonl\n"
    )
    assert _error(path) == f"{path}:6: default.escalation: give exactly one of 'handler' and 'queue'"


def test_bad_handler_syntax(write_policy):
    path = write_policy("id: p\nversion: 1\ndefault:\n  action: escalate\n  escalation: {handler: my.module.fn}\n")
    assert _error(path) == (
        f"{path}:5: default.escalation.handler: invalid handler 'my.module.fn'; expected 'package.module:callable'"
    )


def test_settings_of_other_actions_are_rejected(write_policy):
    path = write_policy("id: p\nversion: 1\ndefault:\n  action: flag\n  message: hi\n")
    assert _error(path) == (
        f"{path}:5: default.message: 'message' applies to action 'abstain' only (this action is 'flag'); "
        "for escalate, set escalation.message"
    )
    path = write_policy("id: p\nversion: 1\ndefault:\n  action: allow\n  escalation: {queue: q.jsonl}\n")
    assert _error(path) == (
        f"{path}:5: default.escalation: 'escalation' applies to action 'escalate' only (this action is 'allow')"
    )


def test_range_errors(write_policy):
    path = write_policy(
        """
        id: p
        version: 1
        rules:
          - name: a
            when: {score: {gte: 0.5, lt: 0.5}}
            action: flag
          - name: b
            when: {score: {}}
            action: flag
          - name: c
            when: {score: {gt: 0.1, gte: 0.2}}
            action: flag
        default: {action: allow}
        """
    )
    assert _error(path) == (
        f"{path}:5: rules[0].when.score: empty range: no number satisfies 0.5 <= x < 0.5\n"
        f"{path}:8: rules[1].when.score: give at least one of 'gt', 'gte', 'lt', 'lte'\n"
        f"{path}:11: rules[2].when.score: give at most one of 'gt' and 'gte'"
    )


def test_duplicate_rule_names_and_reserved_names(write_policy):
    path = write_policy(
        """
        id: p
        version: 1
        rules:
          - name: r
            action: flag
          - name: r
            action: allow
        default: {action: allow}
        """
    )
    assert _error(path) == f"{path}:6: rules[1].name: duplicate rule name 'r'"
    path = write_policy("id: p\nversion: 1\nrules:\n  - name: default\n    action: flag\ndefault: {action: allow}\n")
    assert _error(path) == f"{path}:4: rules[0].name: rule name 'default' is reserved; choose another name"


def test_empty_tags_and_empty_strings(write_policy):
    path = write_policy(
        "id: ''\nversion: 1\nrules:\n  - name: r\n    when: {tags_all: []}\n    action: flag\ndefault: {action: allow}\n"
    )
    assert _error(path) == (f"{path}:1: id: must not be empty\n{path}:5: rules[0].when.tags_all: must not be empty")


def test_duplicate_yaml_key(write_policy):
    path = write_policy("id: p\nversion: 1\nid: q\ndefault: {action: allow}\n")
    assert _error(path) == f"{path}:3: id: duplicate key 'id'"


def test_yaml_syntax_error_has_line(write_policy):
    path = write_policy("id: p\nversion: 1\nrules:\n  - name: [unclosed\ndefault: {action: allow}\n")
    message = _error(path)
    assert message.startswith(f"{path}:5: invalid YAML: ")


def test_empty_and_non_mapping_files(write_policy):
    assert _error(write_policy("", name="empty.yaml")).endswith("empty.yaml:1: policy file is empty")
    path = write_policy("- a\n- b\n")
    assert _error(path) == f"{path}:1: (top level): expected a mapping, got a list"


def test_missing_file_and_unknown_bundled_name(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError, match="policy file not found: .*nope.yaml"):
        load_policy(missing)
    with pytest.raises(PolicyError) as info:
        load_policy("stritc")
    assert str(info.value) == (
        "unknown bundled policy 'stritc'; expected one of: default, observe-only, redact-claims, strict (or a path to a .yaml file)"
    )


def test_directory_is_not_readable_as_policy(tmp_path):
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(folder)


def test_parse_policy_names_its_source():
    with pytest.raises(PolicyError) as info:
        parse_policy("id: p\nversion: 1\n", source="inline")
    assert str(info.value) == "inline:1: default: missing required field"


def test_schema_models_are_strict_in_python_too():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Policy.model_validate({"id": "p", "version": "1", "default": {"action": "allow"}, "extra": 1})


@pytest.mark.parametrize("verdict, claims, action, rule", [
    ("uncertain", ("confident", "confident", "confident"), "allow", "claims-supported"),  # gated description
    ("uncertain", ("confident", "uncertain", "confident"), "redact", "some-claims-uncertain"),
    ("confident", ("uncertain", "uncertain"), "abstain", "all-claims-uncertain"),
    ("uncertain", ("uncertain",), "flag", "uncertain"),  # a short answer keeps the answer's verdict
    ("confident", ("confident",), "allow", "claims-supported"),
    ("uncertain", (None, None), "flag", "uncertain"),  # claims without a claim calibration: the answer decides
    ("uncertain", (), "flag", "uncertain"),
])
def test_redact_claims_judges_a_several_claim_answer_by_its_claims(verdict, claims, action, rule):
    """The bundled redact-claims policy: a description none of whose claims is uncertain is allowed
    whatever the whole answer's verdict (for a description, the answer calibration's novelty gate);
    short answers and unscored claims fall back to the answer's verdict."""
    from policies import DecisionContext, decide

    decision = decide(load_policy("redact-claims"), DecisionContext(verdict=verdict, claim_verdicts=claims))
    assert (decision.action, decision.rule) == (action, rule)
