"""Evidence scores (issue 28): grounding consistency from what the maps point at, and the hidden-state
probe; shapes (one region, several regions, left-padded batches), determinism, fitting split only,
tampered or foreign weights refused; on LLaVA and on a second family (Qwen2-VL)."""

import numpy as np
import pytest
import torch

from calibration import AnswerSignals, auroc, get_score
from fastrm_common.errors import CalibrationError, ConfigMismatchError
from fastrm_core import FastRMProxy, ProxyConfig, capture, get_adapter
from guardrail import Guard
from guardrail.answers.pipeline import check_calibration_identity, evidence_signals
from guardrail.calibrate import ScoredAnswer, calibrate_scores

from ..fastrm_core.families.test_qwen2_vl import two_image_batch


def _by_hand(cap, row):
    """Grounding of every token of ``row``, written out: cos(sum_j m_j H_j / sum_j m_j, h_t)."""
    maps = cap.row_maps(row).double()  # (T, N_row)
    images = cap.row_image_states(row).double().cpu()  # (N_row, D)
    queries = cap.queries[row].double().cpu()  # (T, D)
    ev = (maps / maps.sum(-1, keepdim=True)) @ images
    return torch.nn.functional.cosine_similarity(ev, queries, dim=-1).numpy()


def test_grounding_on_a_left_padded_batch_equals_the_formula_and_each_row_alone(tiny_llava, tiny_proxy, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor, questions=("What color is the circle?", "Is there a small red square here?"))
    with torch.no_grad(), capture(model, tiny_proxy, keep_states=True) as cap:
        model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    ev = evidence_signals(cap)
    assert ev["grounding"].shape == (2, 4) and ev["token_states"].shape == ev["evidence"].shape == (2, 4, 64)
    for b in range(2):
        np.testing.assert_allclose(ev["grounding"][b], _by_hand(cap, b), atol=1e-5)
        alone = {k: v[b:b + 1] for k, v in inputs.items()}
        keep = alone["attention_mask"][0].bool()
        alone = {k: (v[:, keep] if k in ("input_ids", "attention_mask") else v) for k, v in alone.items()}
        with torch.no_grad(), capture(model, tiny_proxy, keep_states=True) as cap1:
            model.generate(**alone, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        np.testing.assert_allclose(evidence_signals(cap1)["grounding"][0], ev["grounding"][b], atol=1e-4)


def test_grounding_is_deterministic_and_reported_by_the_guard(tiny_llava, tiny_proxy, calibration_uncertain, image):
    model, processor = tiny_llava
    guard = Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain)
    a = guard.generate(image, "What color?", max_new_tokens=4, min_new_tokens=4)
    b = guard.generate(image, "What color?", max_new_tokens=4, min_new_tokens=4)
    assert a.scores["grounding"] == b.scores["grounding"] is not None
    assert 0.0 <= a.scores["grounding"] <= 2.0  # 1 - cosine


def test_grounding_over_several_regions_of_a_second_family(tiny_qwen2_vl):
    model, processor = tiny_qwen2_vl
    torch.manual_seed(0)
    proxy = FastRMProxy(ProxyConfig(hidden_size=64)).eval()
    inputs = two_image_batch(model, processor)  # row 0: two pictures, row 1: one; left-padded
    with torch.no_grad(), capture(model, proxy, keep_states=True, adapter=get_adapter(model)) as cap:
        model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    ev = evidence_signals(cap)
    assert cap.lengths[0] != cap.lengths[1]  # rows of different numbers of image tokens
    for b in range(2):
        np.testing.assert_allclose(ev["grounding"][b], _by_hand(cap, b), atol=1e-5)


def test_the_guard_scores_grounding_on_qwen2_vl(tiny_qwen2_vl):
    from fastrm_core.testing import blank_image

    model, processor = tiny_qwen2_vl
    torch.manual_seed(0)
    guard = Guard(model, processor, proxy=FastRMProxy(ProxyConfig(hidden_size=64)).eval())
    r = guard.generate(blank_image(64, (200, 40, 40)), "what color?", max_new_tokens=3, min_new_tokens=3)
    assert r.error is None and np.isfinite(r.scores["grounding"])


