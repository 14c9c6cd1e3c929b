"""Hostile calibration files (issue #18, rows 3, 4, 18): each is one CalibrationError / ConfigMismatchError."""

from __future__ import annotations

import json

import numpy as np
import pytest

from calibration import Calibration, fit_calibration
from fastrm_common.errors import CalibrationError, ConfigMismatchError


@pytest.fixture(scope="module")
def cal():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0.3, 0.05, 60), rng.normal(0.5, 0.05, 40)]
    correct = np.r_[np.ones(60, bool), np.zeros(40, bool)]
    return fit_calibration(scores, correct, model_id="tiny", model_hash="sha256:" + "a" * 64,
                           proxy_id="proxy-a", proxy_hash="sha256:" + "b" * 64, grid_size=32)


def _write(tmp_path, raw, name="cal.json"):
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return path


@pytest.mark.parametrize("bad", [True, "0.5", 1e308, -1e308])
def test_row04_bogus_threshold_values_are_rejected(cal, tmp_path, bad):
    raw = json.loads(cal.model_dump_json())
    raw["threshold"] = bad
    with pytest.raises(CalibrationError, match="threshold"):
        Calibration.load(_write(tmp_path, raw))


def test_row04_duplicate_threshold_keys_are_rejected(cal, tmp_path):
    text = cal.model_dump_json()
    text = text.replace('"threshold":', '"threshold": 1e9, "threshold":', 1)
    with pytest.raises(CalibrationError, match="duplicate key 'threshold'"):
        Calibration.load(_write(tmp_path, text))


def test_row03_proxy_id_without_proxy_hash_cannot_be_verified(cal):
    claims_other_proxy = cal.model_copy(update={"proxy_hash": None, "proxy_id": "some-other-proxy"})
    with pytest.raises(ConfigMismatchError, match="proxy"):
        claims_other_proxy.check_compatible(model_id="tiny", proxy_hash="sha256:" + "b" * 64)


def test_row03_bogus_model_hash_is_compared_with_the_weights(cal):
    with pytest.raises(ConfigMismatchError, match="model hash"):
        cal.check_compatible(model_id="tiny", model_hash="sha256:" + "c" * 64, proxy_hash="sha256:" + "b" * 64)
    cal.check_compatible(model_id="tiny", model_hash="sha256:" + "a" * 64, proxy_hash="sha256:" + "b" * 64)


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (b'{"schema_version": ' + b"9" * 5000 + b"}", "not valid JSON|digits"),
        ('{"model_id": "caf\xe9"}'.encode("latin-1"), "UTF-8"),
        (b"\xff\xfe\x00\x00", "UTF-8"),
    ],
    ids=["deep-nesting", "5000-digit-int", "latin-1", "binary"],
)
def test_row18_deep_json_huge_int_and_latin1_are_calibration_errors(tmp_path, payload, match):
    path = tmp_path / "cal.json"
    path.write_bytes(payload)
    with pytest.raises(CalibrationError, match=match):
        Calibration.load(path)


def test_row18_oversized_calibration_file_is_refused(tmp_path):
    path = tmp_path / "cal.json"
    path.write_bytes(b" " * (64 << 20) + b"{}")
    with pytest.raises(CalibrationError, match="larger than"):
        Calibration.load(path)
