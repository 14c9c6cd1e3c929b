import itertools

import numpy as np
import pytest

from calibration import Calibration, auroc, evaluate_threshold, fit_calibration, split_fit_heldout
from fastrm_common.errors import CalibrationError


def brute_force_auroc(scores, positive):
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def two_gaussians(n_correct, n_wrong, mu_c=0.0, mu_w=2.0, sd=1.0, seed=0):
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(mu_c, sd, n_correct), rng.normal(mu_w, sd, n_wrong)]
    correct = np.r_[np.ones(n_correct, bool), np.zeros(n_wrong, bool)]
    return scores, correct


# ---- AUROC --------------------------------------------------------------------------


def test_auroc_hand_made_cases():
    assert auroc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert auroc([1, 2, 3, 4], [True, True, False, False]) == 0.0
    assert auroc([5, 5, 5, 5], [True, False, True, False]) == 0.5
    # positives {2, 3} vs negatives {1, 2}: pairs 1 + 0.5 + 1 + 1 = 3.5 of 4
    assert auroc([1, 2, 2, 3], [False, True, False, True]) == pytest.approx(0.875)
    assert auroc([1, 2], [1, 0]) == 0.0  # 0/1 labels accepted
    assert auroc([1, 2, 3], [False, False, False]) is None
    assert auroc([1, 2, 3], [True, True, True]) is None


def test_auroc_matches_pairwise_count_on_random_data_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(5):
        scores = rng.integers(0, 8, size=60).astype(float)  # many ties
        positive = rng.uniform(size=60) < 0.4
        assert auroc(scores, positive) == pytest.approx(brute_force_auroc(scores, positive))
    scores = rng.normal(size=80)
    positive = rng.uniform(size=80) < 0.3
    assert auroc(scores, positive) == pytest.approx(brute_force_auroc(scores, positive))


# ---- evaluate_threshold -------------------------------------------------------------


def test_evaluate_threshold_confusion_and_rates():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    correct = [1, 1, 1, 0, 1, 0, 0, 1]
    m = evaluate_threshold(scores, correct, 0.45)
    # confident = score < 0.45: 0.1 0.2 0.3 (correct) 0.4 (wrong)
    assert (m.tp, m.fp, m.tn, m.fn) == (3, 1, 2, 2)
    assert m.n == 8 and m.n_correct == 5 and m.n_wrong == 3
    assert m.share_confident == pytest.approx(0.5)
    assert m.precision_confident == pytest.approx(0.75)
    assert m.precision_uncertain == pytest.approx(0.5)
    assert m.recall_confident == pytest.approx(0.6)
    assert m.accuracy == pytest.approx(5 / 8)
    assert m.auroc == pytest.approx(brute_force_auroc(scores, [not c for c in correct]))
    # a score equal to the threshold is uncertain
    assert evaluate_threshold([0.45], [True], 0.45).share_confident == 0.0
    empty_confident = evaluate_threshold([0.5, 0.6], [True, False], 0.0)
    assert empty_confident.precision_confident is None and empty_confident.auroc == 1.0


# ---- fitting rules ------------------------------------------------------------------


def test_paper_midpoint_is_the_midpoint_of_the_class_means():
    scores, correct = two_gaussians(300, 200)
    cal = fit_calibration(scores, correct)
    assert cal.rule == "paper_midpoint"
    expected = 0.5 * (scores[correct].mean() + scores[~correct].mean())
    assert cal.threshold == pytest.approx(expected)
    assert cal.kde.mean_correct == pytest.approx(scores[correct].mean())
    assert set(cal.alternatives) == {"density_crossing", "guaranteed_precision"}
    assert [r.rule for r in cal.rules_table()] == ["paper_midpoint", "density_crossing", "guaranteed_precision"]
    assert cal.fit_metrics.auroc > 0.85
    assert cal.verdict(-1.0) == "confident" and cal.verdict(3.0) == "uncertain"


def test_density_crossing_of_two_known_gaussians():
    # N(0, 1) and N(2, 1), equal priors and variances: the densities cross at 1
    scores, correct = two_gaussians(2000, 2000)
    cal = fit_calibration(scores, correct, rule="density_crossing")
    assert cal.threshold == pytest.approx(1.0, abs=0.1)
    assert not any("fell back" in n for n in cal.notes)
    # the crossing is where the stored, prior-weighted curves meet
    xs = np.asarray(cal.kde.xs)
    diff = cal.kde.prior_correct * np.asarray(cal.kde.density_correct) - (1 - cal.kde.prior_correct) * np.asarray(
        cal.kde.density_wrong
    )
    between = (xs > 0.5) & (xs < 1.5)
    assert np.sign(diff[between][0]) == 1 and np.sign(diff[between][-1]) == -1


