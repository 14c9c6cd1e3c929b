"""End to end on the shipped reference model, proxy and calibration (what `make demo` runs)."""

import io
import time

import pytest

from rich.console import Console

from guardrail import Guard
from guardrail.cli import main
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
