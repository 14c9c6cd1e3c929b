"""Scores as plug-ins: the registry, the built-ins' maths, the fitted scores."""

import numpy as np
import pytest

from calibration import AnswerSignals, Score, auroc, fit_score, get_score, list_scores, register_score
from calibration.answer_scores import SCORES
from fastrm_common.errors import CalibrationError

BUILT_INS = ["fused", "grounding", "low_margin", "map_entropy", "map_spread", "novelty", "predictive_entropy", "state_probe",
             "token_nll", "visual_contrast"]


def _signals(n=400, seed=0):
    """Synthetic answers: wrong ones have less likely tokens and slightly shifted features."""
    rng = np.random.default_rng(seed)
    out, correct = [], []
    for _ in range(n):
        ok = rng.random() < 0.8
        T = 3
        p = rng.uniform(0.6, 1.0, T) if ok else rng.uniform(0.2, 0.9, T)
        maps = rng.random((T, 4, 4))
        out.append(AnswerSignals(
            content=np.array([True, True, False]),
            map_entropy=rng.uniform(1.5, 2.7, T), n_patches=16, maps=maps,
            token_logprob=np.log(p), predictive_entropy=rng.uniform(0, 1, T) + (0 if ok else 0.3),
            margin=rng.uniform(0, 1, T), features=rng.normal(size=20) + (0.0 if ok else 0.2),  # 5 blocks of 4
        ))
        correct.append(ok)
    return out, np.array(correct)


def test_registry_lists_and_names_the_choices():
    assert list_scores() == BUILT_INS
    with pytest.raises(CalibrationError, match="unknown score 'entropy'; expected one of: fused, grounding, low_margin, map_entropy"):
        get_score("entropy")
    with pytest.raises(CalibrationError, match="aggregation='median' is not one of: mean, max, first"):
        get_score("map_entropy", aggregation="median")
    with pytest.raises(CalibrationError, match="bad parameters"):
        get_score("token_nll", window=3)


def test_register_a_custom_score():
    class AnswerLength(Score):
        name = "answer_length"
        needs = frozenset()

        def compute(self, signals):
            return float(np.asarray(signals.content).sum())

    try:
        register_score(AnswerLength)
        assert "answer_length" in list_scores()
        assert get_score("answer_length")(AnswerSignals(content=np.array([True, False, True]))) == 2.0
        with pytest.raises(CalibrationError, match="already registered"):
            register_score(AnswerLength)
    finally:
        SCORES.remove("answer_length")


def test_built_in_maths():
    sig = AnswerSignals(
        content=np.array([True, False, True]),
        map_entropy=np.log(16) * np.array([0.2, 0.9, 0.6]), n_patches=16,
        maps=np.stack([np.eye(4), np.ones((4, 4)), np.eye(4)]),
        token_logprob=np.log([0.5, 0.01, 0.8]),
        predictive_entropy=np.array([0.3, 2.0, 0.1]),
        margin=np.array([0.9, 0.0, 0.4]),
    )
    assert get_score("map_entropy")(sig) == pytest.approx(0.4)
    assert get_score("map_entropy", aggregation="max")(sig) == pytest.approx(0.6)
    assert get_score("map_entropy", aggregation="first", normalized=False)(sig) == pytest.approx(0.2 * np.log(16))
    assert get_score("token_nll")(sig) == pytest.approx(-np.log(0.5))  # the least likely content token
    assert get_score("token_nll", aggregation="mean")(sig) == pytest.approx(-(np.log(0.5) + np.log(0.8)) / 2)
    assert get_score("predictive_entropy")(sig) == pytest.approx(0.3)
    assert get_score("low_margin")(sig) == pytest.approx(0.6)
    assert get_score("map_spread")(sig) == pytest.approx(0.0)  # each content map has all its mass on 4 patches
    # nothing to score: None, not a made-up number
    empty = AnswerSignals(content=np.zeros(3, bool), token_logprob=np.zeros(3))
    assert get_score("token_nll")(empty) is None
    with pytest.raises(CalibrationError, match="needs the signal"):
        get_score("map_entropy")(empty)


