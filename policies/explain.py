"""Describing a policy in words, and the logic of ``guardrail policy check FILE``.

``explain_policy`` is pure (policy -> text); ``cli_check`` loads, optionally
checks that every escalation handler imports, prints with rich and returns an
exit code. Importing a handler runs its module's top-level code, so ``policy
check`` does it only when asked (``--import-handlers``).

Example::

    >>> from policies import explain_policy, load_policy
    >>> print(explain_policy(load_policy("observe-only")).splitlines()[0])
    Policy 'observe-only' version 1
"""

from __future__ import annotations

import json
import os
import unicodedata

from rich.console import Console
from rich.markup import escape

from fastrm_common.errors import PolicyError

from .escalation import resolve_handler
from .loading import list_bundled_policies, load_policy
from .schema import DEFAULT_WITHHELD_MESSAGE, ActionSpec, Policy

__all__ = ["cli_check", "describe_action", "explain_policy", "policy_warnings", "printable"]


def printable(text: str) -> str:
    """``text`` with control and format characters written as escapes (``\\u202e``), newlines kept.

    A policy's strings (its description, a rule's name or reason) are shown to a reviewer; a bidi
    override (U+202E) or a terminal escape in them would make the screen show other text than the
    file holds. Categories Cc (controls) and Cf (bidi marks, zero-width characters) are escaped.

        >>> printable("ok\u202e gnirts")
        'ok\\u202e gnirts'
    """
    if text.isprintable():
        return text
    return "".join(c if c == "\n" or unicodedata.category(c) not in ("Cc", "Cf") else f"\\u{ord(c):04x}"
                   for c in text)


def describe_action(spec: ActionSpec, policy: Policy) -> str:
    """What an action does to the answer, in words (``"flag: return the answer, flagged"``)."""
    if spec.action == "allow":
        text = "allow: return the answer unchanged"
    elif spec.action == "flag":
        text = "flag: return the answer, flagged"
    elif spec.action == "redact":
        text = ("redact: return the answer without its uncertain claims (unchanged when none is; "
                f"{_quote(policy.abstain_message)} when every claim is)")
    elif spec.action == "abstain":
        text = f"abstain: replace the answer with {_quote(spec.message or policy.abstain_message)}"
    else:
        esc = spec.escalation
        if esc is None:  # pragma: no cover - the schema forbids it
            text = "escalate"
        elif esc.withhold:
            msg = esc.message or DEFAULT_WITHHELD_MESSAGE
            text = f"escalate to {esc.target}: withhold the answer and return {_quote(msg)}"
        else:
            text = f"escalate to {esc.target}: return the answer, flagged"
    if spec.reason:
        text += f" (reason: {_quote(spec.reason)})"
    return text


def policy_warnings(policy: Policy) -> list[str]:
    """Problems that are legal but probably mistakes, e.g. rules that can never match."""
    warnings: list[str] = []
    catch_all: str | None = None
    for rule in policy.rules:
        if catch_all is not None:
            warnings.append(f"rule {rule.name!r} is never reached: rule {catch_all!r} above it matches every request")
        elif rule.when.is_empty():
            catch_all = rule.name
    if catch_all is not None:
        warnings.append(f"the default action is never used: rule {catch_all!r} matches every request")
    return warnings


def explain_policy(policy: Policy) -> str:
    """A plain-text description of ``policy``: each rule in order, the default, ``on_error`` and warnings."""
    lines = [f"Policy {policy.id!r} version {policy.version}"]
    if policy.description:
        lines += [f"  {line}" for line in policy.description.strip().split("\n")]
    if policy.on_error == "fail_open":
        lines.append("If the guard itself fails (on_error: fail_open): return the answer, flagged as unguarded")
    else:
        lines.append(
            f"If the guard itself fails (on_error: fail_closed): replace the answer with {_quote(policy.abstain_message)}"
        )
    if policy.rules:
        lines.append("Rules, first match wins:")
        for i, rule in enumerate(policy.rules, 1):
            lines.append(f"  {i}. {rule.name}: when {rule.when.describe()} -> {describe_action(rule, policy)}")
    else:
        lines.append("No rules.")
    lines.append(f"Otherwise (default) -> {describe_action(policy.default, policy)}")
    warnings = policy_warnings(policy)
    if warnings:
        lines.append("Warnings:")
        lines += [f"  - {w}" for w in warnings]
    return "\n".join(printable(line) for line in lines)  # each line: no control or bidi character is shown raw


def cli_check(
    source: str | os.PathLike[str], *, console: Console | None = None, import_handlers: bool = False
) -> int:
    """Validate a policy file (or bundled name), print an explanation.

    With ``import_handlers``, also import every escalation handler and check it is
    callable; this runs the handler modules' top-level code, so it is off by default
    and the output says the handlers were not imported.

    Returns the exit code: 0 valid (warnings are printed but allowed), 1 invalid, 2 when
    ``source`` names neither a file nor a bundled policy (bad input, as in the other commands).
    """
    console = console or Console(highlight=False)
    # highlight=False on every print: rich's repr highlighter is quadratic in a line's length (a
    # 1 MiB description took minutes); the text is escaped for markup, never highlighted.
    handlers: list[str] = []
    try:
        policy = load_policy(source)
        handlers = [
            spec.escalation.handler
            for spec in (*policy.rules, policy.default)
            if spec.escalation is not None and spec.escalation.handler is not None
        ]
        if import_handlers:
            for handler in handlers:
                resolve_handler(handler)
    except PolicyError as exc:
        console.print(f"[bold red]invalid policy[/] {escape(printable(os.fspath(source)))}", highlight=False)
        console.print(escape(printable(str(exc))), soft_wrap=True, highlight=False)
        return 2 if _names_nothing(source) else 1
    console.print(f"[bold green]valid policy[/] {escape(printable(os.fspath(source)))}", highlight=False)
    text = explain_policy(policy)
    for line in text.splitlines():
        style = "yellow" if line.startswith(("Warnings:", "  - ")) else None
        console.print(escape(line), style=style, soft_wrap=True, highlight=False)
    if handlers and not import_handlers:
        console.print(
            f"note: escalation handlers not imported ({escape(printable(', '.join(sorted(set(handlers)))))}); "
            "pass --import-handlers to check that they import (this runs their module code)",
            soft_wrap=True,
            highlight=False,
        )
    return 0


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _names_nothing(source: str | os.PathLike[str]) -> bool:
    """True when ``source`` is neither an existing path nor a bundled policy name."""
    text = os.fspath(source)
    return not os.path.exists(text) and text not in list_bundled_policies()
