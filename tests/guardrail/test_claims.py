"""Claims (issue 27): splitters, token alignment, claim signals and maps, claim verdicts, redact,
claim calibration, and claims through the Guard's result and spans."""

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from calibration import AnswerSignals
from fastrm_common.claims import ClaimSpan, ObjectSplitter, label_objects, split_claims
from fastrm_common.errors import CalibrationError, InputError
from guardrail import Guard
from guardrail.answers.claims import (
    ClaimTokens,
    align_claims,
    claim_map,
    map_totals,
    claim_signals,
    redact,
    token_char_spans,
)
from guardrail.calibrate import ScoredAnswer, calibrate_scores
from policies import Policy

from .conftest import claim_calibration_between


# ---------------------------------------------------------------- splitters on hand-written texts


@pytest.mark.parametrize("text, expected", [
    ("A dog sits on a red sofa, and a cat sleeps.", ["A dog sits on a red sofa", "and a cat sleeps"]),
    ("Two dogs. A cat!  A bird?", ["Two dogs", "A cat", "A bird"]),
    ("It costs 3.5 euros; cheap.", ["It costs 3.5 euros", "cheap"]),
    ("yes", ["yes"]),
    ("", []),
    ("...", []),
    ("Le café est chaud, et la crème brûlée aussi.", ["Le café est chaud", "et la crème brûlée aussi"]),
    ("line one\nline two", ["line one", "line two"]),
])
def test_clauses_splitter_offsets_are_exact(text, expected):
    spans = split_claims(text)
    assert [s.text for s in spans] == expected
    for s in spans:
        assert text[s.start:s.end] == s.text


def test_sentences_splitter_keeps_sentences_whole():
    text = "A red circle, a blue square. Nothing else!"
    assert [s.text for s in split_claims(text, "sentences")] == ["A red circle, a blue square", "Nothing else"]


def test_object_splitter_finds_mentions_with_modifiers_and_their_categories():
    text = "Two small dogs chase a frisbee near the old wooden bench; no unicorns, but a hot dog."
    spans = split_claims(text, "objects")
    assert [(s.text, s.object) for s in spans] == [
        ("Two small dogs", "dog"), ("a frisbee", "frisbee"), ("the old wooden bench", "bench"), ("a hot dog", "hot dog")]
    for s in spans:
        assert text[s.start:s.end] == s.text
    assert split_claims("Nothing that is listed here.", "objects") == []
    assert split_claims("", "objects") == []
    custom = ObjectSplitter({"drone": ("drone", "drones")})
    assert [s.object for s in split_claims("Drones and dogs.", custom)] == ["drone"]


def test_object_labels_follow_chair():
    spans = split_claims("A dog and a cat on a sofa.", "objects")
    assert label_objects("", spans, {"objects": ["dog", "couch"]}) == [True, False, True]
    with pytest.raises(InputError):
        label_objects("", spans, {})


def test_a_bad_splitter_is_refused():
    with pytest.raises(InputError, match="out of order"):
        split_claims("abc def", lambda t: [ClaimSpan(4, 7, "def", "x"), ClaimSpan(0, 3, "abc", "x")])
    with pytest.raises(InputError, match="unknown claim splitter"):
        split_claims("abc", "no-such-splitter")


# ---------------------------------------------------------------- redact


@pytest.mark.parametrize("text, splitter, remove, expected", [
    ("a large red circle, a small blue square and a green cross.", "shapes", [2], "a large red circle and a small blue square."),
    ("a large red circle, a small blue square and a green cross.", "shapes", [1], "a large red circle and a green cross."),
    ("a large red circle, a small blue square and a green cross.", "shapes", [0], "a small blue square and a green cross."),
    ("a large red circle, a small blue square and a green cross.", "shapes", [0, 2], "a small blue square."),
    ("a large red circle.", "shapes", [0], ""),
    ("a large red circle and a small blue square.", "shapes", [], "a large red circle and a small blue square."),
    ("A dog runs. A cat sleeps. A bird sings.", "sentences", [0], "A cat sleeps. A bird sings."),
    ("A dog runs. A cat sleeps. A bird sings.", "sentences", [2], "A dog runs. A cat sleeps."),
    ("A dog runs, the cat (which is old) sleeps; a bird sings!", "clauses", [1], "A dog runs; a bird sings!"),
    ("A cat; a dog: a bird!", "clauses", [0], "A dog: a bird!"),
])
def test_redact_tricky_texts(text, splitter, remove, expected):
    import shapesvqa.claims  # noqa: F401  registers "shapes"

    spans = split_claims(text, splitter)
    assert redact(text, spans, remove) == expected