def test_fused_is_deterministic_and_fitted_on_the_fitting_split_only():
    sigs, ok = _signals()
    fit, held = slice(0, 200), slice(200, 400)
    a = fit_score("fused", sigs[fit], ok[fit], seed=3)
    b = fit_score("fused", sigs[fit], ok[fit], seed=3)
    assert a.params == b.params  # same data and seed -> the same coefficients
    assert a.params["n_fit"] == 200
    # rebuilt from its params (as from a calibration file), it scores identically
    c = get_score("fused", **a.params)
    assert np.array_equal(a.many(sigs), c.many(sigs))
    # the held-out answers do not move it; changing them changes nothing
    flipped = ok.copy()
    flipped[held] = ~flipped[held]
    assert fit_score("fused", sigs[fit], flipped[fit], seed=3).params == a.params
    # and changing the fitting labels does
    assert fit_score("fused", sigs[fit], flipped[200:400], seed=3).params != a.params
    # it separates at least as well as its best base on held-out answers
    best_base = max(auroc(get_score("token_nll").many(sigs[held]), ~ok[held]),
                    auroc(get_score("predictive_entropy").many(sigs[held]), ~ok[held]))
    assert auroc(a.many(sigs[held]), ~ok[held]) >= best_base - 0.02
    with pytest.raises(CalibrationError, match="missing its fitted parameter"):
        get_score("fused")


def test_a_memo_shares_base_scores_with_a_fused_score_and_changes_no_value(monkeypatch):
    """Scores of one answer computed with a shared memo (as the Guard does): a fused score takes its
    bases' values from the memo instead of computing them again, and every value is the same."""
    sigs, ok = _signals()
    fused = fit_score("fused", sigs[:200], ok[:200], seed=3)
    bases = [get_score(b.name, **b.params) for b in fused.bases]
    calls = []
    for cls in {type(b) for b in fused.bases}:
        original = cls.compute
        monkeypatch.setattr(cls, "compute", lambda self, sig, _o=original: calls.append(self.name) or _o(self, sig))
    for sig in sigs[:20]:
        plain = [b(sig) for b in bases] + [fused(sig)]
        calls.clear()
        memo = {}
        shared = [b(sig, memo) for b in bases] + [fused(sig, memo)]
        assert shared == plain
        assert len(calls) == len(bases)  # each base once, not again inside the fused score
        assert fused(sig, memo) == plain[-1] and len(calls) == len(bases)  # a second call is read from the memo
    # the key tells parameter sets apart
    assert get_score("token_nll", aggregation="max").memo_key != get_score("token_nll", aggregation="mean").memo_key


def test_claims_of_one_answer_share_per_token_values_and_change_no_score(monkeypatch):
    """An answer and its claims (the same signals under other content masks) share a TOKEN_MEMO: each
    per-token score computes its values once per answer, and every score is what it is without it."""
    from dataclasses import replace

    from calibration.answer_scores import TOKEN_MEMO, PerTokenScore

    sig, _ = _signals(n=1)
    sig = replace(sig[0], content=np.array([True, True, True]), grounding=np.array([0.2, 0.9, 0.5]))
    parts = [sig] + [replace(sig, content=m) for m in (np.array([True, False, False]), np.array([False, True, True]),
                                                        np.array([False, False, False]))]
    scores = [get_score(n, **p) for n, p in [("map_entropy", {}), ("map_entropy", {"aggregation": "max"}),
                                             ("map_spread", {}), ("token_nll", {}), ("token_nll", {"aggregation": "mean"}),
                                             ("predictive_entropy", {}), ("low_margin", {}), ("grounding", {})]]
    assert all(isinstance(s, PerTokenScore) for s in scores)
    want = [[s(p) for s in scores] for p in parts]
    calls = []
    original = PerTokenScore.token_values
    for cls in {type(s) for s in scores}:
        monkeypatch.setattr(cls, "token_values", lambda self, g, _o=cls.token_values: calls.append(self.name) or _o(self, g))
    shared: dict = {}
    got = [[s(p, {TOKEN_MEMO: shared}) for s in scores] for p in parts]
    assert got == want  # None for the claim without content tokens, as without the memo
    assert len(calls) == 6  # one per distinct (score, parameters other than the aggregation), not per claim
    assert original is PerTokenScore.token_values


