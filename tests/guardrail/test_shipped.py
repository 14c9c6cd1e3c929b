"""End to end on the shipped reference model, proxy and calibration (what `make demo` runs)."""

import io
import time

import pytest
from rich.console import Console

from guardrail import Guard
from guardrail.cli.main import main
from shapesvqa.world import generate


def test_guard_from_pretrained_reference_answers_and_decides():
    guard = Guard.from_pretrained("reference")
    ex = next(generate(1, seed=7, family="attribute"))
    r = guard.generate(ex.image, ex.question)
    assert r.error is None and r.verdict in ("confident", "uncertain") and r.score is not None
    assert r.maps.shape[1:] == (8, 8) and r.answer


@pytest.mark.slow
def test_demo_runs_offline_in_under_30_seconds(tmp_path):
    buf = io.StringIO()
    start = time.perf_counter()
    code = main(["demo", "--out", str(tmp_path / "demo")], console=Console(file=buf, width=120, color_system=None))
    elapsed = time.perf_counter() - start
    text = buf.getvalue()
    assert code == 0, text
    assert "WRONG" in text and "right" in text  # the demo shows answers of both kinds
    assert (tmp_path / "demo" / "trace.jsonl").stat().st_size > 0
    assert list((tmp_path / "demo").glob("*_overlay.png"))
    assert elapsed < 30, f"demo took {elapsed:.1f} s"


@pytest.mark.slow  # the demo twice over, on a test preset
def test_demo_shows_a_caught_and_a_missed_hallucination_with_where_the_map_looked(tmp_path):
    """The demo's POPE panels, on a preset whose POPE questions are labelled as if their objects were
    absent: every "yes" then counts as a hallucination, caught or missed by the shipped verdict."""
    from dataclasses import dataclass, replace

    from fastrm_common.presets import get_preset, register_preset
    from guardrail.cli.demo import run_demo

    reference = get_preset("reference")
    calls = []

    @dataclass
    class Probe:  # what a preset's pope_examples return
        id: str
        image: object
        question: str
        answers: list
        family: str = "pope"
        pope: str = "adversarial"

        def describe_map(self, rel_map):
            calls.append(rel_map.shape)
            return "peak on the test object"

    def probes(n, seed):
        exs = [ex for ex in generate(400, seed=seed, family="existence") if ex.answers == ["yes"]][:n]
        return [Probe(f"p{i}", ex.image, ex.question, ["no"]) for i, ex in enumerate(exs)]

    register_preset(replace(reference, name="demo-test", pope_examples=probes))
    buf = io.StringIO()
    # a threshold on map entropy in the middle of the "yes" answers' scores catches some, misses others
    import numpy as np

    from calibration import Calibration, ScoreSpec

    guard = Guard.from_pretrained("reference", policy="observe-only")
    entropies = [r.scores["map_entropy"] for r in guard.generate_batch([(p.image, p.question) for p in probes(12, 5)])]
    cal = Calibration.load(reference.calibration())
    cal = cal.model_copy(update={"score": ScoreSpec(name="map_entropy", params={"aggregation": "mean"}),
                                 "threshold": float(np.median(entropies)), "novelty_gate": None})
    cal_path = tmp_path / "calibration.json"
    cal.save(cal_path)
    summary = run_demo(tmp_path / "demo", model="demo-test", calibration=str(cal_path), pool=2, pope_scenes=12,
                       pope_seed=5, console=Console(file=buf, width=120, color_system=None))
    text = buf.getvalue()
    assert summary["pope_questions"] == 12 and summary["hallucinated"] == 12
    assert 0 < summary["hallucinations_caught"] < 12
    assert "hallucination CAUGHT" in text and "hallucination MISSED" in text
    assert text.count("peak on the test object") == 2 and calls == [(8, 8), (8, 8)]
    assert "12 hallucinated \"yes\"" in text