# ---------------------------------------------------------------- alignment, signals, maps


class _WordTok:
    """A tokenizer whose tokens are words joined by one space (like the reference model's)."""

    def __init__(self, words):
        self.words = words

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(self.words[i] for i in ids if self.words[i] != "</s>")


def test_token_spans_and_claim_tokens():
    tok = _WordTok(["a", "red", "circle", ",", "a", "blue", "square", ".", "</s>"])
    ids = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    answer = tok.decode(ids)
    spans = token_char_spans(tok, ids, answer)
    assert [answer[a:b] for a, b in spans] == ["a", "red", "circle", ",", "a", "blue", "square", ".", ""]
    claims = align_claims(split_claims(answer, "clauses"), spans)
    assert [(c.token_start, c.token_end) for c in claims] == [(0, 4), (4, 8)] or \
        [(c.token_start, c.token_end) for c in claims] == [(0, 3), (4, 7)]


def test_claim_signals_and_map_are_the_answers_over_its_tokens():
    rng = np.random.default_rng(0)
    maps = rng.random((6, 4, 4)).astype(np.float32)
    content = np.array([True, True, False, True, True, False])
    sig = AnswerSignals(content=content, margin=rng.random(6), maps=maps)
    c = ClaimTokens(ClaimSpan(0, 5, "x y z", "clause"), 1, 4)
    cs = claim_signals(sig, c)
    assert cs.content.tolist() == [False, True, False, True, False, False]
    np.testing.assert_array_equal(cs.margin, sig.margin)
    expected = np.mean([maps[t] / maps[t].sum() for t in (1, 3)], axis=0)
    np.testing.assert_allclose(claim_map(maps, content, c), expected, rtol=1e-6)
    # a claim without content tokens: the mean over all its tokens
    c2 = ClaimTokens(ClaimSpan(0, 1, "x", "clause"), 2, 3)
    np.testing.assert_allclose(claim_map(maps, content, c2), maps[2] / maps[2].sum(), rtol=1e-6)
    # the totals shared by the claims of one answer give the same maps, bit for bit
    totals = map_totals(maps)
    for claim in (c, c2, ClaimTokens(ClaimSpan(0, 9, "x y z w v", "clause"), 0, 6)):
        np.testing.assert_array_equal(claim_map(maps, content, claim, totals), claim_map(maps, content, claim))


# ---------------------------------------------------------------- claim calibration


def _claim_rows(n_records=120, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_records):
        for k in range(4):
            correct = bool(rng.random() < 0.8)
            margin = np.clip(rng.normal(0.8 if correct else 0.35, 0.15, 3), 0, 1)
            sig = AnswerSignals(content=np.ones(3, bool), margin=margin, token_logprob=np.log(np.clip(margin, 1e-3, 1)),
                                predictive_entropy=1 - margin)
            rows.append(ScoredAnswer(id=f"{r}#{k}", answer="c", correct=correct, signals=sig,
                                     extra={"record": str(r)}))
    return rows


def test_claim_calibration_splits_by_record_and_is_deterministic():
    rows = _claim_rows()
    kw = dict(score="low_margin", score_params={"aggregation": "max"}, rule="guaranteed_precision",
              target_precision=0.9, delta=0.1, command="test")
    a, side_a = calibrate_scores(rows, **kw)
    b, _ = calibrate_scores(rows, **kw)
    assert a.threshold == b.threshold and a.threshold is not None
    from guardrail.calibrate import fit_heldout_split  # the split keeps each record's claims together

    correct = np.array([r.correct for r in rows])
    fit, held = fit_heldout_split(rows, correct, 0.5, 0)
    fit_records = {rows[i].extra["record"] for i in fit}
    assert not fit_records & {rows[i].extra["record"] for i in held}


