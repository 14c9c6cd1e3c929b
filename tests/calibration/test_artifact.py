import json

import numpy as np
import pytest

from calibration import Calibration, ThresholdMetrics, fit_calibration
from fastrm_common.errors import CalibrationError, ConfigMismatchError


@pytest.fixture(scope="module")
def cal():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0.3, 0.05, 60), rng.normal(0.5, 0.05, 40)]
    correct = np.r_[np.ones(60, bool), np.zeros(40, bool)]
    return fit_calibration(
        scores[::2],
        correct[::2],
        heldout=(scores[1::2], correct[1::2]),
        model_id="llava-tiny",
        model_hash="m" * 8,
        proxy_id="proxy-tiny",
        dataset_hash="d" * 64,
        command="guardrail calibrate --data shapes.jsonl",
        metadata={"seed": 0},
        grid_size=32,
    )


def test_json_round_trip(cal, tmp_path):
    path = cal.save(tmp_path / "calibration.json")
    loaded = Calibration.load(path)
    assert loaded == cal
    assert loaded.verdict(0.2) == "confident"
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == 2 and raw["rule"] == "paper_midpoint"
    assert raw["score"] == {"name": "map_entropy", "params": {"aggregation": "mean", "normalized": True}}
    assert set(raw["alternatives"]) == {"density_crossing", "guaranteed_precision"}


def test_verdict_boundary_and_nan(cal):
    assert cal.verdict(cal.threshold) == "uncertain"
    assert cal.verdict(np.float32(cal.threshold - 0.01)) == "confident"
    with pytest.raises(CalibrationError, match="non-finite"):
        cal.verdict(float("nan"))


def _write(tmp_path, raw):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    return path


def test_unknown_field_is_rejected_with_its_name(cal, tmp_path):
    raw = json.loads(cal.model_dump_json())
    raw["treshold"] = 0.4
    with pytest.raises(CalibrationError, match=r"bad\.json.*treshold: Extra inputs are not permitted"):
        Calibration.load(_write(tmp_path, raw))
    raw = json.loads(cal.model_dump_json())
    raw["fit_metrics"]["precison_confident"] = 0.9
    with pytest.raises(CalibrationError, match=r"fit_metrics\.precison_confident: Extra inputs"):
        Calibration.load(_write(tmp_path, raw))


def test_invalid_values_are_rejected(cal, tmp_path):
    raw = json.loads(cal.model_dump_json())
    raw["aggregation"] = "median"
    with pytest.raises(CalibrationError, match="aggregation: Input should be 'mean', 'max' or 'first'"):
        Calibration.load(_write(tmp_path, raw))
    raw = json.loads(cal.model_dump_json())
    del raw["threshold"]
    with pytest.raises(CalibrationError, match="threshold: Field required"):
        Calibration.load(_write(tmp_path, raw))
    raw = json.loads(cal.model_dump_json())
    raw["schema_version"] = 3
    with pytest.raises(CalibrationError, match="schema_version 3; this version of fastrm-guard reads 1, 2"):
        Calibration.load(_write(tmp_path, raw))
    raw = json.loads(cal.model_dump_json())
    raw["fit_metrics"]["tp"] += 1
    with pytest.raises(CalibrationError, match="fit_metrics"):
        Calibration.load(_write(tmp_path, raw))


def test_unreadable_files(tmp_path):
    with pytest.raises(CalibrationError, match="cannot read calibration file .*missing.json"):
        Calibration.load(tmp_path / "missing.json")
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(CalibrationError, match=r"broken\.json.*not valid JSON \(line 1"):
        Calibration.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(CalibrationError, match="must hold a JSON object"):
        Calibration.load(path)


def test_hash_mismatch_message_names_what_is_compared_and_each_side(cal):
    # the Guard knows the proxy in use by its hash only: the message must not print "(None)" for its name
    cal = cal.model_copy(update={"proxy_hash": "sha256:aaaa"})
    with pytest.raises(ConfigMismatchError) as info:
        cal.check_compatible(proxy_hash="sha256:bbbb")
    message = str(info.value)
    assert "None" not in message
    assert "it records proxy hash sha256:aaaa (proxy 'proxy-tiny')" in message
    assert "the proxy in use has proxy hash sha256:bbbb." in message
    assert "covers the proxy's config and weights" in message and "re-run `guardrail calibrate`" in message


