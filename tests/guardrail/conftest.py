import numpy as np
import pytest
import torch

from calibration import fit_calibration
from fastrm_core import FastRMProxy, ProxyConfig
from fastrm_core.testing import blank_image


@pytest.fixture(scope="session")
def tiny_proxy():
    torch.manual_seed(0)
    return FastRMProxy(ProxyConfig(hidden_size=64, n_image_tokens=16, grid=(4, 4), head_dim=16)).eval()


def make_calibration(threshold_shift=0.0, **identity):
    """Scores of correct answers ~0.5, wrong ~0.9: paper midpoint near 0.7 (+ shift)."""
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0.5, 0.05, 40), rng.normal(0.9, 0.05, 40)]) + threshold_shift
    correct = np.array([True] * 40 + [False] * 40)
    return fit_calibration(scores, correct, entropy_normalized=True, **identity)


@pytest.fixture(scope="session")
def calibration_uncertain():
    """A threshold far below any real entropy: every answer is 'uncertain'."""
    return make_calibration(-0.6)


@pytest.fixture(scope="session")
def calibration_confident():
    """A threshold above 1 (normalised entropies are <= 1): every answer is 'confident'."""
    return make_calibration(0.5)


@pytest.fixture
def image():
    return blank_image(32, (200, 40, 40))


@pytest.fixture
def make_cal():
    return make_calibration


def word_claims(text):
    """A claim splitter for tests: every word is a claim."""
    import re

    from fastrm_common.claims import ClaimSpan

    return [ClaimSpan(m.start(), m.end(), m.group(0), "word") for m in re.finditer(r"\S+", text)]


def claim_calibration_between(values):
    """A claim-level calibration on map entropy whose threshold lies halfway between the middle two of
    ``values`` (claims' map-entropy scores), so that about half of those claims are uncertain."""
    values = sorted(values)
    lo, hi = values[len(values) // 2 - 1], values[len(values) // 2]
    assert hi > lo
    cut, gap = (lo + hi) / 2, (hi - lo) / 2
    rng = np.random.default_rng(0)  # the paper's midpoint rule puts the threshold at `cut`
    scores = np.concatenate([rng.normal(cut - gap, gap / 20, 40), rng.normal(cut + gap, gap / 20, 40)])
    cal = fit_calibration(scores, np.array([True] * 40 + [False] * 40), entropy_normalized=True)
    return cal.model_copy(update={"level": "claim"})