def test_claim_calibration_guarantee_holds_on_simulated_claims():
    """The precision guarantee of confident claims holds in most refits on fresh simulated claims."""
    held_ok = 0
    for seed in range(20):
        rows = _claim_rows(seed=100 + seed)
        cal, side = calibrate_scores(rows, score="low_margin", score_params={"aggregation": "max"},
                                     rule="guaranteed_precision", target_precision=0.9, delta=0.1, seed=seed,
                                     table=False, command="test")
        fresh = _claim_rows(seed=1000 + seed)
        values = np.array([1 - r.signals.margin.min() for r in fresh])  # low_margin(max)
        ok = np.array([r.correct for r in fresh])
        confident = values < (cal.threshold if cal.threshold is not None else -1)
        held_ok += (not confident.any()) or ok[confident].mean() >= 0.9
    assert held_ok >= 17  # delta 0.1: the guarantee may fail in about 2 of 20


# ---------------------------------------------------------------- through the Guard


def _words(text):
    import re

    return [ClaimSpan(m.start(), m.end(), m.group(0), "word") for m in re.finditer(r"\S+", text)]


def test_guard_results_carry_claims_with_their_maps_and_scores(tiny_llava, tiny_proxy, calibration_uncertain, image):
    model, processor = tiny_llava
    guard = Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain, claims=_words)
    r = guard.generate(image, "What color?", max_new_tokens=8, min_new_tokens=8)
    assert r.claims and all(r.answer[c.start:c.end] == c.text for c in r.claims)
    content = np.array(r.content)
    for c in r.claims:
        span = ClaimTokens(ClaimSpan(c.start, c.end, c.text, c.kind), c.token_start, c.token_end)
        np.testing.assert_allclose(c.map, claim_map(r.maps, content, span), rtol=1e-5)
        scored = [e for e, ok in zip(r.entropies[c.token_start:c.token_end], content[c.token_start:c.token_end]) if ok]
        if scored:
            assert c.scores["map_entropy"] == pytest.approx(np.mean(scored), abs=1e-6)
        assert c.verdict is None or len(r.claims) == 1  # no claim calibration: several claims are unscored
    again = type(r).model_validate_json(r.model_dump_json())
    assert [c.text for c in again.claims] == [c.text for c in r.claims]


def test_redact_removes_the_uncertain_claims_and_the_span_lists_them(tiny_llava, tiny_proxy, image):
    model, processor = tiny_llava
    observe = Guard(model, processor, proxy=tiny_proxy, claims=_words)
    r0 = observe.generate(image, "What color?", max_new_tokens=8, min_new_tokens=8)
    values = [c.scores["map_entropy"] for c in r0.claims if c.scores.get("map_entropy") is not None]
    assert len(values) >= 3
    claim_cal = claim_calibration_between(values)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    policy = Policy.model_validate({"id": "p", "version": "1", "default": {"action": "allow"}, "rules": [
        {"name": "cut", "when": {"claims": {"any_uncertain": True}}, "action": "redact"}]})
    guard = Guard(model, processor, proxy=tiny_proxy, claims=_words, claim_calibration=claim_cal, policy=policy,
                  tracer_provider=provider)
    r = guard.generate(image, "What color?", max_new_tokens=8, min_new_tokens=8)
    uncertain = [c.index for c in r.claims if c.verdict == "uncertain"]
    assert uncertain and len(uncertain) < len(r.claims)
    assert r.action == "redact" and r.rule == "cut"
    assert [c.index for c in r.claims if c.redacted] == uncertain
    assert r.text == redact(r.answer, r.claims, uncertain)
    assert all(c.text not in r.text.split() or c.text in [k.text for k in r.claims if not k.redacted]
               for c in r.claims if c.redacted)
    span = [s for s in exporter.get_finished_spans() if s.name == "apply_guardrail fastrm"][0]
    events = [e for e in span.events if e.name == "fastrm.claim"]
    assert len(events) == len(r.claims)
    assert [e.attributes["fastrm.claim.redacted"] for e in events] == [c.redacted for c in r.claims]
    assert span.attributes["fastrm.claims.redacted"] == len(uncertain)


