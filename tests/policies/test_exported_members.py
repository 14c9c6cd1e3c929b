import policies


def test_public_names_are_sorted_and_exported():
    assert policies.__all__ == sorted(policies.__all__)
    for name in policies.__all__:
        assert hasattr(policies, name), name


def test_public_names_change_only_on_purpose():
    assert policies.__all__ == [
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
