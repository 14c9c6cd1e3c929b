"""`policy check`: the explanation text and the exit codes."""

from __future__ import annotations

import io
import sys
import types

from rich.console import Console

from policies import (
    cli_check,
    explain_policy,
    load_policy,
    parse_policy,
    policy_warnings,
)


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=300, color_system=None, highlight=False), buf


def test_explain_lists_rules_in_order_with_actions():
    p = parse_policy(
        """
id: demo
version: 2
description: A demo.
on_error: fail_closed
abstain_message: Nope.
rules:
  - name: sure
    when: {verdict: confident, score: {lt: 0.4}, tags_any: [a, b]}
    action: allow
  - name: review
    when: {margin: {gte: 0.2, lt: 1}, n_answer_tokens: {gt: 3}, max_token_entropy: {lte: 0.9}, tags_all: [x]}
    action: escalate
    reason: needs a human
    escalation: {queue: /tmp/q.jsonl}
  - name: soft
    action: escalate
    escalation: {handler: "m.n:f", withhold: false}
default:
  action: abstain
"""
    )
    assert explain_policy(p) == "\n".join(
        [
            "Policy 'demo' version 2",
            "  A demo.",
            'If the guard itself fails (on_error: fail_closed): replace the answer with "Nope."',
            "Rules, first match wins:",
            "  1. sure: when verdict is confident and score < 0.4 and tags include any of [a, b] -> allow: return the answer unchanged",
            "  2. review: when 0.2 <= margin < 1 and 3 < n_answer_tokens and max_token_entropy <= 0.9 and tags include all of [x]"
            ' -> escalate to queue:/tmp/q.jsonl: withhold the answer and return "This answer is being reviewed and cannot be shown yet."'
            ' (reason: "needs a human")',
            "  3. soft: when always -> escalate to handler:m.n:f: return the answer, flagged",
            'Otherwise (default) -> abstain: replace the answer with "Nope."',
            "Warnings:",
            "  - the default action is never used: rule 'soft' matches every request",
        ]
    )


def test_unreachable_rules_are_warned_about():
    p = parse_policy(
        "id: p\nversion: 1\nrules:\n- {name: all, action: flag}\n- {name: later, action: allow}\ndefault: {action: allow}\n"
    )
    assert policy_warnings(p) == [
        "rule 'later' is never reached: rule 'all' above it matches every request",
        "the default action is never used: rule 'all' matches every request",
    ]


def test_bundled_policies_explain_without_warnings():
    for name in ("default", "strict", "observe-only"):
        assert policy_warnings(load_policy(name)) == []
        assert explain_policy(load_policy(name)).startswith(f"Policy '{name}' version 1")


def test_cli_check_valid_file(write_policy):
    path = write_policy("id: p\nversion: 1\ndefault: {action: flag}\n")
    console, buf = _console()
    assert cli_check(path, console=console) == 0
    out = buf.getvalue()
    assert out.startswith(f"valid policy {path}\n")
    assert "Otherwise (default) -> flag: return the answer, flagged" in out


def test_cli_check_bundled_name():
    console, buf = _console()
    assert cli_check("strict", console=console) == 0
    assert "nothing-scored" in buf.getvalue()


def test_cli_check_invalid_file(write_policy):
    path = write_policy("id: p\nversion: 1\ndefault: {action: abstian}\n")
    console, buf = _console()
    assert cli_check(path, console=console) == 1
    assert buf.getvalue() == (
        f"invalid policy {path}\n"
        f"{path}:3: default.action: unknown action 'abstian'; expected one of: allow, flag, redact, abstain, escalate\n"
    )


def test_cli_check_fails_when_a_handler_does_not_import(write_policy, monkeypatch):
    path = write_policy('id: p\nversion: 1\ndefault: {action: escalate, escalation: {handler: "nope_mod_q:f"}}\n')
    console, buf = _console()
    assert cli_check(path, console=console, import_handlers=True) == 1
    assert "cannot import escalation handler 'nope_mod_q:f'" in buf.getvalue()
    module = types.ModuleType("nope_mod_q")
    module.f = lambda record: None
    monkeypatch.setitem(sys.modules, "nope_mod_q", module)
    assert cli_check(path, console=_console()[0], import_handlers=True) == 0


def test_cli_check_prints_markup_literally(write_policy):
    path = write_policy("id: p\nversion: 1\ndescription: '[bold]not markup[/bold]'\ndefault: {action: allow}\n")
    console, buf = _console()
    assert cli_check(path, console=console) == 0
    assert "[bold]not markup[/bold]" in buf.getvalue()