def test_an_answer_level_calibration_is_refused_as_claim_calibration(tiny_llava, tiny_proxy, calibration_uncertain):
    model, processor = tiny_llava
    with pytest.raises(CalibrationError, match="answer-level"):
        Guard(model, processor, proxy=tiny_proxy, claim_calibration=calibration_uncertain)
    with pytest.raises(InputError):
        Guard(model, processor, proxy=tiny_proxy, claims="no-such-splitter")
    claim_level = calibration_uncertain.model_copy(update={"level": "claim", "splitter": "sentences"})
    with pytest.raises(InputError, match="claim-level calibration .* pass it as claim_calibration"):
        Guard(model, processor, proxy=tiny_proxy, calibration=claim_level)
    assert Guard(model, processor, proxy=tiny_proxy, claim_calibration=claim_level).claim_calibration is not None


def test_claim_conditions_in_a_policy_are_explained():
    from policies import explain_policy

    policy = Policy.model_validate({"id": "p", "version": "1", "default": {"action": "allow"}, "rules": [
        {"name": "cut", "when": {"claims": {"share_uncertain": {"gte": 0.5}}}, "action": "redact"}]})
    text = explain_policy(policy)
    assert "0.5 <= claims share_uncertain" in text and "redact: return the answer without its uncertain claims" in text


def test_streamed_claims_arrive_in_order_as_they_close_and_equal_the_final_ones(tiny_llava, tiny_proxy, image):
    from guardrail.result import Claim, TokenEvent

    model, processor = tiny_llava
    observe = Guard(model, processor, proxy=tiny_proxy, claims=_words)
    r0 = observe.generate(image, "What color?", max_new_tokens=8, min_new_tokens=8)
    guard = Guard(model, processor, proxy=tiny_proxy, claims=_words,
                  claim_calibration=claim_calibration_between([c.scores["map_entropy"] for c in r0.claims]))
    events = list(guard.stream(image, "What color?", max_new_tokens=8, min_new_tokens=8))
    final = events[-1]
    streamed = [(i, e) for i, e in enumerate(events) if isinstance(e, Claim)]
    assert [e.index for _, e in streamed] == list(range(len(final.claims)))  # in order, each once
    tokens_before = [sum(isinstance(x, TokenEvent) for x in events[:i]) for i, _ in streamed]
    # every claim but the last is given as soon as the next claim's first token is out, not at the end
    assert tokens_before[:-1] == [final.claims[k + 1].token_start + 1 for k in range(len(final.claims) - 1)]
    assert tokens_before[0] < len(final.token_ids)
    for (_, e), f in zip(streamed, final.claims):
        assert (e.text, e.start, e.end, e.token_start, e.token_end, e.verdict) == \
            (f.text, f.start, f.end, f.token_start, f.token_end, f.verdict)
        assert e.score == pytest.approx(f.score, abs=1e-12)
        np.testing.assert_allclose(e.map, f.map, rtol=1e-6)


def test_a_short_answer_streams_no_claim_event(tiny_llava, tiny_proxy, image):
    from guardrail.result import Claim

    model, processor = tiny_llava
    guard = Guard(model, processor, proxy=tiny_proxy)
    events = list(guard.stream(image, "What color?", max_new_tokens=1))
    assert not any(isinstance(e, Claim) for e in events[:-1]) and len(events[-1].claims) <= 1


