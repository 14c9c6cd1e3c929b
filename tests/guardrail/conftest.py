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
