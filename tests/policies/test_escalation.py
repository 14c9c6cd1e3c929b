"""Escalation: handler import and call, JSONL queue content, concurrency, errors as PolicyError."""

from __future__ import annotations

import json
import sys
import threading
import types
from datetime import datetime, timezone

import numpy as np
import pytest

from fastrm_common.errors import PolicyError
from policies import (
    DecisionContext,
    decide,
    escalate,
    escalation_record,
    load_policy,
    parse_policy,
    resolve_handler,
)

NOW = datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)


@pytest.fixture
def hooks(monkeypatch):
    """An importable module `fake_hooks` with a recording handler and a failing one."""
    module = types.ModuleType("fake_hooks")
    module.received = []
    module.record = module.received.append
    module.ns = types.SimpleNamespace(record=module.received.append)

    def boom(record):
        raise ConnectionError("pager down")

    module.boom = boom
    module.not_callable = 42
    monkeypatch.setitem(sys.modules, "fake_hooks", module)
    return module


def _decision(escalation_yaml: str):
    policy = parse_policy(f"id: esc\nversion: 3\ndefault:\n  action: escalate\n  escalation: {escalation_yaml}\n")
    return decide(policy, DecisionContext(verdict="uncertain"))


def test_handler_is_imported_and_called_with_the_record(hooks):
    d = _decision('{handler: "fake_hooks:record"}')
    record = escalate(d, {"question": "how many?"}, now=NOW)
    assert hooks.received == [record]
    assert record == {
        "time": "2025-01-02T03:04:05.000006+00:00",
        "policy_id": "esc",
        "policy_version": "3",
        "rule": "default",
        "reason": "no rule matched",
        "payload": {"question": "how many?"},
    }


def test_dotted_attribute_handler(hooks):
    escalate(_decision('{handler: "fake_hooks:ns.record"}'), {}, now=NOW)
    assert len(hooks.received) == 1


def test_handler_import_errors_are_policy_errors(hooks):
    with pytest.raises(PolicyError) as info:
        escalate(_decision('{handler: "no_such_module_xyz:fn"}'), {})
    assert str(info.value) == (
        "cannot import escalation handler 'no_such_module_xyz:fn': "
        "ModuleNotFoundError: No module named 'no_such_module_xyz'"
    )
    with pytest.raises(PolicyError) as info:
        resolve_handler("fake_hooks:missing")
    assert (
        str(info.value)
        == "cannot import escalation handler 'fake_hooks:missing': 'fake_hooks' has no attribute 'missing'"
    )
    with pytest.raises(PolicyError, match="is not callable"):
        resolve_handler("fake_hooks:not_callable")
    with pytest.raises(PolicyError, match="expected 'package.module:callable'"):
        resolve_handler("fake_hooks")


def test_handler_failure_is_a_policy_error_with_cause(hooks):
    with pytest.raises(PolicyError) as info:
        escalate(_decision('{handler: "fake_hooks:boom"}'), {})
    assert str(info.value) == "escalation handler 'fake_hooks:boom' failed: ConnectionError: pager down"
    assert isinstance(info.value.__cause__, ConnectionError)


def test_queue_file_content(tmp_path):
    queue = tmp_path / "deep" / "er" / "queue.jsonl"
    d = _decision(f"{{queue: {queue}}}")
    escalate(d, {"answer": "three", "score": np.float32(0.5), "map": np.eye(2), "tags": {"b", "a"}}, now=NOW)
    escalate(d, {"answer": "four ☃"}, now=NOW)
    lines = queue.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["payload"] == {"answer": "three", "score": 0.5, "map": [[1.0, 0.0], [0.0, 1.0]], "tags": ["a", "b"]}
    assert first["rule"] == "default" and first["policy_id"] == "esc"
    assert json.loads(lines[1])["payload"]["answer"] == "four ☃"


def test_queue_is_append_only(tmp_path):
    queue = tmp_path / "q.jsonl"
    queue.write_text('{"existing": true}\n', encoding="utf-8")
    escalate(_decision(f"{{queue: {queue}}}"), {"n": 1}, now=NOW)
    lines = queue.read_text(encoding="utf-8").splitlines()
    assert lines[0] == '{"existing": true}' and json.loads(lines[1])["payload"] == {"n": 1}


def test_relative_queue_from_file_policy_lands_next_to_the_policy(write_policy):
    path = write_policy("id: p\nversion: 1\ndefault: {action: escalate, escalation: {queue: out/q.jsonl}}\n")
    d = decide(load_policy(path), DecisionContext(verdict="confident"))
    escalate(d, {"x": 1})
    assert (path.parent / "out" / "q.jsonl").exists()


def test_concurrent_escalations_never_interleave(tmp_path):
    queue = tmp_path / "q.jsonl"
    d = _decision(f"{{queue: {queue}}}")
    big = "x" * 20_000  # larger than a pipe buffer: a torn write would show

    def worker(i: int) -> None:
        for j in range(20):
            escalate(d, {"i": i, "j": j, "pad": big})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = [json.loads(line) for line in queue.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 160
    assert sorted((r["payload"]["i"], r["payload"]["j"]) for r in records) == [
        (i, j) for i in range(8) for j in range(20)
    ]


def test_unserialisable_payload_and_unwritable_queue(tmp_path):
    d = _decision(f"{{queue: {tmp_path / 'q.jsonl'}}}")
    with pytest.raises(PolicyError, match="not JSON-serialisable"):
        escalate(d, {"obj": object()})
    blocker = tmp_path / "file"
    blocker.write_text("")
    d = _decision(f"{{queue: {blocker / 'q.jsonl'}}}")
    with pytest.raises(PolicyError, match="cannot append to escalation queue"):
        escalate(d, {})


def test_non_escalation_decision_is_rejected():
    d = decide(load_policy("default"), DecisionContext(verdict="confident"))
    with pytest.raises(PolicyError, match="is 'allow', not an escalation"):
        escalate(d, {})


def test_record_helper_defaults():
    d = _decision("{queue: q.jsonl}")
    record = escalation_record(d)
    assert record["payload"] == {} and record["time"].endswith("+00:00")
    assert "trace_id" not in record and "span_id" not in record


def test_record_carries_trace_and_span_ids(tmp_path):
    d = _decision(f"{{queue: {tmp_path / 'q.jsonl'}}}")
    sent = escalate(d, {"question": "q"}, now=NOW, trace_id="ab" * 16, span_id="cd" * 8)
    line = json.loads((tmp_path / "q.jsonl").read_text())
    assert line == sent and line["trace_id"] == "ab" * 16 and line["span_id"] == "cd" * 8
    assert list(line) == ["time", "policy_id", "policy_version", "rule", "reason", "trace_id", "span_id", "payload"]
