"""The Guard reports every call through the hooks of guardrail.telemetry.hooks, on one path shared by
generate, generate_batch and stream; the OpenTelemetry hooks turn that into spans."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from fastrm_common.errors import InputError
from guardrail import Guard, GuardResult
from guardrail.telemetry.hooks import GuardHooks, OpenTelemetryHooks, RowReport

KW = dict(max_new_tokens=3, min_new_tokens=3)


class Recorder(GuardHooks):
    """Notes each hook in the order the Guard calls it."""

    def __init__(self):
        self.log: list[tuple] = []

    @contextmanager
    def call(self, *, start_time=None):
        self.log.append(("call", start_time is not None))
        try:
            yield "call-handle"
        finally:
            self.log.append(("call exit",))

    def call_failed(self, call):
        self.log.append(("call_failed", call))

    def call_done(self, call, reports, kwargs):
        self.log.append(("call_done", call, [r.index for r in reports], kwargs["max_new_tokens"]))

    @contextmanager
    def row(self, call):
        self.log.append(("row", call))
        yield f"row-{len([e for e in self.log if e[0] == 'row'])}"
        self.log.append(("row exit",))

    def row_ids(self, row):
        self.log.append(("row_ids", row))
        return {}

    def row_done(self, row, report):
        assert isinstance(report, RowReport) and isinstance(report.result, GuardResult)
        self.log.append(("row_done", row, report.index, report.n_rows))


@pytest.fixture
def recorded(tiny_llava, tiny_proxy, calibration_uncertain):
    guard = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain)
    guard._hooks = recorder = Recorder()
    return guard, recorder


def test_generate_and_batch_report_one_call_and_a_row_each(recorded, image):
    guard, rec = recorded
    guard.generate(image, "What color?", **KW)
    assert rec.log == [("call", False), ("row", "call-handle"), ("row_ids", "row-1"), ("row_done", "row-1", 0, 1),
                       ("row exit",), ("call_done", "call-handle", [0], 3), ("call exit",)]
    rec.log.clear()
    guard.generate_batch([(image, "What color?"), (image, "What shape?")], **KW)
    assert [e[0] for e in rec.log] == ["call", "row", "row_ids", "row_done", "row exit",
                                       "row", "row_ids", "row_done", "row exit", "call_done", "call exit"]
    assert rec.log[-2] == ("call_done", "call-handle", [0, 1], 3)


def test_stream_reports_the_same_sequence_after_its_tokens_backdated(recorded, image):
    guard, rec = recorded
    events = guard.stream(image, "What color?", **KW)
    for _ in range(3):
        next(events)
        assert rec.log == []  # the call is reported once its tokens are out
    assert isinstance(next(events), GuardResult)
    assert rec.log[0] == ("call", True)  # with the stream's real start time
    assert [e[0] for e in rec.log] == ["call", "row", "row_ids", "row_done", "row exit", "call_done", "call exit"]


def _break_generate(monkeypatch, guard, exc):
    def broken(**kwargs):
        raise exc

    monkeypatch.setattr(guard.model, "generate", broken)


def _guarded_call(guard, call, image):
    if call == "generate":
        return guard.generate(image, "What color?", **KW)
    return list(guard.stream(image, "What color?", **KW))


@pytest.mark.parametrize("call", ["generate", "stream"])
@pytest.mark.parametrize("raised, expected", [(RuntimeError("device lost"), RuntimeError),
                                              (ValueError("bad generation config"), InputError)])
def test_a_model_failure_is_reported_on_the_call_and_raised_the_same_on_every_path(recorded, image, monkeypatch,
                                                                                   call, raised, expected):
    """What generate refuses (ValueError/TypeError) is an InputError; any other failure passes through."""
    guard, rec = recorded
    _break_generate(monkeypatch, guard, raised)
    with pytest.raises(expected, match=str(raised)):
        _guarded_call(guard, call, image)
    assert rec.log == [("call", call == "stream"), ("call_failed", "call-handle"), ("call exit",)]


def test_the_opentelemetry_hooks_mark_a_failed_stream_call(tiny_llava, tiny_proxy, calibration_uncertain, image,
                                                          monkeypatch):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    guard = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider)
    assert isinstance(guard._hooks, OpenTelemetryHooks)
    _break_generate(monkeypatch, guard, RuntimeError("device lost"))
    with pytest.raises(RuntimeError):
        _guarded_call(guard, "stream", image)
    (span,) = exporter.get_finished_spans()
    assert span.name.startswith("chat ") and span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "RuntimeError"


def test_the_base_hooks_do_nothing(recorded, image):
    guard, _ = recorded
    guard._hooks = GuardHooks()
    assert guard.generate(image, "What color?", **KW).maps is not None
    assert isinstance(list(guard.stream(image, "What color?", **KW))[-1], GuardResult)


# ---------------------------------------------------------------- your own hooks: Guard(hooks=...)
def _traced_guard(tiny_llava, tiny_proxy, calibration, **kwargs):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration, tracer_provider=provider, **kwargs), exporter


def test_user_hooks_see_every_point_after_the_spans_and_the_spans_stay(tiny_llava, tiny_proxy, calibration_uncertain,
                                                                       image):
    rec = Recorder()
    guard, exporter = _traced_guard(tiny_llava, tiny_proxy, calibration_uncertain, hooks=rec)
    result = guard.generate(image, "What color?", **KW)
    # the same sequence as the Guard's own hooks, with the user's handles; row_ids are asked of the
    # user's hook only when the OpenTelemetry hooks have none (they have: the row's span ids)
    assert rec.log == [("call", False), ("row", "call-handle"), ("row_done", "row-1", 0, 1), ("row exit",),
                       ("call_done", "call-handle", [0], 3), ("call exit",)]
    assert sorted(s.name.split()[0] for s in exporter.get_finished_spans()) == ["apply_guardrail", "chat"]
    assert result.maps is not None


class Report(GuardHooks):
    def __init__(self):
        self.reports = []

    def row_done(self, row, report):
        self.reports.append(report)


def test_user_hooks_get_the_result_the_decision_and_the_withheld_answer(tiny_llava, tiny_proxy,
                                                                        calibration_uncertain, image):
    first, second = Report(), Report()
    guard = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, hooks=[first, second],
                  policy="strict")
    results = guard.generate_batch([(image, "What color?"), (image, "What shape?")], **KW)
    assert [r.result for r in first.reports] == results and [r.result for r in second.reports] == results
    for report in first.reports:
        assert report.result.verdict == "uncertain" and report.decision.action == report.result.action
        assert report.n_rows == 2 and report.model_s > 0 and report.answer  # the model's own words
        assert report.guard_s == report.result.timings.guard_s


class Broken(GuardHooks):
    """Raises at every point, entering and leaving its context managers included."""

    def __init__(self, where):
        self.where = where

    @contextmanager
    def call(self, *, start_time=None):
        if self.where == "enter":
            raise RuntimeError("hook broke entering the call")
        yield self
        if self.where == "exit":
            raise RuntimeError("hook broke leaving the call")

    @contextmanager
    def row(self, call):
        if self.where == "enter":
            raise RuntimeError("hook broke entering the row")
        yield self
        if self.where == "exit":
            raise RuntimeError("hook broke leaving the row")

    def call_failed(self, call):
        raise RuntimeError("hook broke in call_failed")

    def call_done(self, call, reports, kwargs):
        reports[0].result.text = "changed by a hook"  # GuardResult is mutable: a hook could; see below
        raise RuntimeError("hook broke in call_done")

    def row_ids(self, row):
        raise RuntimeError("hook broke in row_ids")

    def row_done(self, row, report):
        raise RuntimeError("hook broke in row_done")


@pytest.mark.parametrize("where", ["enter", "exit"])
def test_a_raising_hook_is_logged_and_never_breaks_the_call_nor_the_hooks_after_it(
        tiny_llava, tiny_proxy, calibration_uncertain, image, where, caplog):
    after = Recorder()
    guard, exporter = _traced_guard(tiny_llava, tiny_proxy, calibration_uncertain, hooks=[Broken(where), after])
    with caplog.at_level("WARNING", logger="guardrail.telemetry.hooks"):
        results = [guard.generate(image, "What color?", **KW), list(guard.stream(image, "What color?", **KW))[-1]]
    assert all(isinstance(r, GuardResult) and r.maps is not None and not r.unguarded for r in results)
    assert [e[0] for e in after.log].count("row_done") == 2  # the hook after the broken one still ran
    assert len(exporter.get_finished_spans()) == 4  # and so did the spans
    broke = {r.getMessage().split()[2] for r in caplog.records}
    assert {"Broken.call", "Broken.row", "Broken.row_done", "Broken.call_done"} <= broke


def test_a_raising_hook_cannot_hide_or_replace_the_models_own_exception(tiny_llava, tiny_proxy,
                                                                        calibration_uncertain, image, monkeypatch):
    after = Recorder()
    guard, exporter = _traced_guard(tiny_llava, tiny_proxy, calibration_uncertain, hooks=[Broken("exit"), after])
    _break_generate(monkeypatch, guard, RuntimeError("device lost"))
    with pytest.raises(RuntimeError, match="device lost"):
        guard.generate(image, "What color?", **KW)
    assert after.log == [("call", False), ("call_failed", "call-handle"), ("call exit",)]
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR and span.attributes["error.type"] == "RuntimeError"


@pytest.mark.parametrize("bad", [object(), [Recorder(), "not a hook"], print])
def test_hooks_that_are_not_guard_hooks_are_refused(tiny_llava, tiny_proxy, bad):
    with pytest.raises(InputError, match="GuardHooks"):
        Guard(*tiny_llava, proxy=tiny_proxy, hooks=bad)


def test_the_hooks_are_public_names():
    import guardrail

    assert guardrail.GuardHooks is GuardHooks and guardrail.RowReport is RowReport
