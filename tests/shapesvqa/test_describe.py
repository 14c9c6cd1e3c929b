"""The describe family (issue 26): grammar, ground truth per mention, biased descriptions, CHAIR/Cover."""

import json

import numpy as np
import pytest

from shapesvqa.world import (
    COLORS,
    DESCRIBE,
    DESCRIBE_QUESTIONS,
    SHAPES,
    chair_metrics,
    describe_objects,
    label_description,
    make_example,
    world_config,
)

WORLD = world_config("cooccur-describe")


def _examples(n, seed=5, cfg=WORLD):
    return [make_example(seed, i, cfg, family=DESCRIBE) for i in range(n)]


def test_grammar_lists_every_object_in_the_documented_order():
    for ex in _examples(60, cfg=WORLD.truthful()):
        assert ex.question in DESCRIBE_QUESTIONS and ex.family == DESCRIBE and not ex.biased
        text = ex.answers[0]
        assert text.endswith(".") and text.count(" and ") == (1 if len(ex.scene.objects) > 1 else 0)
        objs = ex.scene.objects
        # every object exactly once, each mention pointing at its object
        assert sorted(m.object for m in ex.mentions) == list(range(len(objs)))
        for m in ex.mentions:
            o = objs[m.object]
            assert text[m.start:m.end] == m.text == f"a {o.size} {o.color} {o.shape}"
            assert m.label == "correct"
        keys = [(list(COLORS).index(m.color), SHAPES.index(m.shape), 0 if m.size == "large" else 1) for m in ex.mentions]
        assert keys == sorted(keys)  # colour, then shape, then large before small


def test_describe_objects_spans_and_joins():
    assert describe_objects([("small", "red", "circle")]) == ("a small red circle.", [(0, 18)])
    text, spans = describe_objects([("large", "red", "circle"), ("small", "blue", "square"), ("large", "green", "cross")])
    assert text == "a large red circle, a small blue square and a large green cross."
    assert [text[a:b] for a, b in spans] == ["a large red circle", "a small blue square", "a large green cross"]


def test_every_mention_maps_to_the_right_object_or_to_none():
    for ex in _examples(120):
        present = {(o.color, o.shape) for o in ex.scene.objects}
        for m in ex.mentions:
            assert ex.answers[0][m.start:m.end] == m.text
            if m.label == "invented":
                assert m.object is None and (m.color, m.shape) not in present
            else:
                o = ex.scene.objects[m.object]
                assert (o.color, o.shape, o.size) == (m.color, m.shape, m.size)
        if ex.biased:
            assert ex.true_answers[0] != ex.answers[0]
            # the true description is the biased one without its invented mentions
            real = [m.text for m in ex.mentions if m.label != "invented"]
            assert all(r in ex.true_answers[0] for r in real)


def test_records_export_mentions_with_spans_and_labels():
    ex = next(e for e in _examples(80) if e.biased)
    rec = json.loads(json.dumps(ex.record()))
    assert rec["family"] == "describe" and rec["biased"] is True
    assert rec["world"]["describe_rate"] == 0.2 and rec["world"]["describe_bias_rate"] == 0.8
    for m in rec["mentions"]:
        assert rec["answers"][0][m["start"]:m["end"]] == m["text"]
        assert m["label"] in ("correct", "invented")
    assert any(m["label"] == "invented" and m["object"] is None for m in rec["mentions"])


def test_biased_description_rate_equals_its_configuration():
    """Among eligible (cue present, biased partner absent) pairs, the share mentioned is describe_bias_rate."""
    cfg = world_config("cooccur-describe", describe_bias_rate=0.6, noise_std=(0.0, 0.0))
    eligible = mentioned = 0
    for ex in _examples(1500, seed=11, cfg=cfg):
        present = {o.type for o in ex.scene.objects}
        invented = {m.type for m in ex.mentions if m.label == "invented"}
        for cue, partner, _ in cfg.cooccurrence:
            if cue in present and partner not in present and partner in cfg.bias_partners:
                eligible += 1
                mentioned += partner in invented
    share = mentioned / eligible
    assert eligible > 300
    assert abs(share - 0.6) < 3 * (0.6 * 0.4 / eligible) ** 0.5


def test_truthful_twin_asks_the_same_and_has_no_invention():
    for biased, true in zip(_examples(80), _examples(80, cfg=WORLD.truthful())):
        assert biased.question == true.question
        np.testing.assert_array_equal(biased.scene.image, true.scene.image)
        assert true.answers[0] == biased.truth[0]
        assert all(m.label == "correct" for m in true.mentions)


def test_deterministic_per_seed():
    a, b = _examples(30, seed=9), _examples(30, seed=9)
    assert [e.record() for e in a] == [e.record() for e in b]
    c = _examples(30, seed=10)
    assert [e.answers for e in a] != [e.answers for e in c]


def test_the_describe_rate_draws_that_share_and_leaves_other_worlds_unchanged():
    fams = [make_example(3, i, WORLD).family for i in range(1000)]
    share = fams.count(DESCRIBE) / len(fams)
    assert abs(share - 0.2) < 3 * (0.2 * 0.8 / 1000) ** 0.5
    base = world_config("cooccur-confident")
    assert [make_example(3, i, base).record()["question"] for i in range(50)] == \
        [make_example(3, i, base).record()["question"] for i in range(50)]
    assert all(make_example(3, i, base).family != DESCRIBE for i in range(200))


OBJS = [{"color": "red", "shape": "circle", "size": "large"}, {"color": "blue", "shape": "square", "size": "small"},
        {"color": "red", "shape": "circle", "size": "small"}]


def test_label_description_on_hand_written_texts():
    ms = label_description("a small red circle, a large red circle and a green cross.", OBJS)
    assert [(m.text, m.label, m.object) for m in ms] == [
        ("a small red circle", "correct", 2), ("a large red circle", "correct", 0), ("a green cross", "invented", None)]
    # a wrong size, an extra copy, plural and no article
    ms = label_description("A large blue square, red circles and a red circle , a red circle.", OBJS)
    assert [m.label for m in ms] == ["wrong_attribute", "correct", "correct", "invented"]
    assert label_description("nothing to see here.", OBJS) == []
    assert label_description("", OBJS) == []


def test_chair_and_cover_on_hand_built_examples():
    d1 = (label_description("a large red circle and a small blue square.", OBJS), 3)  # covers 2 of 3
    d2 = (label_description("a large green cross and a large blue square.", OBJS), 3)  # 1 invented, 1 wrong size
    m = chair_metrics([d1, d2])
    assert m["n"] == 2 and m["chair_s"] == 0.5 and m["chair_i"] == 0.25
    assert m["cover"] == pytest.approx(3 / 6, abs=1e-4) and m["attr"] == pytest.approx(1 / 3, abs=1e-4)
    assert m["length"] == 2.0
    assert chair_metrics([])["chair_s"] is None
