"""Grounding measurements: object masks on the patch grid and the pointing game.

Patch membership rule (used by every pointing figure): a patch belongs to an object when the
object covers at least ``PATCH_COVERAGE`` (30%) of the patch's pixels; an object that reaches that
share on no patch keeps its single best-covered patch, so every object owns at least one patch.

The pointing game's hit, mass and chance are :func:`fastrm_core.distill.metrics.pointing`'s
(one definition for distillation and ShapesVQA); this module adds ``on_other``. Gradient
relevancy maps (Chefer et al. 2021) come from :func:`fastrm_core.relevancy.gradient_relevancy_batch`.
"""

from __future__ import annotations

import numpy as np

from .world import patch_coverage

__all__ = [
    "PATCH_COVERAGE",
    "object_patches",
    "pointing",
]

PATCH_COVERAGE = 0.3


def object_patches(masks: np.ndarray, patch: int, threshold: float = PATCH_COVERAGE) -> np.ndarray:
    """(K, H, W) bool pixel masks -> (K, g, g) bool patch masks (see the module docstring for the rule)."""
    cov = patch_coverage(masks, patch)  # (K, g, g)
    out = cov >= threshold
    for k in range(cov.shape[0]):
        if not out[k].any() and cov[k].max() > 0:
            out[k].flat[int(cov[k].argmax())] = True
    return out


def pointing(rel_map: np.ndarray, target: np.ndarray, others: np.ndarray) -> dict:
    """Pointing-game figures of one map.

    ``rel_map``: (g, g) non-negative relevancy; ``target``: (g, g) bool patches of the queried
    object; ``others``: (g, g) bool patches of every other object. Returns ``hit`` (argmax on the
    target), ``on_other`` (argmax on another object and not on the target), ``chance`` (target's
    share of patches) and ``mass`` (share of the map's non-negative mass on the target); hit, mass
    and chance are :func:`fastrm_core.distill.metrics.pointing`'s (mass and chance to 6 decimals).
    """
    from fastrm_core.distill.metrics import pointing as core_pointing  # the distillation package loads on use

    core = core_pointing(rel_map, target)
    argmax = int(np.argmax(np.clip(np.asarray(rel_map, dtype=np.float64).reshape(-1), 0, None)))  # core's argmax
    return {
        "hit": core["hit"],
        "on_other": bool(np.asarray(others).reshape(-1)[argmax]) and not core["hit"],
        "chance": core["chance"],
        "mass": core["mass"],
    }
