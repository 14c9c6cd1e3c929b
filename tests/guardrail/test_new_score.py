"""A new score is one class registered in one place (issue 25): it then appears in the Guard's
result, its span, serve's ``guardrail`` object, policies and ``guardrail calibrate``'s table, with
no other file touched."""

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from calibration import AnswerSignals, Score, register_score
from calibration.answer_scores import SCORES
from guardrail import Guard
from guardrail.calibrate import ScoredAnswer, calibrate_scores
from guardrail.serve.protocol import guardrail_object
from policies import Policy


class ContentShare(Score):
    """A toy: the share of the answer's tokens that are not content tokens."""

    name = "toy_content_share"
    needs = frozenset({"token_logprob"})
    observe = {}
    table = ({},)

    def compute(self, sig: AnswerSignals) -> float | None:
        return float(1.0 - sig.content.mean()) if sig.content.size else None


@pytest.fixture
def toy_score():
    register_score(ContentShare)
    try:
        yield ContentShare
    finally:
        SCORES.remove(ContentShare.name)


def test_a_registered_score_is_in_the_result_the_span_serve_and_policies(toy_score, tiny_llava, tiny_proxy,
                                                                         calibration_uncertain, image):
    model, processor = tiny_llava
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    policy = Policy.model_validate({"id": "p", "version": "1", "default": {"action": "allow"}, "rules": [
        {"name": "toy", "when": {"scores": {"toy_content_share": {"gte": 0.0}}}, "action": "flag",
         "reason": "toy score"}]})
    guard = Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain, policy=policy,
                  tracer_provider=provider)
    r = guard.generate(image, "What color is the circle?", max_new_tokens=4, min_new_tokens=4)
    assert r.scores["toy_content_share"] == pytest.approx(1.0 - np.mean(r.content))
    assert r.rule == "toy" and r.action == "flag"
    guard_span = next(s for s in exporter.get_finished_spans() if s.name.startswith("apply_guardrail"))
    assert guard_span.attributes["fastrm.scores.toy_content_share"] == pytest.approx(r.scores["toy_content_share"])
    assert guardrail_object(r, trace_id=None)["scores"]["toy_content_share"] == r.scores["toy_content_share"]


def test_a_registered_score_is_in_the_calibrate_table(toy_score):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(80):
        correct = bool(i % 2)
        content = np.array([True] + [bool(rng.random() < (0.8 if correct else 0.3)) for _ in range(5)])
        sig = AnswerSignals(content=content, token_logprob=rng.normal(-1, 0.3, 6), margin=rng.random(6),
                            predictive_entropy=rng.random(6))
        rows.append(ScoredAnswer(id=str(i), answer="a", correct=correct, signals=sig))
    _, side = calibrate_scores(rows, score="toy_content_share", rule="paper_midpoint", command="test")
    labels = [t["label"] for t in side["score_table"]]
    assert "toy_content_share" in labels
    toy = next(t for t in side["score_table"] if t["label"] == "toy_content_share")
    assert toy["auroc"] > 0.7  # wrong answers have fewer content tokens here: the toy separates them
    # scores whose signals are missing (no maps here) are left out, not crashed on
    assert not any(t["name"] in ("map_entropy", "map_spread") for t in side["score_table"])