def test_check_compatible(cal):
    cal.check_compatible(model_id="llava-tiny", proxy_id="proxy-tiny")
    cal.check_compatible()  # nothing known, nothing checked
    # the same weights under another path: the hash decides
    cal.check_compatible(model_id="/elsewhere/llava-tiny", model_hash="m" * 8)
    with pytest.raises(ConfigMismatchError, match="fitted for the model 'llava-tiny' but the model in use is 'other'"):
        cal.check_compatible(model_id="other")
    with pytest.raises(ConfigMismatchError, match="proxy"):
        cal.check_compatible(proxy_id="other-proxy")
    with pytest.raises(ConfigMismatchError, match="model hash mmmmmmmm"):
        cal.check_compatible(model_id="llava-tiny", model_hash="x" * 8)
    # no recorded proxy hash: the id is compared
    cal.check_compatible(proxy_id="proxy-tiny", proxy_hash="anything")


def test_models_are_strict():
    with pytest.raises(ValueError, match="tp \\+ fp \\+ tn \\+ fn"):
        ThresholdMetrics(
            threshold=0.1, n=3, n_correct=1, n_wrong=1, accuracy=0.5, auroc=None, share_confident=0.5,
            precision_confident=None, precision_uncertain=None, recall_confident=None, tp=1, fp=0, tn=1, fn=0,
        )


def test_nan_and_infinite_values_are_rejected(cal):
    with pytest.raises(ValueError, match="threshold"):
        Calibration.model_validate({**cal.model_dump(), "threshold": float("nan")})
    with pytest.raises(ValueError, match="threshold"):
        Calibration.model_validate({**cal.model_dump(), "threshold": float("inf")})


def test_version_1_file_loads_as_map_entropy_with_the_same_verdicts(tmp_path):
    """A file written by the previous release (schema 1, no score field, target_precision rule allowed)."""
    from calibration import get_score
    from calibration.answer_scores import AnswerSignals

    shipped_v1 = {
        "schema_version": 1, "model_id": "m", "proxy_id": "p", "rule": "target_precision", "threshold": 0.42,
        "target_precision": 0.9, "aggregation": "max", "entropy_normalized": True,
        "fit_metrics": {"threshold": 0.42, "n": 4, "n_correct": 3, "n_wrong": 1, "accuracy": 0.75, "auroc": 1.0,
                        "share_confident": 0.5, "precision_confident": 1.0, "precision_uncertain": 0.5,
                        "recall_confident": 0.667, "tp": 2, "fp": 0, "tn": 1, "fn": 1},
        "kde": {"xs": [0.0, 1.0], "density_correct": [1.0, 0.0], "density_wrong": [0.0, 1.0], "prior_correct": 0.75,
                "mean_correct": 0.3, "mean_wrong": 0.6, "std_correct": 0.1, "std_wrong": 0.1,
                "bandwidth_correct": 0.1, "bandwidth_wrong": 0.1},
        "alternatives": {"paper_midpoint": {"rule": "paper_midpoint", "threshold": 0.45}},
    }
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(shipped_v1))
    cal = Calibration.load(path)
    assert cal.score.name == "map_entropy" and cal.score.params == {"aggregation": "max", "normalized": True}
    for s in (0.1, 0.4199, 0.42, 0.9):
        assert cal.verdict(s) == ("confident" if s < 0.42 else "uncertain")
    # the recorded score rebuilds and gives the v1 score: max of normalised entropies over content tokens
    sig = AnswerSignals(content=np.array([True, True, False]), map_entropy=np.log(64) * np.array([0.2, 0.5, 0.9]),
                        n_patches=64)
    assert get_score(cal.score.name, **cal.score.params)(sig) == pytest.approx(0.5)
    # saving writes version 2 and loads back equal
    again = Calibration.load(cal.save(tmp_path / "v2.json"))
    assert again == cal and json.loads((tmp_path / "v2.json").read_text())["schema_version"] == 2


def test_novelty_gate_and_groups(cal):
    from calibration import GroupThresholds, NoveltyGate, ScoreSpec

    gated = cal.model_copy(update={
        "novelty_gate": NoveltyGate(score=ScoreSpec(name="novelty"), threshold=2.0, quantile=0.99),
        "groups": GroupThresholds(key="family", min_per_class=5, thresholds={"counting": 0.25, "hard": None}),
    })
    low = cal.threshold - 0.01
    assert gated.verdict(low, novelty=1.0) == "confident"
    assert gated.verdict(low, novelty=2.0) == "uncertain"  # an input unlike the calibration data
    with pytest.raises(CalibrationError, match="novelty"):
        gated.verdict(low)
    assert gated.verdict(0.26, novelty=1.0, group="counting") == "uncertain"  # the group's own threshold
    assert gated.verdict(0.24, novelty=1.0, group="counting") == "confident"
    assert gated.verdict(0.0, novelty=1.0, group="hard") == "uncertain"  # a refused group: nothing confident
    assert gated.verdict(low, novelty=1.0, group="unseen") == "confident"  # fallback to the global threshold
