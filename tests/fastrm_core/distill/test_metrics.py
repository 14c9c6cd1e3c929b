"""Every metric on hand-made cases."""

import math

import numpy as np
import pytest
import torch

from fastrm_core.distill.evaluate import EvalConfig, aggregate
from fastrm_core.distill.metrics import (
    classification_scores,
    confusion_counts,
    correlations,
    curve_auc,
    f1_interval,
    mask_to_grid,
    pointing,
    rank_patches,
    removal_masks,
)
from fastrm_core.distill.metrics import binarize_maps


def test_binarize_maps_relative_to_each_maps_max():
    maps = torch.tensor([[0.0, 0.29, 0.3, 1.0], [2.0, 0.5, 0.7, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert binarize_maps(maps, 0.3).tolist() == [
        [False, False, True, True],
        [True, False, True, False],  # 0.6 = 0.3 x 2.0
        [False, False, False, False],  # an all-zero map has no relevant patch
    ]
    assert binarize_maps(maps, 1.0)[0].tolist() == [False, False, False, True]


def test_confusion_counts_and_scores_on_a_known_map():
    probs = np.array([[0.9, 0.6, 0.4, 0.1], [0.2, 0.7, 0.05, 0.55]])
    labels = np.array([[1, 1, 0, 0], [0, 1, 1, 0]], bool)
    counts = confusion_counts(probs, labels, thresholds=(0.5, 0.8))
    # at 0.5: predicted {0.9, 0.6, 0.7, 0.55}: tp 3 (0.9, 0.6, 0.7), fp 1 (0.55), fn 1 (0.05), tn 3
    assert counts.tolist() == [[3, 1, 1, 3], [1, 0, 3, 4]]
    at5, at8 = classification_scores(counts)
    assert at5 == {"accuracy": 0.75, "precision": 0.75, "recall": 0.75, "f1": 0.75}
    assert at8["accuracy"] == 0.625 and at8["precision"] == 1.0 and at8["recall"] == 0.25 and at8["f1"] == 0.4
    # a probability equal to the threshold counts as predicted relevant
    assert confusion_counts(np.array([0.5]), np.array([True]), (0.5,)).tolist() == [[1, 0, 0, 0]]


def test_scores_without_positives_are_zero_not_nan():
    (row,) = classification_scores(confusion_counts(np.zeros(4), np.zeros(4, bool), (0.5,)))
    assert row == {"accuracy": 1.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_confusion_counts_checks_sizes():
    with pytest.raises(ValueError, match="differ in size"):
        confusion_counts(np.zeros(3), np.zeros(4, bool))


def test_f1_interval_resamples_records():
    perfect, wrong = [[2, 0, 0, 6]], [[0, 1, 1, 6]]  # one threshold; F1 1 and 0
    # two records: a resample holds k perfect ones (k = 0, 1, 2 with probability 1/4, 1/2, 1/4),
    # pooled F1 = 4k / (2k + 4) -> 0, 2/3, 1
    counts = np.array([perfect, wrong])
    (lo, hi), = f1_interval(counts, n_boot=4000, level=0.95, seed=1)
    assert (lo, hi) == (0.0, 1.0)
    (lo, hi), = f1_interval(counts, n_boot=4000, level=0.4, seed=1)
    assert lo == pytest.approx(2 / 3) and hi == pytest.approx(2 / 3)
    # identical records: nothing to vary
    same = np.array([[[3, 1, 2, 10], [1, 0, 4, 11]]] * 5)  # two thresholds
    bounds = f1_interval(same, n_boot=50)
    assert bounds.shape == (2, 2)
    assert bounds[:, 0] == pytest.approx([6 / 9, 2 / 6]) and bounds[:, 1] == pytest.approx([6 / 9, 2 / 6])
    # seeded; more records -> a narrower interval around the same F1
    rng = np.random.default_rng(0)
    few = np.stack([[[rng.integers(0, 5), rng.integers(0, 3), rng.integers(0, 3), 50]] for _ in range(40)])
    assert np.array_equal(f1_interval(few, seed=3), f1_interval(few, seed=3))
    many = np.concatenate([few] * 16)
    assert np.ptp(f1_interval(many)[0]) < 0.5 * np.ptp(f1_interval(few)[0])
    with pytest.raises(ValueError, match="record_counts must be"):
        f1_interval(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="n_boot"):
        f1_interval(counts, level=1.0)


def test_curve_auc_on_known_curves():
    f = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert curve_auc(f, [1.0] * 6) == pytest.approx(1.0)
    assert curve_auc(f, [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]) == pytest.approx(0.5)  # linear drop: mean height 0.5
    assert curve_auc(f, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]) == pytest.approx(0.1)  # triangle 0.5*0.1*1 / 0.5
    assert curve_auc([0.0, 0.1, 0.5], [1.0, 1.0, 0.0]) == pytest.approx((0.1 + 0.2) / 0.5)  # uneven spacing
    with pytest.raises(ValueError):
        curve_auc([0.0], [1.0])
    with pytest.raises(ValueError):
        curve_auc([0.5, 0.0], [1.0, 0.0])


def test_rank_patches_most_relevant_first_ties_in_row_major_order():
    assert rank_patches(np.array([[0.1, 0.9], [0.5, 0.9]])).tolist() == [1, 3, 2, 0]


def test_removal_masks_remove_the_right_patches():
    order = np.array([4, 0, 3, 1, 2, 5, 7, 6, 9, 8])  # most relevant first
    pos = removal_masks(order, [0.0, 0.1, 0.3, 0.5], positive=True)
    neg = removal_masks(order, [0.0, 0.1, 0.3, 0.5], positive=False)
    assert pos.sum(axis=1).tolist() == [0, 1, 3, 5]
    assert np.flatnonzero(pos[1]).tolist() == [4]
    assert np.flatnonzero(pos[2]).tolist() == [0, 3, 4]
    assert np.flatnonzero(neg[2]).tolist() == [6, 8, 9]  # the three least relevant
    assert not (pos[3] & neg[3]).any()  # half and half
    assert removal_masks(np.arange(64), [0.25])[0].sum() == 16
    with pytest.raises(ValueError):
        removal_masks(order, [1.5])


def test_mask_to_grid_coverage_rule():
    mask = np.zeros((32, 32), bool)
    mask[0:8, 8:16] = True  # patch (0, 1) fully
    mask[8:11, 0:8] = True  # 3/8 = 37.5% of patch (1, 0): in
    mask[16:18, 16:24] = True  # 2/8 = 25% of patch (2, 2): out
    grid = mask_to_grid(mask, (4, 4))
    expected = np.zeros((4, 4), bool)
    expected[0, 1] = expected[1, 0] = True
    assert grid.tolist() == expected.tolist()


def test_mask_to_grid_keeps_the_best_covered_patch_of_a_small_object():
    mask = np.zeros((32, 32), bool)
    mask[9:11, 17:19] = True  # 4 pixels in patch (1, 2): 6% coverage
    grid = mask_to_grid(mask, (4, 4))
    assert np.flatnonzero(grid).tolist() == [1 * 4 + 2]
    assert not mask_to_grid(np.zeros((32, 32), bool), (4, 4)).any()


def test_mask_to_grid_any_image_size():
    mask = np.zeros((30, 30), bool)
    mask[:15, :15] = True  # the top-left quarter, not a multiple of the 4x4 grid
    grid = mask_to_grid(mask, (4, 4))
    assert grid[:2, :2].all() and grid.sum() == 4


def test_pointing_game_on_a_known_mask():
    target = np.zeros((4, 4), bool)
    target[1, 1:3] = True
    hit_map = np.zeros((4, 4))
    hit_map[1, 2] = 3.0
    hit_map[3, 3] = 1.0
    assert pointing(hit_map, target) == {"hit": True, "mass": 0.75, "chance": 0.125}
    miss_map = hit_map.copy()
    miss_map[0, 0] = 5.0
    out = pointing(miss_map, target)
    assert out["hit"] is False and out["mass"] == pytest.approx(3 / 9, abs=1e-6)
    assert pointing(np.zeros((4, 4)), target)["mass"] == 0.0
    with pytest.raises(ValueError):
        pointing(np.zeros(3), target)


def test_correlations():
    a = np.array([0.1, 0.4, 0.2, 0.9])
    p, s = correlations(a, 2 * a + 1)
    assert p == pytest.approx(1.0) and s == pytest.approx(1.0)
    p, s = correlations(a, a**3)  # monotone, not linear
    assert s == pytest.approx(1.0) and p < 1.0
    p, s = correlations(a, -a)
    assert p == pytest.approx(-1.0)
    assert all(math.isnan(x) for x in correlations(a, np.ones(4)))


def test_aggregate_pools_counts_and_integrates_mean_curves():
    cfg = EvalConfig(thresholds=(0.5,), fractions=(0.0, 0.25, 0.5), methods=("proxy", "random"))
    def rec(rid, correct, counts, counts_all, content, pos, neg, hit, pear):
        return {"id": rid, "family": {"a": "attribute", "b": "counting"}[rid], "answer": "red", "correct": correct,
                "n_tokens": 2, "content": content,
                "counts": [counts], "counts_all": [counts_all], "pearson": pear, "spearman": pear,
                "perturbation": {"positive": {"proxy": pos, "random": [1.0, 1.0, 1.0]},
                                 "negative": {"proxy": neg, "random": [1.0, 1.0, 1.0]}},
                "agreement": {"positive": {"proxy": pos, "random": [1.0, 1.0, 1.0]},
                              "negative": {"proxy": neg, "random": [1.0, 1.0, 1.0]}},
                "pointing": {"proxy": {"hit": hit, "mass": 0.5, "chance": 0.25},
                             "random": {"hit": 0.25, "mass": 0.25, "chance": 0.25}}}

    results = [
        rec("a", True, [3, 1, 0, 4], [3, 1, 4, 8], [True, False], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], True,
            [1.0, float("nan")]),
        rec("b", False, [1, 0, 2, 5], [1, 0, 2, 13], [False, True], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0], False,
            [0.0, 0.5]),
        {"id": "c", "skipped": "image not found"},
    ]
    report = aggregate(results, cfg, label_threshold=0.3)
    assert report["n_records"] == 2 and report["n_skipped"] == 1 and report["answer_accuracy"] == 0.5
    (row,) = report["classification"]["thresholds"]
    assert row["threshold"] == 0.5 and row["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2), abs=1e-4)  # pooled 4/1/2/9
    assert report["n_content_tokens"] == 2 and report["classification"]["n_tokens"] == 2
    by_family = report["classification"]["by_family"]
    assert list(by_family) == ["attribute", "counting"]
    assert by_family["attribute"]["n_records"] == 1 and by_family["attribute"]["n_tokens"] == 1
    assert by_family["attribute"]["thresholds"][0]["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 0), abs=1e-4)
    assert by_family["counting"]["thresholds"][0]["f1"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 2), abs=1e-4)
    every = report["classification"]["all_tokens"]
    assert every["n_tokens"] == 4
    assert every["thresholds"][0]["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 6), abs=1e-4)  # pooled 4/1/6/21
    # content tokens: a's first (1.0) and b's second (0.5); all tokens: 1.0, NaN (left out), 0.0, 0.5
    assert report["correlation"] == {"pearson": 0.75, "spearman": 0.75, "n_tokens": 2,
                                     "all_tokens": {"pearson": 0.5, "spearman": 0.5, "n_tokens": 3}}
    pos = report["perturbation"]["positive"]["proxy"]
    assert pos["accuracy"] == [1.0, 0.5, 0.0]
    assert pos["auc"] == pytest.approx(curve_auc([0, 0.25, 0.5], [1.0, 0.5, 0.0]))
    assert report["perturbation"]["negative"]["proxy"]["accuracy"] == [1.0, 1.0, 0.5]
    assert report["perturbation"]["positive"]["random"]["auc"] == 1.0
    assert report["pointing"]["all"]["proxy"]["hit"] == 0.5
    assert report["pointing"]["correct"]["proxy"]["hit"] == 1.0
    # confidence intervals: over records, around the pooled F1; none with bootstrap=0
    assert report["classification"]["f1_ci"] == {"method": "percentile bootstrap over records", "level": 0.95,
                                                 "resamples": 1000}
    lo, hi = row["f1_ci"]
    assert 0 <= lo <= row["f1"] <= hi <= 1 and lo < hi
    assert len(every["thresholds"][0]["f1_ci"]) == 2
    assert "f1_ci" not in by_family["attribute"]["thresholds"][0]  # one record: no interval
    plain = aggregate(results, EvalConfig(thresholds=(0.5,), fractions=(0.0, 0.25, 0.5), bootstrap=0))
    assert plain["classification"]["f1_ci"] is None and "f1_ci" not in plain["classification"]["thresholds"][0]