def test_claims_in_the_trace_viewer_and_the_html_report(tiny_llava, tiny_proxy, image, tmp_path):
    import io

    from rich.console import Console

    from guardrail.telemetry.exporters import configure_tracing
    from guardrail.traces.calls import guarded_calls
    from guardrail.traces.report import report_calls
    from guardrail.traces.viewer import view_trace
    from guardrail.telemetry.otlp_json import read_trace_jsonl

    from .conftest import claim_calibration_between, word_claims

    model, processor = tiny_llava
    observe = Guard(model, processor, proxy=tiny_proxy, claims=word_claims)
    r0 = observe.generate(image, "What color?", max_new_tokens=8, min_new_tokens=8)
    cal = claim_calibration_between([c.scores["map_entropy"] for c in r0.claims])
    trace = tmp_path / "t.jsonl"
    provider = configure_tracing(jsonl_path=trace)
    policy = Policy.model_validate({"id": "p", "version": "1", "default": {"action": "allow"}, "rules": [
        {"name": "cut", "when": {"claims": {"any_uncertain": True}}, "action": "redact"}]})
    guard = Guard(model, processor, proxy=tiny_proxy, claims=word_claims, claim_calibration=cal, policy=policy,
                  tracer_provider=provider, capture_content=True)
    r = guard.generate(image, "What color?", max_new_tokens=8, min_new_tokens=8)
    provider.shutdown()
    spans = read_trace_jsonl(trace)
    (call,) = guarded_calls(spans)
    assert [c["fastrm.claim.verdict"] for c in call["claims"]] == [c.verdict for c in r.claims]
    for c, got in zip(r.claims, call["claims"]):
        assert np.abs(np.asarray(got["map"]) - c.map).max() <= (c.map.max() - c.map.min()) / 255 + 1e-6
    (rep,) = report_calls(spans)
    assert [c["redacted"] for c in rep["claims"]] == [c.redacted for c in r.claims] and rep["claims"][0]["map"]
    buf = io.StringIO()
    assert view_trace(trace, console=Console(file=buf, width=120, color_system=None)) == 0
    out = buf.getvalue()
    assert "claims" in out and "uncertain" in out and "its map" in out


def test_each_claim_is_a_note_for_the_viewers(tiny_llava, tiny_proxy, image):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from guardrail.telemetry.mlflow import mlflow_assessments
    from guardrail.telemetry.phoenix import PhoenixAnnotationExporter, phoenix_annotations

    from .conftest import claim_calibration_between, word_claims

    model, processor = tiny_llava
    observe = Guard(model, processor, proxy=tiny_proxy, claims=word_claims)
    r0 = observe.generate(image, "What color?", max_new_tokens=8, min_new_tokens=8)
    cal = claim_calibration_between([c.scores["map_entropy"] for c in r0.claims])
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    guard = Guard(model, processor, proxy=tiny_proxy, claims=word_claims, claim_calibration=cal,
                  tracer_provider=provider, capture_content=True)
    r = guard.generate(image, "What color?", max_new_tokens=8, min_new_tokens=8)
    phoenix = PhoenixAnnotationExporter("http://127.0.0.1:9", retries=0)
    try:
        notes = phoenix.notes_for(exporter.get_finished_spans())
    finally:
        phoenix.shutdown()
    claims = [n for n in notes if n.name is not None]
    assert [n.label for n in claims] == [c.verdict for c in r.claims]
    assert [n.name for n in claims] == [f"fastrm.claim.{c.index}" for c in r.claims]
    (a,) = phoenix_annotations(claims[0])
    assert a["name"] == "fastrm.claim.0" and a["result"]["label"] == r.claims[0].verdict
    assert repr(r.claims[0].text) in a["result"]["explanation"]
    m = mlflow_assessments(claims[0])
    assert [x["assessment_name"] for x in m] == ["fastrm.claim.0"] and m[0]["feedback"]["value"] == r.claims[0].verdict