def _probe_rows(n=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    rows = []
    for i in range(n):
        wrong = bool(rng.random() < 0.3)
        states = rng.normal(size=(3, d)) + (0.8 if wrong else -0.8) * direction[None, :] / np.linalg.norm(direction)
        sig = AnswerSignals(content=np.array([True, True, False]), token_states=states.astype(np.float32),
                            evidence=rng.normal(size=(3, d)).astype(np.float32), margin=rng.random(3))
        rows.append(ScoredAnswer(id=str(i), answer="a", correct=not wrong, signals=sig))
    return rows


def test_the_probe_is_fitted_on_the_fitting_split_only_and_rebuilds_from_its_params():
    rows = _probe_rows()
    cal, side = calibrate_scores(rows, score="state_probe", rule="paper_midpoint", command="test")
    params = cal.score.params
    assert params["n_fit"] == side["n_fit"] < len(rows)
    # the held-out answers do not shape the probe: change them all, the fitted weights stay
    altered = [ScoredAnswer(r.id, r.answer, r.correct, AnswerSignals(
        content=r.signals.content, token_states=r.signals.token_states * 0 + 5, evidence=r.signals.evidence,
        margin=r.signals.margin)) for r in rows]
    from guardrail.calibrate import fit_heldout_split

    fit_idx, held_idx = fit_heldout_split(rows, np.array([r.correct for r in rows]), 0.5, 0)
    mixed = [rows[i] if i in set(fit_idx) else altered[i] for i in range(len(rows))]
    cal2, _ = calibrate_scores(mixed, score="state_probe", rule="paper_midpoint", command="test")
    assert cal2.score.params["sha256"] == params["sha256"]
    probe = get_score("state_probe", **params)
    held = [rows[i] for i in held_idx]
    values = probe.many([r.signals for r in held])
    assert auroc(values, np.array([not r.correct for r in held])) > 0.85
    assert get_score("state_probe", **params).many([r.signals for r in held]).tolist() == values.tolist()
    table = {t["label"]: t["auroc"] for t in side["score_table"]}
    assert table["state_probe"] > 0.85 and "state_probe(with evidence)" in table


def test_tampered_or_foreign_probe_weights_are_refused(tiny_llava, tiny_proxy):
    rows = _probe_rows()
    cal, _ = calibrate_scores(rows, score="state_probe", rule="paper_midpoint", command="test")
    params = dict(cal.score.params)
    bad = dict(params, weights_safetensors=params["weights_safetensors"][:-8] + "AAAAAAA=")
    with pytest.raises(CalibrationError, match="SHA-256|unreadable"):
        get_score("state_probe", **bad)
    probe = get_score("state_probe", **params)
    other = AnswerSignals(content=np.array([True]), token_states=np.ones((1, 32), np.float32))
    with pytest.raises(CalibrationError, match="another model's hidden size"):
        probe(other)
    # a calibration holding the probe, fitted for another model's weights, is refused by the Guard's check
    model, processor = tiny_llava
    foreign = cal.model_copy(update={"model_id": "tiny", "model_hash": "0" * 64, "proxy_hash": tiny_proxy.fingerprint()})
    with pytest.raises(ConfigMismatchError):
        check_calibration_identity(foreign, get_adapter(model), model, tiny_proxy.fingerprint())


def test_signals_with_states_round_trip_through_json():
    sig = _probe_rows(n=1)[0].signals
    back = AnswerSignals.from_json(sig.to_json())
    np.testing.assert_allclose(back.token_states, sig.token_states, atol=1e-2)  # stored as float16
    assert back.evidence.shape == sig.evidence.shape
    plain = AnswerSignals(content=np.array([True]), margin=np.array([0.5]))
    assert "token_states" not in plain.to_json() and "grounding" not in plain.to_json()
