"""An evaluation report shows the label positive rate and trivial baselines beside every F1, and warns
when its figures mean little (nearly all patches relevant, no answer correct)."""

from __future__ import annotations

import io

from rich.console import Console

from fastrm_core.distill.cli import report_tables
from fastrm_core.distill.evaluate import EvalConfig, aggregate
from fastrm_core.distill.metrics import trivial_baselines

CONFIG = EvalConfig(bootstrap=0, fractions=(0.0, 0.5))
K = len(CONFIG.thresholds)


def record(i: int, counts: list[int], correct: bool, family: str = "attribute") -> dict:
    """One answer token on a 16-patch grid, with the same (tp, fp, fn, tn) at every threshold."""
    curve = [float(correct)] * 2
    return {
        "id": f"q{i}", "family": family, "answer": "red" if correct else "blue", "correct": correct, "n_tokens": 1,
        "content": [True], "counts": [counts] * K, "counts_all": [counts] * K, "pearson": [0.5], "spearman": [0.5],
        "perturbation": {d: {"proxy": curve, "random": curve} for d in ("positive", "negative")},
        "agreement": {d: {"proxy": [1.0, 0.5], "random": [1.0, 0.5]} for d in ("positive", "negative")},
    }


def printed(report: dict) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=80, color_system=None)
    for table in report_tables(report):
        console.print(table)
    return buf.getvalue()


def test_trivial_baselines_of_pooled_counts():
    b = trivial_baselines([14, 2, 0, 0])  # 14 of 16 patches relevant
    assert b["positive_rate"] == 0.875
    assert b["all_positive"] == {"accuracy": 0.875, "precision": 0.875, "recall": 1.0, "f1": 0.9333}
    assert b["all_negative"] == {"accuracy": 0.125, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_a_meaningless_f1_is_shown_beside_its_baseline_and_warned_about():
    # a proxy for a random model: 14 of 16 patches labelled relevant, the proxy calls all relevant
    report = aggregate([record(i, [14, 2, 0, 0], correct=False) for i in range(6)], CONFIG, label_threshold=0.3)
    cls = report["classification"]
    assert cls["positive_rate"] == 0.875 and cls["baselines"]["all_positive"]["f1"] == 0.9333
    assert cls["thresholds"][4]["f1"] == 0.9333  # "excellent", and exactly what calling every patch relevant gives
    assert cls["all_tokens"]["positive_rate"] == 0.875 and cls["by_family"]["attribute"]["positive_rate"] == 0.875
    warnings = " ".join(report["warnings"])
    assert "88% of the patches are labelled relevant" in warnings
    assert "no better than calling every patch relevant (0.933)" in warnings
    assert "no answer is correct" in warnings and "AUC says nothing" in warnings
    text = printed(report)
    assert "87.5% of patches relevant" in text and "all 1" in text and "all 0" in text
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80


def test_a_sound_report_has_no_warnings():
    rows = [record(i, [3, 1, 1, 11], correct=i % 2 == 0, family=("attribute", "counting")[i % 2]) for i in range(6)]
    report = aggregate(rows, CONFIG, label_threshold=0.3)
    assert report["classification"]["positive_rate"] == 0.25 and report["warnings"] == []
    text = printed(report)
    assert "25.0% of patches relevant" in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
