import numpy as np
import pytest

from calibration import fit_calibration, plot_calibration

pytest.importorskip("matplotlib")


@pytest.mark.slow
def test_plot_writes_an_image(tmp_path):
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0.3, 0.05, 80), rng.normal(0.5, 0.07, 40)]
    correct = np.r_[np.ones(80, bool), np.zeros(40, bool)]
    cal = fit_calibration(scores, correct, rule="density_crossing", grid_size=64)
    out = plot_calibration(cal, scores, correct, tmp_path / "kde.png")
    assert out == tmp_path / "kde.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    svg = plot_calibration(cal, scores, correct, tmp_path / "kde.svg", title="ShapesVQA")
    assert "ShapesVQA" in svg.read_text()