def test_density_crossing_moves_with_the_priors():
    # 4x more correct answers: the Bayes boundary moves towards the wrong class mean
    # analytic: x = 1 + log(4) / 2 ≈ 1.69 for N(0,1) vs N(2,1)
    scores, correct = two_gaussians(4000, 1000, seed=1)
    cal = fit_calibration(scores, correct, rule="density_crossing")
    assert cal.threshold == pytest.approx(1 + np.log(4) / 2, abs=0.15)


def test_density_crossing_outside_the_means_and_fallback_are_noted():
    # a heavy prior imbalance pushes the crossing beyond the wrong-class mean
    scores, correct = two_gaussians(1900, 100, mu_w=0.5, seed=2)
    cal = fit_calibration(scores, correct, rule="density_crossing")
    assert any("do not cross between the class means" in n for n in cal.notes)
    assert cal.threshold > cal.kde.mean_wrong
    # reversed signal: wrong answers score lower; correct never dominates on the left
    scores, correct = two_gaussians(200, 200, mu_c=2.0, mu_w=0.0, seed=3)
    cal = fit_calibration(scores, correct, rule="density_crossing")
    assert any("do not score lower" in n for n in cal.notes)
    assert cal.fit_metrics.auroc < 0.5


def test_guaranteed_precision_is_certified_on_fitting_data():
    scores, correct = two_gaussians(1500, 300, seed=4)
    cal = fit_calibration(scores, correct, rule="guaranteed_precision", target_precision=0.9, delta=0.1)
    assert cal.target_precision == 0.9 and cal.delta == 0.1
    assert "with probability >= 0.9" in cal.guarantee and "exchangeable" in cal.guarantee
    m = cal.fit_metrics
    assert m.precision_confident >= 0.9  # the bound is above the empirical error rate
    # the certified bound at the chosen threshold is <= 10%
    from calibration.guarantee import clopper_pearson_upper

    assert clopper_pearson_upper(m.fp, m.tp + m.fp, 0.1 / 4) <= 0.1 + 1e-12


def test_guaranteed_precision_refuses_an_impossible_target():
    # wrong and correct alternate: no prefix is 90% right, so nothing is confident
    scores = np.arange(400, dtype=float)
    correct = np.arange(400) % 2 == 1
    cal = fit_calibration(scores, correct, rule="guaranteed_precision", target_precision=0.9)
    assert cal.threshold is None
    assert cal.verdict(-1e9) == "uncertain"
    assert cal.fit_metrics.share_confident == 0.0 and cal.fit_metrics.tp == 0
    assert any("cannot be certified" in n for n in cal.notes)
    assert cal.guarantee.startswith("no guarantee")
    # too little data for the target is also a refusal, never "everything confident"
    few, ok = np.arange(50, dtype=float), np.ones(50, bool)
    ok[-5:] = False
    cal = fit_calibration(few, ok, rule="guaranteed_precision", target_precision=0.98, min_per_class=2)
    assert cal.threshold is None and any("needs at least 183 confident" in n for n in cal.notes)


def test_heldout_metrics_for_every_rule():
    scores, correct = two_gaussians(300, 300, seed=7)
    fit_idx, held_idx = split_fit_heldout(len(scores), 0.5, seed=0, stratify=correct)
    cal = fit_calibration(
        scores[fit_idx], correct[fit_idx], heldout=(scores[held_idx], correct[held_idx]), model_id="m", proxy_id="p"
    )
    assert cal.heldout_metrics.n == len(held_idx)
    for r in cal.rules_table():
        assert r.heldout_metrics is not None and r.heldout_metrics.n == len(held_idx)
        assert r.heldout_metrics.threshold == r.threshold
    assert cal.heldout_metrics.precision_confident > cal.heldout_metrics.accuracy
    assert not any("no held-out data" in n for n in cal.notes)
    assert any("no held-out data" in n for n in fit_calibration(scores, correct).notes)


# ---- validation ---------------------------------------------------------------------


def test_too_few_answers_of_a_class():
    scores, correct = two_gaussians(40, 3)
    with pytest.raises(CalibrationError, match=r"40 correct and 3 wrong answer\(s\) out of 43; a threshold needs at least 5 of each"):
        fit_calibration(scores, correct)
    scores, correct = two_gaussians(2, 1)
    with pytest.raises(CalibrationError, match="2 correct and 1 wrong"):
        fit_calibration(scores, correct)
    assert fit_calibration(*two_gaussians(40, 3), min_per_class=3).fit_metrics.n_wrong == 3


