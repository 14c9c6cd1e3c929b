"""benchmarks/hallucination_guard.py: its operating points, cross-fitting and map statistics, and one
end-to-end run on the shipped model, proxy and calibration."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from calibration import AnswerSignals

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "hallucination_guard.py"


def _load():
    spec = importlib.util.spec_from_file_location("hallucination_guard", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_matched_threshold_keeps_that_share_of_correct_answers_confident():
    hg = _load()
    rng = np.random.default_rng(0)
    v = rng.random(400)
    correct = rng.random(400) < 0.8
    for share in (0.0, 0.3, 0.7, 1.0):
        thr = hg.matched_threshold(v, correct, share)
        assert abs(float((v[correct] < thr).mean()) - share) <= 1 / correct.sum()


def test_cross_fitted_scores_each_answer_with_the_other_folds_model():
    hg = _load()
    rng = np.random.default_rng(1)
    n = 300
    wrong = rng.random(n) < 0.3
    informative = wrong + rng.normal(0, 0.5, n)
    values = {"a": informative, "b": rng.normal(size=n)}
    folds = hg._folds(np.array([f"s{i // 3}" for i in range(n)]))  # three answers per scene, whole scenes per fold
    assert set(folds) == {0, 1} and all(len(set(folds[i:i + 3])) == 1 for i in range(0, n, 3))
    out = hg.cross_fitted(values, ("a", "b"), wrong, folds)
    assert np.isfinite(out).all()
    from calibration import auroc

    assert auroc(out, wrong) > 0.8
    # a fold whose training part holds one class only fits nothing: NaN, not a crash
    assert np.isnan(hg.cross_fitted(values, ("a",), np.where(folds == 0, True, wrong), folds)[folds == 1]).all()


def test_map_statistics_need_no_mask():
    hg = _load()
    focused = np.zeros((2, 8, 8))
    focused[0, 3, 3] = 0.9
    focused[1] = 0.5  # the end-of-sequence token: not a content token
    weak = np.full((2, 8, 8), 0.05)
    content = np.array([True, False])
    s_focused = AnswerSignals(content=content, maps=focused)
    s_weak = AnswerSignals(content=content, maps=weak)
    assert hg.map_peak(s_focused) == pytest.approx(0.1) and hg.map_peak(s_weak) == pytest.approx(0.95)
    assert hg.map_mass(s_focused) == pytest.approx(-0.9) and hg.map_mass(s_weak) == pytest.approx(-0.05 * 64)
    assert hg.map_peak(AnswerSignals(content=np.array([False, False]), maps=weak)) is None


@pytest.mark.slow  # the shipped model answers a tiny POPE split
def test_runs_end_to_end_on_the_shipped_guard(tmp_path):
    out, rows = tmp_path / "report.json", tmp_path / "rows.jsonl"
    report = _load().main(["--n", "3", "--seed", "5", "--stats-scenes", "50", "--out", str(out), "--rows", str(rows)])
    saved = json.loads(out.read_text())
    assert saved["pope"] == report["pope"] and set(saved["pope"]) == {"random", "popular", "adversarial"}
    assert saved["identity"] == "checked" and saved["verdict"]["score"] == "low_margin(max)"
    labels = [row["score"] for row in saved["scores"]]
    assert {"map_entropy(mean)", "low_margin(max)", "token_nll(max)", "map_peak", "novelty"} <= set(labels)
    assert "token + map signals, cross-fitted" in labels
    assert set(saved["maps"]) == {"hallucinated yes", "hallucinated yes, caught", "hallucinated yes, missed", "correct yes"}
    lines = [json.loads(line) for line in rows.read_text().splitlines()]
    assert len(lines) == saved["n_answers"] and all(r["verdict"] in ("confident", "uncertain") for r in lines)
    assert saved["verdict"]["hallucinated_yes"] == sum(r["hallucinated"] for r in lines)
