"""Escalation handlers under the Guard (issue #18, row 10): contained, timed out, outside the model lock."""

from __future__ import annotations

import sys
import threading
import time
import types

import pytest

from guardrail import Guard, Limits
from policies import parse_policy

KW = dict(max_new_tokens=3, min_new_tokens=3)


@pytest.fixture
def handlers(monkeypatch):
    module = types.ModuleType("guard_hooks_q")

    def leave(record):
        sys.exit(f"bye {record['payload']['question']}")

    def interrupt(record):
        raise KeyboardInterrupt

    def slow(record):
        time.sleep(1.5)

    module.leave, module.interrupt, module.slow = leave, interrupt, slow
    monkeypatch.setitem(sys.modules, "guard_hooks_q", module)
    return module


def _guard(tiny_llava, tiny_proxy, cal, handler, **kwargs):
    policy = parse_policy(
        f"id: p\nversion: 1\non_error: fail_closed\ndefault:\n  action: escalate\n"
        f"  escalation: {{handler: \"guard_hooks_q:{handler}\"}}\n"
    )
    return Guard(*tiny_llava, proxy=tiny_proxy, calibration=cal, policy=policy, **kwargs)


@pytest.mark.parametrize("handler", ["leave", "interrupt"])
def test_row10_handler_systemexit_or_keyboardinterrupt_is_contained_and_follows_on_error(
        tiny_llava, tiny_proxy, calibration_uncertain, image, handlers, handler):
    g = _guard(tiny_llava, tiny_proxy, calibration_uncertain, handler)
    r = g.generate(image, "What color?", **KW)
    assert r.unguarded and r.action == "abstain" and r.rule == "on_error"
    assert "guard_hooks_q:" + handler in r.error


def test_row10_slow_handler_times_out_and_runs_outside_the_model_lock(
        tiny_llava, tiny_proxy, calibration_uncertain, calibration_confident, image, handlers):
    slow = _guard(tiny_llava, tiny_proxy, calibration_uncertain, "slow", limits=Limits(handler_timeout_s=1.0))
    fast = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_confident)
    fast.generate(image, "What?", **KW)  # warm-up
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", slow.generate(image, "What color?", **KW)))
    t.start()
    time.sleep(0.3)  # the slow call is now in its handler
    start = time.perf_counter()
    fast.generate(image, "What?", **KW)
    waited = time.perf_counter() - start
    t.join()
    assert waited < 0.6, f"another call on the same model waited {waited:.2f} s for a handler"
    r = box["r"]
    assert r.unguarded and "did not finish within 1 s" in r.error
