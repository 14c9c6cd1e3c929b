"""The HTML report, opened in a real headless browser (Chromium through Playwright).

The browser is Debian's ``chromium-headless-shell`` (``make test`` installs it when missing) or
the binary named by ``FASTRM_CHROMIUM``. If none is found the browser tests FAIL with the
install command: they are never skipped silently.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from guardrail.telemetry.exporters import configure_tracing
from guardrail.guard import Guard
from guardrail.telemetry.otlp_json import read_trace_jsonl
from guardrail.traces.report import report_calls, write_html_report
from guardrail.telemetry.attributes import map_from_attributes

CANDIDATES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str:
    explicit = os.environ.get("FASTRM_CHROMIUM")
    if explicit:
        return explicit
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no headless Chromium found for the HTML report tests; install it with "
                "`apt-get install chromium-headless-shell` (make test does this) or set FASTRM_CHROMIUM")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra; make test installs it")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


def _scene(path):
    img = Image.new("RGB", (96, 64), (128, 128, 128))
    ImageDraw.Draw(img).rectangle((40, 20, 56, 36), fill=(220, 30, 30))
    img.save(path)
    return path


@pytest.fixture(scope="module")
def traces(tiny_llava, tiny_proxy, calibration_uncertain, tmp_path_factory):
    """Two traces of the same guarded calls written by the Guard: with and without content capture."""
    root = tmp_path_factory.mktemp("report")
    image = _scene(root / "scene.png")
    cal = calibration_uncertain
    out = {}
    for capture in (True, False):
        path = root / f"trace-{capture}.jsonl"
        provider = configure_tracing(jsonl_path=path, otlp_from_env=False)
        guard = Guard(*tiny_llava, proxy=tiny_proxy, calibration=cal, tracer_provider=provider,
                      capture_content=capture, model_name="tiny-llava")
        for q in ("What color is the square?", "How many shapes?"):
            guard.generate(image, q, max_new_tokens=5, min_new_tokens=3)
        provider.force_flush()
        provider.shutdown()
        out[capture] = path
    return out


def _open(browser, html_path):
    page = browser.new_page()
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html_path.as_uri())
    page.wait_for_function("document.querySelectorAll('section.call[data-ready]').length === "
                           "document.querySelectorAll('section.call').length")
    return page, errors, requests


def test_report_calls_without_a_browser(traces):
    calls = report_calls(read_trace_jsonl(traces[True]))
    assert len(calls) == 2 and calls[0]["question"] == "What color is the square?"
    assert calls[0]["image"] and calls[0]["image"].startswith("data:image/")
    bare = report_calls(read_trace_jsonl(traces[False]))
    assert bare[0]["question"] is None and bare[0]["image"] is None
    assert any("content capture was off" in m for m in bare[0]["missing"])


def test_batch_rows_show_their_own_question_in_the_report_and_the_terminal_view(tiny_llava, tiny_proxy,
                                                                               calibration_uncertain, tmp_path):
    """A batch's chat span holds the questions as one JSON list; each row's question is on its own
    guardrail span (``fastrm.guardrail.question``), and both viewers read it from there."""
    import io

    from rich.console import Console

    from guardrail.traces.viewer import view_trace

    image = _scene(tmp_path / "scene.png")
    path = tmp_path / "batch.jsonl"
    provider = configure_tracing(jsonl_path=path, otlp_from_env=False)
    guard = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider,
                  capture_content=True, model_name="tiny-llava")
    questions = ["What color is the square?", "How many shapes?", "Is there a circle?"]
    guard.generate_batch([(image, q) for q in questions], max_new_tokens=3, min_new_tokens=2)
    provider.force_flush()
    provider.shutdown()
    calls = report_calls(read_trace_jsonl(path))
    assert sorted(c["question"] for c in calls) == sorted(questions)
    assert not any("content capture was off" in m for c in calls for m in c["missing"])
    buf = io.StringIO()
    assert view_trace(path, console=Console(file=buf, width=200, color_system=None)) == 0
    text = buf.getvalue()
    assert all(q in text for q in questions) and "not recorded" not in text


@pytest.mark.slow  # a real headless Chromium
@pytest.mark.browser
@pytest.mark.parametrize("capture", [True, False])
def test_report_in_a_headless_browser(browser, traces, tmp_path, capture):
    trace = traces[capture]
    spans = read_trace_jsonl(trace)
    html_path = write_html_report(trace, tmp_path / "report.html")
    text = html_path.read_text()
    assert "http://" not in text and "https://" not in text  # nothing to fetch: no CDN, no network
    page, errors, requests = _open(browser, html_path)
    assert not errors, errors
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []

    guards = [s for s in spans if s["name"] == "apply_guardrail fastrm"]
    sections = page.query_selector_all("section.call")
    assert len(sections) == len(guards) == 2
    for sec, g in zip(sections, guards):
        a = g["attributes"]
        assert sec.get_attribute("data-span-id") == g["spanId"] and sec.get_attribute("data-trace-id") == g["traceId"]
        field = lambda name: sec.query_selector(f"[data-field={name}]").inner_text()  # noqa: E731
        assert field("score") == f"{a['fastrm.guardrail.score']:.3f}"
        assert field("threshold") == f"{a['fastrm.guardrail.threshold']:.3f}"
        assert field("verdict") == a["fastrm.guardrail.verdict"]
        assert field("action") == a["fastrm.guardrail.action"]
        assert a["fastrm.guardrail.rule"] in field("decision")
        tokens = [e["attributes"] for e in g["events"] if e["name"] == "fastrm.token"]
        assert len(sec.query_selector_all("[data-field=tokens] button")) == len(tokens) >= 3
        if capture:
            chat = next(s for s in spans if s["spanId"] == g["parentSpanId"])["attributes"]
            assert field("question") in chat["gen_ai.input.messages"]
            assert [b.inner_text() for b in sec.query_selector_all("[data-field=tokens] button")] == [
                t["fastrm.token.text"].strip() for t in tokens]
        else:
            assert field("question") == "(not recorded)"
            assert "content capture was off" in field("missing")

        # the slider walks the token maps: the overlay, readout and colour-bar range follow it
        slider = sec.query_selector("[data-field=slider]")
        canvas = sec.query_selector("[data-field=overlay]")
        seen = set()
        for k in range(len(tokens)):
            slider.evaluate("(s, k) => { s.value = k; s.dispatchEvent(new Event('input')); }", k)
            index = int(sec.query_selector("[data-field=readout]").get_attribute("data-index"))
            assert index == tokens[k]["fastrm.token.index"]
            m = map_from_attributes(tokens[k])
            assert field("map-lo") == f"{m.min():.3f}" and field("map-hi") == f"{m.max():.3f}"
            assert f"entropy {tokens[k]['fastrm.token.entropy']:.3f}" in field("readout")
            seen.add(canvas.evaluate("c => c.toDataURL()"))
        assert len(seen) > 1  # different maps, different pictures
        if capture:  # with an image: unticking shows the image's own colours, without the map
            before = canvas.evaluate("c => c.toDataURL()")
            sec.query_selector("[data-field=toggle]").evaluate(
                "t => { t.checked = false; t.dispatchEvent(new Event('change')); }")
            assert canvas.evaluate("c => c.toDataURL()") != before
    page.close()


@pytest.mark.slow  # a real headless Chromium
@pytest.mark.browser
def test_overlay_in_the_page_sits_on_the_box(browser, tmp_path):
    """A hand-made trace whose only map is hot in one cell: the page paints that cell's pixels, in the box."""
    import json

    from guardrail import semconv
    from guardrail.telemetry.attributes import encode_map, map_attributes, token_event_attributes

    img = Image.new("RGB", (200, 100), (128, 128, 128))
    from guardrail.telemetry.attributes import image_data_uri

    m = np.zeros((4, 4), dtype=np.float32)
    m[1, 3] = 1.0  # row 1, col 3 of the centred 100x100 box -> x 75..100 of 100 -> 125..150 of 200
    ev = token_event_attributes(0, 1.0, scored=True, encoded_map=encode_map(m))
    assert map_attributes(encode_map(m))
    spans = [
        {"traceId": "a" * 32, "spanId": "1" * 16, "parentSpanId": "", "name": "chat tiny", "attributes": [
            {"key": "llm.input_messages.0.message.contents.1.message_content.image.image.url",
             "value": {"stringValue": image_data_uri(img, max_side=200)}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "tiny"}}], "events": []},
        {"traceId": "a" * 32, "spanId": "2" * 16, "parentSpanId": "1" * 16, "name": semconv.GUARDRAIL_SPAN_NAME,
         "attributes": [{"key": semconv.GUARDRAIL_SCORE, "value": {"doubleValue": 0.5}}],
         "events": [{"name": semconv.TOKEN_EVENT, "timeUnixNano": "1", "attributes": [
             {"key": k, "value": ({"stringValue": v} if isinstance(v, str) else {"boolValue": v} if isinstance(v, bool)
                                  else {"intValue": str(v)} if isinstance(v, int) else {"doubleValue": v}
                                  if isinstance(v, float) else {"arrayValue": {"values": [
                                      {"intValue": str(x)} if isinstance(x, int) else {"doubleValue": x} for x in v]}})}
             for k, v in ev.items()]}]},
    ]
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps(s) + "\n" for s in spans))
    page, errors, _ = _open(browser, write_html_report(trace, tmp_path / "r.html"))
    assert not errors, errors
    w, h = page.evaluate("() => { const c = document.querySelector('canvas.overlay'); return [c.width, c.height]; }")
    assert (w, h) == (420, 210)
    pixels = page.evaluate("""() => { const c = document.querySelector('canvas.overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const hot = [];
        for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) { const i = 4 * (y * c.width + x);
          if (d[i] - d[i + 2] > 60) hot.push([x, y]); } return hot; }""")
    xs, ys = [p[0] for p in pixels], [p[1] for p in pixels]
    scale = 420 / 200
    assert min(xs) >= int(125 * scale) - 1 and max(xs) <= int(150 * scale) + 1
    assert min(ys) >= int(25 * scale) - 1 and max(ys) <= int(50 * scale) + 1
    page.close()