def test_novelty_is_about_one_at_the_quantile_and_large_outside():
    sigs, ok = _signals(1200)
    nov = fit_score("novelty", sigs[:300], ok[:300], reference=sigs[300:600], rank=4, quantile=0.9)
    assert [v["name"] for v in nov.params["views"]] == ["image", "question"]
    inside = nov.many(sigs[600:])  # inputs neither the Gaussians nor the scales saw
    assert 0.8 < np.quantile(inside, 0.9) < 1.25  # each view scaled to 1 at its 0.9 quantile
    far = AnswerSignals(content=np.array([True]), features=np.full(20, 6.0))
    assert nov(far) > 3 * np.quantile(inside, 0.99)
    again = get_score("novelty", **nov.params)
    assert again(far) == pytest.approx(nov(far))
    assert again.many(sigs[600:610]) == pytest.approx(inside[:10])
    with pytest.raises(CalibrationError, match="do not split into the 5 blocks"):
        nov(AnswerSignals(content=np.array([True]), features=np.zeros(8)))


def test_novelty_names_the_view_that_sees_a_change_in_one_block():
    """Only the image tokens' spread moves (as when colour is removed): the image view sees it."""
    sigs, ok = _signals(1200, seed=3)
    nov = fit_score("novelty", sigs[:400], ok[:400], reference=sigs[400:800], rank=4)
    moved = np.stack([s.features for s in sigs[800:]])  # (400, 20)
    moved[:, 12:16] += 3.0  # image_std is block 3 of 5
    shifted = [AnswerSignals(content=np.array([True]), features=f) for f in moved]
    t = np.quantile(nov.many(sigs[400:800]), 0.995)
    assert np.mean(nov.many(shifted) >= t) > 0.9
    assert np.mean(nov.many(sigs[800:]) >= t) < 0.03
    per_view = nov.model.view_distances(moved[0])
    assert per_view["image"] > t and per_view["question"] < 1.5


def test_novelty_reads_the_older_single_gaussian_parameters():
    """A calibration from before views: one Gaussian over the first F features, lists of numbers."""
    from calibration.novelty import NoveltyModel

    sigs, ok = _signals(300)
    first = np.stack([s.features[:12] for s in sigs])  # the older layout's three blocks
    old = NoveltyModel.fit(first, rank=4)
    legacy = {"mean": old.mean.tolist(), "components": old.components.tolist(),
              "variances": old.variances.tolist(), "residual_variance": old.residual_variance}
    nov = get_score("novelty", **legacy)
    assert nov(sigs[0]) == pytest.approx(old.distance(first[0]), rel=1e-6)


def test_novelty_parameters_are_compact_and_exact_to_float32():
    import json

    from calibration.novelty import NoveltyModel, pack_array, unpack_array

    a = np.random.default_rng(0).normal(size=(64, 256))
    packed = pack_array(a)
    assert np.array_equal(unpack_array(packed), a.astype(np.float32).astype(np.float64))
    assert len(json.dumps(packed)) < 1.4 * 4 * a.size  # base64 float32, not ~20 characters a number
    with pytest.raises(CalibrationError, match="do not hold float32"):
        unpack_array({"shape": [3], "float32": packed["float32"]})
    m = NoveltyModel.fit(a, rank=8)
    back = NoveltyModel.from_params(json.loads(json.dumps(m.to_params())))
    assert back.distance(a[0]) == pytest.approx(m.distance(a[0]), rel=1e-5)
    with pytest.raises(CalibrationError, match="unknown prompt feature block"):
        get_score("novelty", views=[{"name": "v", "blocks": ["pixels"], **m.to_params()}])


def test_signals_json_round_trip():
    sigs, _ = _signals(2)
    back = AnswerSignals.from_json(sigs[0].to_json())
    assert get_score("token_nll")(back) == pytest.approx(get_score("token_nll")(sigs[0]))
    assert np.array_equal(back.content, sigs[0].content)


def test_the_aggregation_is_numpys_to_the_bit():
    """_aggregate skips numpy's wrappers for 1-D float64 values: the same bits as .mean() and .max()."""
    from calibration.answer_scores import _aggregate

    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 31, 128, 1000, 4097):
        for values in (rng.random(n), rng.normal(size=n) * 1e6, np.exp(rng.normal(size=n) * 30)):
            assert _aggregate(values, "mean") == float(values.mean())
            assert _aggregate(values, "max") == float(values.max())
    f32 = rng.random(9).astype(np.float32)  # other dtypes take numpy's own mean
    assert _aggregate(f32, "mean") == float(f32.mean())
    assert _aggregate(None, "mean") is None
