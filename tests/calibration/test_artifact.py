import json

import numpy as np
import pytest

from calibration import Calibration, ThresholdMetrics, fit_calibration
from fastrm_core.errors import CalibrationError, ConfigMismatchError


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
    assert raw["schema_version"] == 1 and raw["rule"] == "paper_midpoint"
    assert set(raw["alternatives"]) == {"density_crossing", "target_precision"}


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
    raw["schema_version"] = 2
    with pytest.raises(CalibrationError, match="schema_version 2; this version of fastrm-guard reads 1"):
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
