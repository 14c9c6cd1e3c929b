"""Generator: determinism, masks equal drawn pixels, answers correct by construction."""

from __future__ import annotations

import re

import numpy as np
import pytest

from shapesvqa.world import COLORS, FAMILIES, PLURALS, SHAPES, WorldConfig, generate, make_example, render_scene


def test_deterministic_per_seed_and_index():
    a = list(generate(20, seed=3))
    b = list(generate(20, seed=3))
    for x, y in zip(a, b):
        assert x.question == y.question and x.answers == y.answers and x.evidence == y.evidence
        assert np.array_equal(x.scene.image, y.scene.image)
        assert np.array_equal(x.scene.masks, y.scene.masks)
    # an example does not depend on the ones before it
    c = make_example(3, 7)
    assert np.array_equal(c.scene.image, a[7].scene.image) and c.question == a[7].question
    # another seed is another split
    d = list(generate(20, seed=4))
    assert any(not np.array_equal(x.scene.image, y.scene.image) for x, y in zip(a, d))


def test_masks_match_drawn_pixels():
    cfg = WorldConfig(noise_std=(0.0, 0.0), color_jitter=0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        scene = render_scene(rng, cfg)
        masks = scene.masks
        assert masks.dtype == bool and masks.shape[1:] == scene.image.shape[:2]
        # masks are disjoint and non-empty
        assert (masks.sum(0) <= 1).all()
        assert all(m.any() for m in masks)
        for obj, m in zip(scene.objects, masks):
            painted = np.all(scene.image == np.array(obj.rgb, dtype=np.uint8), axis=-1)
            # every mask pixel carries the object's colour; no pixel outside any mask of that colour
            assert painted[m].all()
            other = masks.any(0) & ~m
            same_color_elsewhere = painted & ~m & ~other
            assert not same_color_elsewhere.any()


def _answer_from_scene(ex) -> str:
    objs = ex.scene.objects
    q = ex.question
    if m := re.fullmatch(r"What color is the (\w+)\?", q):
        (o,) = [o for o in objs if o.shape == m[1]]
        return o.color
    if m := re.fullmatch(r"What shape is the (\w+) object\?", q):
        (o,) = [o for o in objs if o.color == m[1]]
        return o.shape
    if m := re.fullmatch(r"What (color|shape) is the object (left of|right of|above|below) the (\w+)( object)?\?", q):
        attr, rel, name = m[1], m[2].split()[0], m[3]
        (ref,) = [o for o in objs if (o.color if m[4] else o.shape) == name]
        margin = WorldConfig().relation_margin
        d = {"left": lambda t: ref.cx - t.cx, "right": lambda t: t.cx - ref.cx,
             "above": lambda t: ref.cy - t.cy, "below": lambda t: t.cy - ref.cy}[rel]
        others = [t for t in objs if t is not ref]
        side = [t for t in others if d(t) > margin]
        assert len(side) == 1 and not [t for t in others if abs(d(t)) <= margin]
        return getattr(side[0], attr)
    if m := re.fullmatch(r"Is there an? (\w+) (\w+)\?", q):
        return "yes" if any(o.color == m[1] and o.shape == m[2] for o in objs) else "no"
    if m := re.fullmatch(r"How many (\w+) are there\?", q):
        shape = {v: k for k, v in PLURALS.items()}[m[1]]
        return str(sum(o.shape == shape for o in objs))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", q):
        return str(sum(o.color == m[1] for o in objs))
    raise AssertionError(f"unparsed question {q!r}")


def test_answers_correct_by_construction():
    seen = set()
    for ex in generate(400, seed=11):
        assert ex.answers == [_answer_from_scene(ex)], ex.question
        assert ex.family in FAMILIES
        seen.add((ex.family, ex.kind))
        if ex.family == "existence" and ex.kind != "positive":
            c, s = ex.question[:-1].split()[-2:]
            colors = {o.color for o in ex.scene.objects}
            shapes = {o.shape for o in ex.scene.objects}
            if ex.kind == "adversarial":
                assert c in colors and s in shapes
            if ex.kind == "popular":
                assert c not in colors and s in shapes
        if ex.family in ("attribute", "relational"):
            q = ex.scene.objects[ex.evidence[0]]
            assert ex.answers[0] in (q.color, q.shape)
    assert {f for f, _ in seen} == set(FAMILIES)
    assert {k for f, k in seen if f == "existence"} == {"positive", "random", "popular", "adversarial"}


@pytest.mark.parametrize("family", FAMILIES)
def test_forced_family_and_evidence_masks(family):
    ex = make_example(5, 0, family=family)
    assert ex.family == family
    assert ex.evidence_masks.shape == (len(ex.evidence), 96, 96)
    assert ex.image.size == (96, 96)
    assert set(ex.answers[0].split()) <= set(COLORS) | set(SHAPES) | {"yes", "no"} | {str(i) for i in range(7)}
