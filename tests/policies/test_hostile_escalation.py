"""Hostile escalation targets (issue #18, rows 10, 12, 13): contained, bounded, never a partial or foreign write."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading
import time
import types

import pytest

from fastrm_common.errors import PolicyError
from policies import DecisionContext, decide, escalate, parse_policy
from policies import escalation as escalation_module


def _decision(escalation_yaml: str):
    policy = parse_policy(f"id: esc\nversion: 1\ndefault:\n  action: escalate\n  escalation: {escalation_yaml}\n")
    return decide(policy, DecisionContext(verdict="uncertain"))


@pytest.fixture
def nasty(monkeypatch):
    module = types.ModuleType("nasty_hooks_q")

    def leave(record):
        sys.exit(3)

    def interrupt(record):
        raise KeyboardInterrupt

    def slow(record):
        time.sleep(5)

    module.leave, module.interrupt, module.slow = leave, interrupt, slow
    monkeypatch.setitem(sys.modules, "nasty_hooks_q", module)
    return module


@pytest.mark.parametrize("name", ["leave", "interrupt"])
def test_row10_handler_raising_systemexit_or_keyboardinterrupt_is_a_policy_error(nasty, name):
    with pytest.raises(PolicyError, match=f"nasty_hooks_q:{name}"):
        escalate(_decision(f'{{handler: "nasty_hooks_q:{name}"}}'), {"question": "secret?"})


def test_row10_slow_handler_times_out(nasty):
    start = time.perf_counter()
    with pytest.raises(PolicyError, match="did not finish within 0.2"):
        escalate(_decision('{handler: "nasty_hooks_q:slow"}'), {}, timeout_s=0.2)
    assert time.perf_counter() - start < 2.0


def test_row12_disk_full_leaves_no_partial_line(tmp_path, monkeypatch):
    queue = tmp_path / "q.jsonl"
    d = _decision(f"{{queue: {json.dumps(str(queue))}}}")
    escalate(d, {"n": 1})
    real_write = os.write

    def half_then_enospc(fd, data):
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(escalation_module.os, "write", half_then_enospc)
    with pytest.raises(PolicyError, match="No space left"):
        escalate(d, {"n": 2, "pad": "x" * 200})
    monkeypatch.setattr(escalation_module.os, "write", real_write)
    escalate(d, {"n": 3})
    lines = queue.read_text().splitlines()
    assert [json.loads(line)["payload"]["n"] for line in lines] == [1, 3]


def test_row12_append_after_a_crashed_partial_line_starts_a_new_line(tmp_path):
    queue = tmp_path / "q.jsonl"
    queue.write_text('{"time": "partial')  # e.g. a process killed mid-write
    escalate(_decision(f"{{queue: {json.dumps(str(queue))}}}"), {"n": 1})
    last = queue.read_text().splitlines()[-1]
    assert json.loads(last)["payload"]["n"] == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_row13_fifo_queue_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "q.jsonl"
    os.mkfifo(fifo)
    box = {}

    def run():
        try:
            escalate(_decision(f"{{queue: {json.dumps(str(fifo))}}}"), {})
        except PolicyError as exc:
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(3.0)
    assert not t.is_alive(), "escalating to a FIFO blocked"
    assert "regular file" in str(box.get("error")) or "FIFO" in str(box.get("error"))


def test_row13_symlinked_queue_is_refused(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("")
    link = tmp_path / "q.jsonl"
    link.symlink_to(target)
    with pytest.raises(PolicyError, match="symbolic link"):
        escalate(_decision(f"{{queue: {json.dumps(str(link))}}}"), {})
    assert target.read_text() == ""


def test_row13_proc_self_fd_queue_is_refused():
    with pytest.raises(PolicyError):
        escalate(_decision('{queue: "/proc/self/fd/1"}'), {})


def test_row13_tilde_queue_is_refused_at_load():
    with pytest.raises(PolicyError, match="~"):
        _decision('{queue: "~/q.jsonl"}')


def test_row13_queue_file_is_created_private(tmp_path):
    queue = tmp_path / "q.jsonl"
    escalate(_decision(f"{{queue: {json.dumps(str(queue))}}}"), {"question": "private"})
    assert stat.S_IMODE(queue.stat().st_mode) == 0o600
