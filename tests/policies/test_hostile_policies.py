"""Hostile policy files (issue #18, rows 1, 11, 17, 18, 19): each fails fast with one PolicyError."""

from __future__ import annotations

import io
import sys
import time

import pytest
from rich.console import Console

from fastrm_common.errors import PolicyError
from policies import cli_check, load_policy, parse_policy

# The classic "billion laughs": 9 levels of 9 aliases each, ~10^9 leaves once expanded; 500-odd bytes.
BILLION_LAUGHS = "\n".join(
    ["a0: &a0 [lol]"]
    + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    + ["id: p", "version: 1", "description: *a9", "default: {action: allow}"]
)


def test_row01_billion_laughs_alias_bomb_fails_fast():
    assert len(BILLION_LAUGHS) < 700
    start = time.perf_counter()
    with pytest.raises(PolicyError, match="alias"):
        parse_policy(BILLION_LAUGHS, source="bomb.yaml")
    assert time.perf_counter() - start < 2.0


def test_row01_alias_bomb_under_policy_check_exits_1_quickly(write_policy):
    path = write_policy(BILLION_LAUGHS)
    buf = io.StringIO()
    start = time.perf_counter()
    assert cli_check(path, console=Console(file=buf, width=300)) == 1
    assert time.perf_counter() - start < 2.0
    assert "alias" in buf.getvalue()


def test_row01_recursive_alias_is_rejected():
    with pytest.raises(PolicyError, match="alias"):
        parse_policy("id: p\nversion: 1\ndescription: &a [*a]\ndefault: {action: allow}\n")


def test_row01_ordinary_aliases_still_work():
    p = parse_policy(
        "id: p\nversion: 1\nrules:\n"
        "  - {name: a, when: &w {tags_any: [x]}, action: flag}\n"
        "  - {name: b, when: *w, action: allow}\n"
        "default: {action: allow}\n"
    )
    assert p.rules[1].when.tags_any == ["x"]


@pytest.mark.slow  # PyYAML parses thousands of levels first
@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 1200))])
def test_row18_deeply_nested_yaml_is_a_policy_error(text):
    with pytest.raises(PolicyError, match="nest"):
        parse_policy(text, source="deep.yaml")


def test_row18_huge_integer_in_yaml_is_a_policy_error():
    with pytest.raises(PolicyError):
        parse_policy("id: p\nversion: " + "9" * 5000 + "\ndefault: {action: allow}\n")


def test_row18_latin1_policy_file_is_a_policy_error(tmp_path):
    # (already a PolicyError before #18 for policies; the row's Latin-1 failure was the calibration loader)
    path = tmp_path / "latin.yaml"
    path.write_bytes("id: p\nversion: 1\ndescription: caf\xe9\ndefault: {action: allow}\n".encode("latin-1"))
    with pytest.raises(PolicyError, match="(?i)utf-8"):
        load_policy(path)


def test_row18_oversized_policy_file_is_a_policy_error(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("id: p\nversion: 1\ndefault: {action: allow}\n" + "#" * (2 << 20) + "\n")
    with pytest.raises(PolicyError, match="larger than"):
        load_policy(path)


@pytest.mark.parametrize("bound", ["{gt: .inf}", "{lt: .nan}", "{gte: -.inf}", "{lte: .NaN}"])
def test_row19_nan_and_inf_bounds_are_rejected(bound):
    text = f"id: p\nversion: 1\nrules:\n  - name: r\n    when: {{score: {bound}}}\n    action: abstain\ndefault: {{action: allow}}\n"
    with pytest.raises(PolicyError, match=r"p.yaml:5: rules\[0\]\.when\.score\.\w+: expected a finite number"):
        parse_policy(text, source="p.yaml")


def test_row17_bundled_name_is_not_shadowed_by_a_file_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "strict").write_text("id: evil\nversion: 1\ndefault: {action: allow}\n")
    assert load_policy("strict").id == "strict"
    assert load_policy("./strict").id == "evil"  # a file is still reachable, explicitly


def test_row11_policy_check_does_not_import_handlers_unless_asked(write_policy, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "sideeffect_mod_q.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\ndef handle(record):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sideeffect_mod_q", raising=False)
    path = write_policy('id: p\nversion: 1\ndefault: {action: escalate, escalation: {handler: "sideeffect_mod_q:handle"}}\n')
    buf = io.StringIO()
    assert cli_check(path, console=Console(file=buf, width=300)) == 0
    assert not marker.exists(), "policy check ran the handler module's top-level code"
    assert "not imported" in buf.getvalue()
    assert cli_check(path, console=Console(file=io.StringIO()), import_handlers=True) == 0
    assert marker.exists()
