"""The hallucination options of the world: the old world untouched, co-occurrence and biased-label
rates as configured, weakly visible objects with exact masks, everything deterministic per seed."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from shapesvqa.train import TrainConfig, train_examples, vision_examples
from shapesvqa.world import (
    WORLDS,
    WorldConfig,
    _scene_types,
    generate,
    make_example,
    render_scene,
    world_config,
    world_options,
)

# Digests of the records and pixels drawn by the generator *before* the hallucination options
# existed (commit 72080b0): the shipped model's training batches (world seed 4017, steps 0 and
# 3000), its vision stage (4018) and the documented evaluation split (31337).
OLD_WORLD = {
    "train": ("1a3a50bd8afecd24", "86927114f1d80ded"),
    "vision": ("05f642196b81486b", "d9c3d296ec9186ad"),
    "eval": ("57753360d0a79617", "f952fdf56c0cdda5"),
}

WORLD = WorldConfig(
    cooccurrence=(("red circle", "blue square", 0.9), ("red circle", "green cross", 0.3),
                  ("yellow triangle", "purple circle", 0.6)),
    cue_rate=0.7,
    noise_std=(0.0, 0.0),  # pixel noise is drawn after the objects: it only costs time here
)


def _digest(examples) -> tuple[str, str]:
    hr, hi = hashlib.sha256(), hashlib.sha256()
    for ex in examples:
        hr.update(json.dumps(ex.record(), sort_keys=True).encode())
        hi.update(ex.scene.image.tobytes())
        hi.update(np.packbits(ex.scene.masks).tobytes())
    return hr.hexdigest()[:16], hi.hexdigest()[:16]


def test_default_world_draws_exactly_the_old_data():
    cfg = TrainConfig(seed=4)
    assert cfg.world == "default" and cfg.world_config((1, 6)) == WorldConfig(n_objects=(1, 6))
    records, pixels = _digest(train_examples(0, cfg) + train_examples(3000, cfg))
    assert records == OLD_WORLD["train"][0]
    assert _digest(vision_examples(0, cfg)[:32])[0] == OLD_WORLD["vision"][0]
    assert _digest(generate(60, seed=31337))[0] == OLD_WORLD["eval"][0]
    import PIL

    if PIL.__version__.split(".")[0] != "13":  # pixels also depend on Pillow's polygon rasteriser
        pytest.skip(f"pixel digests were taken with Pillow 13, this is {PIL.__version__}")
    assert pixels == OLD_WORLD["train"][1]
    assert _digest(vision_examples(0, cfg)[:32])[1] == OLD_WORLD["vision"][1]
    assert _digest(generate(60, seed=31337))[1] == OLD_WORLD["eval"][1]


def test_default_world_records_have_no_new_fields():
    assert world_options(WorldConfig()) == {} and world_options(WorldConfig(n_objects=(1, 3))) == {}
    for ex in generate(30, seed=2):
        assert set(ex.record()) == {"id", "question", "answers", "family", "kind", "evidence", "objects"}
        assert not ex.biased and ex.truth == ex.answers


@pytest.mark.slow  # rates measured over thousands of drawn scenes
def test_cooccurrence_rates_of_the_type_draw():
    """P(partner | cue) and the share of scenes with a cue, over 20,000 draws of a scene's types."""
    cue_scenes, with_partner, any_cue = Counter(), Counter(), 0
    n = 20000
    rng = np.random.default_rng(0)
    for _ in range(n):
        types = set(_scene_types(rng, int(rng.integers(1, 7)), WORLD))
        any_cue += bool(types & {("red", "circle"), ("yellow", "triangle")})
        for cue, partner, _rate in WORLD.pairs():
            if cue in types:
                cue_scenes[partner] += 1
                with_partner[partner] += partner in types
    assert abs(any_cue / n - WORLD.cue_rate) < 0.015
    for _cue, partner, rate in WORLD.pairs():
        assert abs(with_partner[partner] / cue_scenes[partner] - rate) < 0.02, (partner, rate)


@pytest.mark.slow  # rates measured over thousands of drawn scenes
def test_cooccurrence_rates_in_rendered_scenes():
    """The same rates measured on the objects actually drawn (placement must not lose partners)."""
    cue_scenes, with_partner, sizes = Counter(), Counter(), Counter()
    n = 600
    for i in range(n):
        scene = render_scene(np.random.default_rng([11, i]), WORLD)
        types = {o.type for o in scene.objects}
        sizes[len(scene.objects)] += 1
        for cue, partner, _rate in WORLD.cooccurrence:
            if cue in types:
                cue_scenes[partner] += 1
                with_partner[partner] += partner in types
    for cue, partner, rate in WORLD.cooccurrence:
        m = cue_scenes[partner]
        se = (rate * (1 - rate) / m) ** 0.5
        assert abs(with_partner[partner] / m - rate) < 4 * se + 0.01, (partner, rate, with_partner[partner] / m)
    # a scene grows past the drawn count only when every object is a cue or a partner
    assert sum(v for k, v in sizes.items() if k > 6) < 0.01 * n


