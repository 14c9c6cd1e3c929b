"""ShapesVQA's pointing game and training-time gradient maps are fastrm_core's now: the same numbers as
the frozen copy of its former own code (legacy_grounding.py), at the precision the reports print."""

from __future__ import annotations

import numpy as np
import pytest

from shapesvqa.grounding import pointing

from .legacy_grounding import gradient_relevancy_rows as legacy_rows
from .legacy_grounding import pointing as legacy_pointing


def test_pointing_gives_the_former_numbers():
    rng = np.random.default_rng(0)
    for _ in range(300):
        g = int(rng.integers(2, 9))
        rel = rng.random((g, g)).astype(np.float32) ** 3
        masks = rng.random((3, g, g)) < 0.3
        target, others = masks[0], masks[1:].any(0) & ~masks[0]
        new, old = pointing(rel, target, others), legacy_pointing(rel, target, others)
        assert new.keys() == old.keys()
        assert (new["hit"], new["on_other"]) == (old["hit"], old["on_other"])
        assert new["mass"] == pytest.approx(old["mass"], abs=1e-6)  # fastrm_core rounds to 6 decimals
        assert new["chance"] == pytest.approx(old["chance"], abs=1e-6)


@pytest.mark.slow  # exact gradient maps of the shipped model on 48 questions, twice
def test_training_grounding_figures_are_the_former_ones():
    """The trainer's logged grounding figures (evaluate_quick) on the shipped model: what fastrm_core's
    gradient_relevancy_batch gives equals what the former row propagation gave, figure for figure."""

    from fastrm_core.loading import load_vlm
    from shapesvqa.model import ModelSpec
    from shapesvqa.train import Batcher, _predict, evaluate_quick
    from shapesvqa.world import make_example

    model, processor = load_vlm("reference")
    batcher = Batcher(processor.tokenizer, ModelSpec())
    seed, n = 999, 48
    new = evaluate_quick(model, batcher, n=24, seed=seed, grounding_n=n)

    gex = [make_example(seed + 1, i, family="attribute") for i in range(n)]  # what evaluate_quick draws
    batch = batcher(gex, with_answer=False)
    pred = _predict(model, batch)
    ok = (pred == batch["answers"]).numpy()
    rows = legacy_rows(model, batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                       batch["positions"], pred)
    img = batch["input_ids"] == model.config.image_token_id
    g = batcher.spec.grid
    figures = []
    for i, ex in enumerate(gex):
        if ok[i]:
            pm = batch["patch_masks"][i].reshape(-1, g, g)
            tgt = pm[ex.evidence[0]]
            others = np.delete(pm, ex.evidence[0], axis=0).any(0) if len(pm) > 1 else np.zeros_like(tgt)
            figures.append(legacy_pointing(rows[i][img[i]].view(g, g).numpy(), tgt, others))
    assert len(figures) > n // 2
    for key, logged in (("hit", "point"), ("chance", "chance"), ("mass", "mass")):
        assert new[logged] == round(float(np.mean([f[key] for f in figures])), 3), key
    assert all(p.grad is None for p in model.parameters())  # left as found