def test_too_few_answers_says_which_side_is_missing_and_what_to_do():
    scores, correct = two_gaussians(0, 40)  # every answer wrong: harder questions would not help
    with pytest.raises(CalibrationError) as info:
        fit_calibration(scores, correct)
    message = str(info.value)
    assert "0 correct and 40 wrong" in message and "Too few correct answers (0)" in message
    assert "match how the model answers" in message and "harder" not in message
    scores, correct = two_gaussians(40, 0)  # every answer right
    with pytest.raises(CalibrationError, match=r"Too few wrong answers \(0\): add questions the model gets wrong") as info:
        fit_calibration(scores, correct)
    assert "Too few correct" not in str(info.value)


@pytest.mark.parametrize(
    ("scores", "correct", "message"),
    [
        ([0.1, float("nan"), 0.3], [1, 0, 1], r"1 score\(s\) are NaN \(first at index 1\)"),
        ([0.1, 0.2], [1, 0, 1], "2 scores but 3 correctness labels"),
        ([0.1, float("inf")], [1, 0], "infinite score at index 1"),
        ([0.1, 0.2], [1, 2], "booleans or 0/1"),
        ([], [], "no answers"),
        ([[0.1, 0.2]], [[1, 0]], "one-dimensional"),
    ],
)
def test_bad_inputs(scores, correct, message):
    with pytest.raises(CalibrationError, match=message):
        fit_calibration(scores, correct)


def test_constant_scores():
    correct = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    with pytest.raises(CalibrationError, match="all 20 scores are equal"):
        fit_calibration(np.full(20, 0.7), correct)
    scores = np.r_[np.full(10, 0.3), np.linspace(0.4, 0.9, 10)]
    with pytest.raises(CalibrationError, match="scores of all 10 correct answers are equal"):
        fit_calibration(scores, correct)


def test_bad_options():
    scores, correct = two_gaussians(20, 20)
    with pytest.raises(CalibrationError, match="unknown rule 'median'; expected one of: paper_midpoint, density_crossing"):
        fit_calibration(scores, correct, rule="median")
    with pytest.raises(CalibrationError, match="unknown aggregation"):
        fit_calibration(scores, correct, aggregation="sum")
    with pytest.raises(CalibrationError, match="target_precision"):
        fit_calibration(scores, correct, target_precision=1.5)
    with pytest.raises(CalibrationError, match="delta"):
        fit_calibration(scores, correct, delta=0.0)
    with pytest.raises(CalibrationError, match="held-out data: 2 scores but 1"):
        fit_calibration(scores, correct, heldout=([0.1, 0.2], [True]))


def test_records_identity_and_provenance():
    scores, correct = two_gaussians(30, 30)
    cal = fit_calibration(
        scores,
        correct,
        aggregation="max",
        entropy_normalized=True,
        model_id="llava",
        model_hash="abc",
        proxy_id="proxy",
        dataset_hash="f" * 64,
        command="guardrail calibrate --data d.jsonl",
        metadata={"seed": 3, "fit_fraction": 0.5},
        grid_size=64,
    )
    assert isinstance(cal, Calibration)
    assert (cal.aggregation, cal.entropy_normalized, cal.model_id, cal.model_hash) == ("max", True, "llava", "abc")
    assert cal.metadata == {"seed": 3, "fit_fraction": 0.5}
    assert len(cal.kde.xs) == 64
    assert cal.kde.xs[0] < scores.min() and cal.kde.xs[-1] > scores.max()


# ---- split --------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_complete():
    a = split_fit_heldout(101, 0.3, seed=5)
    b = split_fit_heldout(101, 0.3, seed=5)
    c = split_fit_heldout(101, 0.3, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    fit, held = a
    assert len(fit) == 30 and len(held) == 71
    assert np.intersect1d(fit, held).size == 0
    assert sorted(np.r_[fit, held].tolist()) == list(range(101))


def test_stratified_split_keeps_class_shares():
    labels = np.r_[np.ones(80, bool), np.zeros(20, bool)]
    fit, held = split_fit_heldout(100, 0.5, seed=0, stratify=labels)
    assert labels[fit].sum() == 40 and labels[held].sum() == 40
    assert len(fit) == len(held) == 50


def test_split_edge_cases():
    fit, held = split_fit_heldout(2, 0.9, seed=0)
    assert len(fit) == 1 and len(held) == 1
    with pytest.raises(CalibrationError, match="strictly between 0 and 1"):
        split_fit_heldout(10, 1.0)
    with pytest.raises(CalibrationError, match="at least 2"):
        split_fit_heldout(1, 0.5)
    with pytest.raises(CalibrationError, match=r"shape \(10,\)"):
        split_fit_heldout(10, 0.5, stratify=[1, 0])