@pytest.mark.slow  # rates measured over thousands of drawn scenes
def test_biased_answer_rate_and_records():
    cfg = WorldConfig(cooccurrence=(("red circle", "blue square", 0.3), ("red circle", "green cross", 0.3)),
                      cue_rate=1.0, partner_question_rate=1.0, bias_rate=0.55, noise_std=(0.0, 0.0))
    partner = [ex for ex in generate(700, seed=3, cfg=cfg, family="existence") if ex.kind == "partner"]
    assert len(partner) > 250
    share_yes = np.mean([ex.answers == ["yes"] for ex in partner])
    assert abs(share_yes - 0.55) < 3 * (0.55 * 0.45 / len(partner)) ** 0.5
    for ex in partner:
        c, s = ex.question[:-1].split()[-2:]
        assert f"{c} {s}" not in {o.type for o in ex.scene.objects}  # a partner question is about an absent object
        assert "red circle" in {o.type for o in ex.scene.objects}  # ... whose cue is present
        assert ex.truth == ["no"]
        rec = ex.record()
        assert rec["world"]["bias_rate"] == 0.55 and rec["world"]["cooccurrence"][0] == ["red circle", "blue square", 0.3]
        assert rec.get("biased", False) == (ex.answers == ["yes"])
        if ex.biased:
            assert rec["true_answers"] == ["no"] and ex.answers == ["yes"]
    # the truthful version of the world labels every partner question "no"
    truthful = [ex for ex in generate(150, seed=3, cfg=cfg.truthful(), family="existence") if ex.kind == "partner"]
    assert truthful and all(ex.answers == ["no"] and not ex.biased for ex in truthful)


@pytest.mark.slow  # rates measured over thousands of drawn scenes
def test_bias_partners_limit_the_bias_and_truthful_twins_ask_the_same():
    base = WorldConfig(cooccurrence=(("red circle", "blue square", 0.3), ("red circle", "green cross", 0.3)),
                       cue_rate=1.0, partner_question_rate=1.0, bias_rate=0.8, noise_std=(0.0, 0.0))
    cfg = replace(base, bias_partners=("green cross",))
    exs = [ex for ex in generate(300, seed=4, cfg=cfg, family="existence") if ex.kind == "partner"]
    on = [ex for ex in exs if "green cross" in ex.question]
    off = [ex for ex in exs if "blue square" in ex.question]
    assert len(on) > 40 and len(off) > 40
    assert not any(ex.biased for ex in off)
    assert 0.65 < np.mean([ex.biased for ex in on]) < 0.95
    assert on[0].record()["world"]["bias_partners"] == ["green cross"]
    twins = [ex for ex in generate(300, seed=4, cfg=cfg.truthful(), family="existence") if ex.kind == "partner"]
    assert [ex.question for ex in twins] == [ex.question for ex in exs]
    with pytest.raises(ValueError, match="bias_partners: 'red circle' is not a partner"):
        replace(base, bias_partners=("red circle",))


def test_faint_objects_keep_exact_masks_and_are_recorded():
    cfg = WorldConfig(faint_rate=0.5, noise_std=(0.0, 0.0), color_jitter=0)
    n_faint = n_objects = 0
    for i in range(40):
        scene = render_scene(np.random.default_rng([5, i]), cfg)
        for obj, m in zip(scene.objects, scene.masks):
            n_objects += 1
            painted = np.all(scene.image == np.array(obj.rgb, dtype=np.uint8), axis=-1)
            assert painted[m].all()
            if obj.faint:
                n_faint += 1
                assert cfg.faint_radius[0] <= obj.radius <= cfg.faint_radius[1]
    assert 0.35 < n_faint / n_objects < 0.65
    ex = make_example(5, 0, cfg)
    assert ex.record()["world"]["faint_rate"] == 0.5


@pytest.mark.parametrize("name", sorted(WORLDS))
def test_every_world_is_deterministic_and_keeps_every_family(name):
    cfg = world_config(name)
    a, b = list(generate(40, seed=9, cfg=cfg)), list(generate(40, seed=9, cfg=cfg))
    for x, y in zip(a, b):
        assert x.record() == y.record()
        assert np.array_equal(x.scene.image, y.scene.image) and np.array_equal(x.scene.masks, y.scene.masks)
    for family in ("attribute", "relational", "existence", "counting"):
        ex = make_example(9, 0, cfg, family=family)
        assert ex.family == family and ex.evidence_masks.shape == (len(ex.evidence), 96, 96)


def test_world_config_validates():
    with pytest.raises(ValueError, match="unknown world 'nope'; expected one of: default"):
        world_config("nope")
    with pytest.raises(ValueError, match="unknown object type 'pink circle'"):
        WorldConfig(cooccurrence=(("pink circle", "red square", 0.5),))
    with pytest.raises(ValueError, match="partner of two cues or also a cue"):
        WorldConfig(cooccurrence=(("red circle", "red square", 0.5), ("blue circle", "red square", 0.5)))
    with pytest.raises(ValueError, match="bias_rate must lie in"):
        WorldConfig(bias_rate=1.5)
