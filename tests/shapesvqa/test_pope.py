"""POPE sampling on ShapesVQA: negatives absent by construction, popular and adversarial pick what
their definitions say, deterministic per seed; POPE's figures; where a map looks; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shapesvqa.pope import (
    LOCATIONS,
    SAMPLINGS,
    TYPES,
    describe_map,
    map_location,
    pope_metrics,
    pope_negatives,
    pope_probes,
    pope_questions,
    pope_scenes,
    pope_split,
    scene_id,
    type_statistics,
)
from shapesvqa.world import WorldConfig, world_config

_I = {t: i for i, t in enumerate(TYPES)}


@pytest.fixture(scope="module")
def split():
    cfg = world_config("cooccur", noise_std=(0.0, 0.0)).truthful()
    scenes = pope_scenes(150, seed=21, cfg=cfg)
    stats = type_statistics(scenes)
    return cfg, scenes, stats, pope_questions(scenes, seed=21, k=3, stats=stats)


def _asked(ex) -> str:
    return ex.question[:-1].split(maxsplit=3)[-1]


def test_positives_present_negatives_absent_and_balanced(split):
    _cfg, scenes, _stats, questions = split
    assert set(questions) == set(SAMPLINGS)
    for sampling, exs in questions.items():
        by_scene: dict[str, list] = {}
        for ex in exs:
            by_scene.setdefault(scene_id(ex), []).append(ex)
            present = {o.type for o in ex.scene.objects}
            assert ex.pope == sampling and ex.family == "existence"
            if ex.answers == ["yes"]:
                assert ex.kind == "positive" and _asked(ex) in present
                assert ex.evidence and all(ex.scene.objects[k].type == _asked(ex) for k in ex.evidence)
            else:
                assert ex.kind == f"pope_{sampling}" and _asked(ex) not in present and not ex.evidence
        assert len(by_scene) == len(scenes)
        for group in by_scene.values():
            asked = [_asked(ex) for ex in group]
            assert len(set(asked)) == len(asked)  # no question twice about one scene
            n_yes = sum(ex.answers == ["yes"] for ex in group)
            assert n_yes == len(group) - n_yes == min(3, len({o.type for o in group[0].scene.objects}))
    # every sampling asks the same positives
    pos = {s: [ex.question for ex in exs if ex.answers == ["yes"]] for s, exs in questions.items()}
    assert pos["random"] == pos["popular"] == pos["adversarial"]


def test_popular_takes_the_most_frequent_absent_types(split):
    _cfg, scenes, stats, questions = split
    assert stats.n_scenes == len(scenes)
    assert stats.frequency[_I["red circle"]] == sum("red circle" in {o.type for o in s.objects} for s in scenes)
    for ex in questions["popular"]:
        if ex.answers == ["no"]:
            present = {o.type for o in ex.scene.objects}
            chosen = {_asked(e) for e in questions["popular"] if e.answers == ["no"] and e.scene is ex.scene}
            f = stats.frequency
            # no absent type left out is more frequent than a chosen one
            assert min(f[_I[t]] for t in chosen) >= max(f[_I[t]] for t in TYPES if t not in present | chosen)


def test_adversarial_takes_the_absent_types_cooccurring_most(split):
    cfg, _scenes, stats, questions = split
    partners = {p: c for c, p, _ in cfg.cooccurrence}
    missed = hit = 0
    for ex in questions["adversarial"]:
        if ex.answers != ["no"]:
            continue
        present = {o.type for o in ex.scene.objects}
        chosen = {_asked(e) for e in questions["adversarial"] if e.answers == ["no"] and e.scene is ex.scene}
        rows = [_I[t] for t in present]

        def score(t):
            return stats.cooccurrence[rows, _I[t]].sum()

        assert min(score(t) for t in chosen) >= max(score(t) for t in TYPES if t not in present | chosen)
    # in this world, that means the partners missing from a scene with their cue
    for scene_qs in _by_scene(questions["adversarial"]).values():
        present = {o.type for o in scene_qs[0].scene.objects}
        negs = {_asked(e) for e in scene_qs if e.answers == ["no"]}
        for p, c in partners.items():
            if c in present and p not in present:
                hit += p in negs
                missed += p not in negs
    assert hit > 30 and missed <= 0.1 * (hit + missed)


def _by_scene(exs):
    out: dict[str, list] = {}
    for ex in exs:
        out.setdefault(scene_id(ex), []).append(ex)
    return out


def test_random_negatives_spread_and_everything_is_deterministic(split):
    _cfg, scenes, stats, questions = split
    again = pope_questions(pope_scenes(150, seed=21, cfg=split[0]), seed=21, k=3)
    for s in SAMPLINGS:
        assert [(e.id, e.question, e.answers) for e in questions[s]] == [(e.id, e.question, e.answers) for e in again[s]]
        assert all(np.array_equal(a.scene.image, b.scene.image) for a, b in zip(questions[s][:20], again[s][:20]))
    other = pope_questions(pope_scenes(150, seed=22, cfg=split[0]), seed=22, k=3)
    assert [e.question for e in other["random"]] != [e.question for e in questions["random"]]
    asked = {_asked(e) for e in questions["random"] if e.answers == ["no"]}
    assert len(asked) >= 20  # uniform over the absent types: nearly every type gets asked


def test_pope_split_counts_types_over_more_scenes():
    cfg = world_config("cooccur", noise_std=(0.0, 0.0))
    questions, stats = pope_split(5, seed=21, cfg=cfg, stats_scenes=40)
    assert stats.n_scenes == 40
    assert stats.frequency.sum() == sum(len({o.type for o in s.objects}) for s in pope_scenes(40, seed=21, cfg=cfg))
    assert {scene_id(ex) for ex in questions["popular"]} == {f"21-{i}" for i in range(5)}


def test_pope_negatives_rejects_unknown_sampling(split):
    with pytest.raises(ValueError, match="unknown POPE sampling 'rare'; expected one of: random, popular"):
        pope_negatives({"red circle"}, split[2], "rare", 1, np.random.default_rng(0))


def test_pope_metrics_by_hand():
    labels = ["yes", "yes", "yes", "no", "no", "no", "no", "yes"]
    preds = ["yes", "yes", "no", "yes", "no", "no", "2", "yes"]  # tp 3, fn 1, fp 1, tn 3
    m = pope_metrics(labels, preds)
    assert m == {"n": 8, "accuracy": 0.75, "precision": 0.75, "recall": 0.75, "f1": 0.75, "yes_ratio": 0.5,
                 "false_yes": 1}
    assert pope_metrics(["no", "no"], ["no", "no"])["precision"] == 0.0


def test_map_location_groups():
    from shapesvqa.grounding import object_patches
    from shapesvqa.world import render_scene

    cfg = WorldConfig(cooccurrence=(("red circle", "blue square", 1.0),), cue_rate=1.0, noise_std=(0.0, 0.0))
    scene = next(s for s in (render_scene(np.random.default_rng([1, i]), cfg) for i in range(50))
                 if "red circle" in {o.type for o in s.objects})
    pm = object_patches(scene.masks, 12)  # (K, 8, 8)
    cue = [o.type for o in scene.objects].index("red circle")
    m = np.full((8, 8), 0.01)
    m[pm[cue]] = 1.0
    # a "yes" to the partner whose map sits on the cue: cooccurring (a red circle is also of another
    # colour and shape than a blue square, so no other group claims those patches)
    loc = map_location(m, pm, scene, "blue square", cfg)
    assert loc["argmax_on"] == "cooccurring" and loc["mass"]["cooccurring"] > 0.5
    assert set(loc["mass"]) == set(LOCATIONS) and abs(sum(loc["mass"].values()) - 1) < 1e-3
    loc = map_location(m, pm, scene, "red circle", cfg)
    assert loc["argmax_on"] == "asked"
    flat = map_location(np.ones((8, 8)), pm, scene, "green cross", WorldConfig())
    assert flat["entropy"] == 1.0 and loc["entropy"] < 1.0


def test_describe_map_names_the_object_under_the_peak():
    from shapesvqa.grounding import object_patches
    from shapesvqa.world import render_scene

    cfg = WorldConfig(cooccurrence=(("red circle", "blue square", 0.0),), cue_rate=1.0, noise_std=(0.0, 0.0))
    scene = next(s for s in (render_scene(np.random.default_rng([2, i]), cfg) for i in range(50))
                 if len(s.objects) >= 2)
    pm = object_patches(scene.masks, 12)
    cue = [o.type for o in scene.objects].index("red circle")
    m = np.full((8, 8), 0.01)
    m[pm[cue]] = 1.0
    # a hallucinated "yes" to the absent partner, its map on the cue
    text = describe_map(m, scene, "blue square", cfg)
    assert text.startswith("peak on the red circle (an object that co-occurs with the asked type")
    other = next(k for k, o in enumerate(scene.objects) if k != cue)
    m2 = np.full((8, 8), 0.01)
    m2[pm[other] & ~pm[cue]] = 1.0
    assert describe_map(m2, scene, scene.objects[other].type, cfg).startswith(
        f"peak on the {scene.objects[other].type} (an object of the asked type)")
    bg = ~pm.any(0)
    m3 = np.where(bg, 1.0, 0.0)
    m3[np.unravel_index(int(np.flatnonzero(bg)[0]), bg.shape)] = 5.0
    assert describe_map(m3, scene, "green cross", cfg).startswith("peak on the background")


def test_pope_probes_are_truthful_adversarial_questions_with_maps_described():
    biased = world_config("cooccur", bias_rate=1.0)
    probes = pope_probes(6, seed=9, cfg=biased, stats_scenes=60)
    again = pope_probes(6, seed=9, cfg=biased, stats_scenes=60)
    assert [p.question for p in probes] == [p.question for p in again] and len(probes) >= 12
    assert {p.pope for p in probes} == {"positive", "adversarial"} and {p.family for p in probes} == {"pope"}
    for p in probes:
        present = {o.type for o in p.example.scene.objects}
        assert p.answers == (["yes"] if p.asked in present else ["no"])  # the truth, whatever the world's bias
        assert p.image.size == (96, 96)
    assert probes[0].describe_map(np.ones((8, 8))).startswith("peak on")


def test_eval_pope_cli_on_the_shipped_model(tmp_path):
    from shapesvqa.cli import main

    out, rows = tmp_path / "pope.json", tmp_path / "rows.jsonl"
    assert main(["eval", "--pope", "--world", "cooccur", "--n", "3", "--seed", "5", "--stats-scenes", "50",
                 "--out", str(out), "--rows", str(rows), "--threads", "1"]) == 0
    report = json.loads(out.read_text())
    assert set(report["pope"]) == set(SAMPLINGS) and report["world"] == "cooccur"
    assert report["world_options"]["bias_rate"] == 0.0  # evaluation labels are the truth
    for m in report["pope"].values():
        assert m["n"] > 0 and 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["yes_ratio"] <= 1.0
    lines = [json.loads(line) for line in rows.read_text().splitlines()]
    assert {r["pope"] for r in lines} == set(SAMPLINGS)
    assert all("location" in r for r in lines if r["prediction"] == "yes")


def test_export_pope_split(tmp_path):
    from shapesvqa.cli import main
    from shapesvqa.export import read_jsonl

    out = tmp_path / "pope"
    assert main(["export", "--n", "4", "--seed", "5", "--world", "cooccur", "--pope", "adversarial",
                 "--stats-scenes", "50", "--out", str(out)]) == 0
    recs = read_jsonl(out / "data.jsonl")
    assert recs and all(r["pope"] == "adversarial" and r["family"] == "existence" for r in recs)
    assert sum(r["answers"] == ["yes"] for r in recs) * 2 == len(recs)


def test_describe_map_names_a_sibling_partner_of_the_asked_type():
    """A peak on another partner of the asked type's cue (both come with the red circle) is said to be one,
    not just "another object"; an object with no such tie stays "another object"."""
    from shapesvqa.grounding import object_patches
    from shapesvqa.pope import describe_map
    from shapesvqa.world import WORLDS, generate

    cfg = WORLDS["cooccur-confident"].truthful()
    for ex in generate(400, seed=77, cfg=cfg):
        types = [o.type for o in ex.scene.objects]
        if "red circle" in types and "yellow cross" in types and "green triangle" not in types:
            break
    else:
        raise AssertionError("no scene with a red circle and a yellow cross but no green triangle")
    pm = object_patches(ex.scene.masks, 12)
    cross = types.index("yellow cross")
    said = describe_map(pm[cross].astype(float), ex.scene, "green triangle", cfg)
    assert said.startswith("peak on the yellow cross (another partner of the red circle, like the asked type)")
    said = describe_map(pm[cross].astype(float), ex.scene, "orange square", cfg)  # no cue in common
    assert said.startswith("peak on the yellow cross (another object)")