def test_every_guard_span_has_a_map_view_child_that_viewers_draw(tiny_llava, tiny_proxy, calibration_uncertain, image):
    """Phoenix draws message images only on LLM spans: a `fastrm map` child of kind LLM under each guard
    span carries the answer's map as a picture (content capture only)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    model, processor = tiny_llava
    for capture in (True, False):
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        guard = Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider,
                      capture_content=capture)
        guard.generate_batch([(image, "What color?"), (image, "How many?")], max_new_tokens=3, min_new_tokens=2)
        spans = exporter.get_finished_spans()
        guards = [s for s in spans if s.name.startswith("apply_guardrail")]
        views = [s for s in spans if s.name == "fastrm map"]
        if not capture:
            assert views == []
            continue
        assert sorted(v.parent.span_id for v in views) == sorted(g.context.span_id for g in guards)
        for v in views:
            assert v.attributes["openinference.span.kind"] == "LLM"
            assert v.attributes["llm.output_messages.0.message.contents.1.message_content.image.image.url"].startswith(
                "data:image/png;base64,")


@pytest.mark.parametrize("which", ["tiny", "reference"])
def test_decoding_through_the_backend_equals_decode(which, tiny_llava):
    """decode_each (token_char_spans' prefixes, the result's token texts) calls a fast tokenizer's
    backend when that is exactly what ``decode`` gives; the texts equal ``decode``'s, unicode and
    specials included, and a tokenizer that cleans up spaces takes the general path."""
    from transformers import AutoTokenizer

    from fastrm_common.tokens import _backend_decodes_exactly, decode_each, decode_prefixes

    tok = tiny_llava[1].tokenizer if which == "tiny" else AutoTokenizer.from_pretrained(
        "shapesvqa/assets/reference-llava")
    assert _backend_decodes_exactly(tok) == (not tok.clean_up_tokenization_spaces)
    for text in ["a red circle, a blue square.", "Größe: 3 × 4 — ok?", "", "x"]:
        ids = tok(text, add_special_tokens=True)["input_ids"] + [tok.eos_token_id]
        want = [tok.decode(ids[: i + 1], skip_special_tokens=True) for i in range(len(ids))]
        assert decode_each(tok, [ids[: i + 1] for i in range(len(ids))], skip_special_tokens=True) == want
        assert decode_prefixes(tok, ids, skip_special_tokens=True) == want
        assert decode_each(tok, [[t] for t in ids]) == [tok.decode([t]) for t in ids]
    was = tok.clean_up_tokenization_spaces
    try:  # decode would clean up spaces after the backend: one decode per prefix then
        tok.clean_up_tokenization_spaces = True
        assert not _backend_decodes_exactly(tok)
    finally:
        tok.clean_up_tokenization_spaces = was
    assert not _backend_decodes_exactly(_WordTok(["a"]))  # not a fast tokenizer
    assert decode_each(_WordTok(["a", "b"]), [[0], [0, 1]]) == ["a", "a b"]
    assert decode_prefixes(_WordTok(["a", "b"]), [0, 1]) == ["a", "a b"]


@pytest.mark.parametrize("which", ["tiny", "reference"])
def test_special_ids_read_once_give_the_same_content_mask(which, tiny_llava):
    """special_token_ids is what content_token_mask reads from the tokenizer (special, EOS and pad
    ids); passing it (as the Guard does, read once) gives the same mask, and it does not stand in
    for extra_excluded_ids."""
    from transformers import AutoTokenizer

    from fastrm_common.tokens import content_token_mask, special_token_ids

    tok = tiny_llava[1].tokenizer if which == "tiny" else AutoTokenizer.from_pretrained(
        "shapesvqa/assets/reference-llava")
    special = special_token_ids(tok)
    assert set(tok.all_special_ids) <= special and tok.eos_token_id in special
    ids = tok("a red circle, a blue square.", add_special_tokens=True)["input_ids"] + [tok.eos_token_id]
    want = content_token_mask(ids, tok)
    assert want.any() and not want.all()
    assert content_token_mask(ids, tok, special_ids=special).tolist() == want.tolist()
    first_word = next(i for i, keep in enumerate(want) if keep)
    cut = content_token_mask(ids, tok, special_ids=special, extra_excluded_ids=[ids[first_word]])
    assert not cut[first_word] and cut.sum() < want.sum()


def test_token_char_spans_take_the_callers_prefixes(tiny_llava):
    """token_char_spans reuses prefixes the caller decoded (a stream keeps them across tokens) and gives
    what it computes itself; prefixes of another length are not trusted."""
    from fastrm_common.tokens import decode_prefixes
    from guardrail.answers.claims import token_char_spans

    tok = tiny_llava[1].tokenizer
    ids = tok("a red circle, a blue square.", add_special_tokens=False)["input_ids"]
    answer = tok.decode(ids, skip_special_tokens=True).strip()
    prefixes = decode_prefixes(tok, ids, skip_special_tokens=True)
    want = token_char_spans(tok, ids, answer)
    assert token_char_spans(tok, ids, answer, prefixes) == want
    assert token_char_spans(tok, ids, answer, prefixes[:-1]) == want  # wrong length: decoded again