@pytest.mark.browser
def test_claims_are_buttons_by_verdict_that_draw_their_map(browser, tiny_llava, tiny_proxy, tmp_path):
    """A several-claim answer: one button per claim, coloured by verdict, and a click draws that claim's map."""
    from policies import Policy

    from .conftest import claim_calibration_between, word_claims

    image = _scene(tmp_path / "scene.png")
    observe = Guard(*tiny_llava, proxy=tiny_proxy, claims=word_claims)
    r0 = observe.generate(image, "What color?", max_new_tokens=8, min_new_tokens=8)
    cal = claim_calibration_between([c.scores["map_entropy"] for c in r0.claims])
    trace = tmp_path / "t.jsonl"
    provider = configure_tracing(jsonl_path=trace, otlp_from_env=False)
    policy = Policy.model_validate({"id": "p", "version": "1", "default": {"action": "allow"}, "rules": [
        {"name": "cut", "when": {"claims": {"any_uncertain": True}}, "action": "redact"}]})
    guard = Guard(*tiny_llava, proxy=tiny_proxy, claims=word_claims, claim_calibration=cal, policy=policy,
                  tracer_provider=provider, capture_content=True)
    r = guard.generate(image, "What color?", max_new_tokens=8, min_new_tokens=8)
    provider.shutdown()
    page, errors, _ = _open(browser, write_html_report(trace, tmp_path / "r.html"))
    assert not errors, errors
    classes = page.eval_on_selector_all("[data-field=claims] button", "bs => bs.map(b => b.className)")
    assert classes == [f"claim {c.verdict}{' redacted' if c.redacted else ''}" for c in r.claims]
    before = page.evaluate("() => document.querySelector('canvas.overlay').toDataURL()")
    page.click(f"[data-field=claims] button[data-claim='{r.claims[-1].index}']")
    assert page.evaluate("() => document.querySelector('canvas.overlay').toDataURL()") != before
    assert "claim" in page.inner_text("[data-field=readout]")
    page.close()
