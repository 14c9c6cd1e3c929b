"""POPE on ShapesVQA: polling-based object probing (Li et al. 2023, "Evaluating Object Hallucination
in Large Vision-Language Models"), with the maps of hallucinated "yes" answers measured on the masks.

An object *type* is a colour and a shape ("red circle"; 24 types). For every scene of a split,
POPE asks "Is there a red circle?" about

- positives: up to ``k`` types present in the scene (answer "yes");
- negatives, as many as positives, one set per sampling (answer "no"), never a type present:

  * ``random``: absent types drawn uniformly;
  * ``popular``: the absent types held by the most scenes of the split;
  * ``adversarial``: the absent types that co-occur most with the types present (sum, over the
    present types, of the number of scenes holding both).

As in POPE, the frequencies come from the evaluated split's own scenes (:func:`type_statistics`),
ties are broken by the canonical type order (``TYPES``), and each sampling's set holds the same
positives. A POPE table reports per sampling: accuracy, precision, recall and F1 of "yes", and the
yes-ratio (share of "yes" predictions; an answer that is not "yes" counts as "no").

Where a hallucinated "yes" (a "yes" to a negative) looks: the argmax patch of its map is put in the
first of these groups that holds it (:func:`map_location`): ``asked`` (an object of the asked type:
only for positives), ``cooccurring`` (a present object whose
type forms a co-occurrence pair with the asked type in the world's configuration), ``same_color``
(an object of the asked colour), ``same_shape`` (of the asked shape), ``other_object``,
``background``; the map's mass on each group and its normalised entropy (1 = flat) are reported
beside those of correct "yes" answers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .world import COLORS, SHAPES, Example, Scene, WorldConfig, article, object_type, render_scene

__all__ = [
    "DescribeQuestion",
    "LOCATIONS",
    "PopeQuestion",
    "SAMPLINGS",
    "TYPES",
    "TypeStats",
    "describe_map",
    "hallucination_summary",
    "location_stats",
    "map_location",
    "pope_metrics",
    "pope_negatives",
    "pope_probes",
    "pope_questions",
    "pope_scenes",
    "pope_split",
    "scene_id",
    "type_statistics",
]

SAMPLINGS: tuple[str, ...] = ("random", "popular", "adversarial")
TYPES: tuple[str, ...] = tuple(object_type(c, s) for c in COLORS for s in SHAPES)
LOCATIONS: tuple[str, ...] = ("asked", "cooccurring", "same_color", "same_shape", "other_object", "background")
_INDEX = {t: i for i, t in enumerate(TYPES)}


@dataclass(frozen=True)
class TypeStats:
    """Scene counts over a split: ``frequency`` (T,) scenes holding each type of ``TYPES``;
    ``cooccurrence`` (T, T) scenes holding both types (its diagonal is ``frequency``)."""

    n_scenes: int
    frequency: np.ndarray
    cooccurrence: np.ndarray


def type_statistics(scenes: Iterable[Scene]) -> TypeStats:
    """Count, over ``scenes``, the scenes holding each type and each pair of types."""
    n = 0
    co = np.zeros((len(TYPES), len(TYPES)), dtype=np.int64)
    for scene in scenes:
        idx = sorted({_INDEX[o.type] for o in scene.objects})
        co[np.ix_(idx, idx)] += 1
        n += 1
    return TypeStats(n_scenes=n, frequency=co.diagonal().copy(), cooccurrence=co)


def pope_negatives(
    present: set[str], stats: TypeStats, sampling: str, m: int, rng: np.random.Generator
) -> list[str]:
    """``m`` absent types by ``sampling`` (module docstring); fewer only if fewer types are absent.

    ``rng`` is used by ``random`` only.
    """
    absent = [t for t in TYPES if t not in present]
    m = min(m, len(absent))
    if sampling == "random":
        return [absent[i] for i in rng.choice(len(absent), size=m, replace=False)]
    if sampling == "popular":
        score = {t: int(stats.frequency[_INDEX[t]]) for t in absent}
    elif sampling == "adversarial":
        rows = [_INDEX[t] for t in present]
        score = {t: int(stats.cooccurrence[rows, _INDEX[t]].sum()) for t in absent}
    else:
        raise ValueError(f"unknown POPE sampling {sampling!r}; expected one of: {', '.join(SAMPLINGS)}")
    # sorted() is stable and ``absent`` is in canonical order: ties keep that order.
    return sorted(absent, key=lambda t: -score[t])[:m]


def pope_scenes(n_scenes: int, seed: int, cfg: WorldConfig = WorldConfig(), start: int = 0) -> list[Scene]:
    """Scenes ``start .. start+n_scenes-1`` of a POPE split: scene ``i`` is drawn from
    ``default_rng([seed, i])`` (deterministic, independent of the others)."""
    return [render_scene(np.random.default_rng([seed, i]), cfg) for i in range(start, start + n_scenes)]


def pope_questions(
    scenes: Sequence[Scene],
    seed: int,
    k: int = 3,
    samplings: Sequence[str] = SAMPLINGS,
    stats: TypeStats | None = None,
    world: dict | None = None,
) -> dict[str, list[Example]]:
    """POPE questions for every sampling: {sampling: [Example, ...]}, positives and negatives
    interleaved per scene. Examples have family "existence", ``pope`` set to the sampling, kind
    "positive" or "pope_<sampling>", and ids "<seed>-<scene>-<sampling>-<j>". ``stats`` defaults
    to :func:`type_statistics` of ``scenes``; ``world`` is recorded on each example.

    >>> qs = pope_questions(pope_scenes(2, seed=0), seed=0, k=2)
    >>> sorted(qs), qs["random"][0].answers
    (['adversarial', 'popular', 'random'], ['yes'])
    """
    for s in samplings:
        if s not in SAMPLINGS:
            raise ValueError(f"unknown POPE sampling {s!r}; expected one of: {', '.join(SAMPLINGS)}")
    stats = stats if stats is not None else type_statistics(scenes)
    out: dict[str, list[Example]] = {s: [] for s in samplings}
    for i, scene in enumerate(scenes):
        present = list(dict.fromkeys(o.type for o in scene.objects))
        rng = np.random.default_rng([seed, i, 1])
        pos = [present[j] for j in rng.permutation(len(present))[:k]]
        for s_idx, sampling in enumerate(samplings):
            neg = pope_negatives(set(present), stats, sampling, len(pos), np.random.default_rng([seed, i, 2, s_idx]))
            qs = []
            for j in range(max(len(pos), len(neg))):
                qs += [(t, "yes") for t in pos[j : j + 1]] + [(t, "no") for t in neg[j : j + 1]]
            for j, (t, answer) in enumerate(qs):
                c, sh = t.split()
                ev = [o_i for o_i, o in enumerate(scene.objects) if o.type == t] if answer == "yes" else []
                kind = "positive" if answer == "yes" else f"pope_{sampling}"
                out[sampling].append(Example(
                    f"{seed}-{i}-{sampling}-{j}", f"Is there {article(c)} {c} {sh}?", [answer], "existence", kind, ev,
                    scene, world=world, pope=sampling,
                ))
    return out


def pope_split(
    n_scenes: int,
    seed: int,
    cfg: WorldConfig = WorldConfig(),
    k: int = 3,
    stats_scenes: int = 1000,
    samplings: Sequence[str] = SAMPLINGS,
    world: dict | None = None,
) -> tuple[dict[str, list[Example]], TypeStats]:
    """A POPE split: the questions of :func:`pope_questions` about scenes ``0 .. n_scenes-1`` of
    ``seed``, with type frequencies counted over at least ``stats_scenes`` scenes of the same split
    (the evaluated ones, then the next ones), so that small splits rank types stably."""
    scenes = pope_scenes(n_scenes, seed, cfg)
    extra = pope_scenes(max(0, stats_scenes - n_scenes), seed, cfg, start=n_scenes)
    stats = type_statistics(scenes + extra)
    return pope_questions(scenes, seed, k=k, samplings=samplings, stats=stats, world=world), stats


def scene_id(ex: Example) -> str:
    """The scene a POPE question is about ("<seed>-<scene>"): questions of one scene share it."""
    return ex.id.rsplit("-", 2)[0]


def pope_metrics(labels: Sequence[str], predictions: Sequence[str]) -> dict:
    """POPE's figures of "yes" as the positive class: n, accuracy, precision, recall, f1, yes_ratio.

    ``labels`` are "yes"/"no"; a prediction other than "yes" counts as "no".
    """
    y = np.array([lab == "yes" for lab in labels])
    p = np.array([pred == "yes" for pred in predictions])
    tp, fp, fn = int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum())
    n = len(y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "accuracy": round(float((y == p).mean()), 4) if n else None,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "yes_ratio": round(float(p.mean()), 4) if n else None,
        "false_yes": fp,
    }


def _partners_of(t: str, cfg: WorldConfig) -> set[str]:
    out = set()
    for cue, partner, _ in cfg.cooccurrence:
        if t == cue:
            out.add(partner)
        elif t == partner:
            out.add(cue)
    return out


def map_location(rel_map: np.ndarray, patch_masks: np.ndarray, scene: Scene, asked: str,
                 cfg: WorldConfig = WorldConfig()) -> dict:
    """Where one answer's map looks, relative to the asked type ``asked`` ("colour shape").

    ``rel_map``: (g, g) non-negative relevancy; ``patch_masks``: (K, g, g) bool patches of the
    scene's objects (:func:`shapesvqa.grounding.object_patches`). Returns ``argmax_on`` (one of
    ``LOCATIONS``: the first group holding the argmax patch), ``mass`` {group: share of the map's
    mass on it; groups in priority order, each patch counted once} and ``entropy`` (normalised
    Shannon entropy of the map: 0 = one patch, 1 = flat).
    """
    color, shape = asked.split()
    partners = _partners_of(asked, cfg)
    groups = {
        "asked": [k for k, o in enumerate(scene.objects) if o.type == asked],
        "cooccurring": [k for k, o in enumerate(scene.objects) if o.type in partners],
        "same_color": [k for k, o in enumerate(scene.objects) if o.color == color],
        "same_shape": [k for k, o in enumerate(scene.objects) if o.shape == shape],
        "other_object": list(range(len(scene.objects))),
    }
    flat = np.clip(rel_map.reshape(-1), 0, None)  # (g*g,)
    taken = np.zeros(flat.shape, dtype=bool)
    where = np.full(flat.shape, len(LOCATIONS) - 1)  # background unless a group claims the patch
    for gi, name in enumerate(LOCATIONS[:-1]):
        idx = groups[name]
        own = patch_masks[idx].any(0).reshape(-1) if idx else np.zeros(flat.shape, dtype=bool)
        where[own & ~taken] = gi
        taken |= own
    total = float(flat.sum())
    mass = {name: round(float(flat[where == gi].sum() / total), 4) if total > 0 else 0.0
            for gi, name in enumerate(LOCATIONS)}
    p = flat / total if total > 0 else np.full(flat.shape, 1.0 / flat.size)
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum() / np.log(flat.size))
    return {"argmax_on": LOCATIONS[int(where[int(flat.argmax())])], "mass": mass, "entropy": round(entropy, 4)}


def location_stats(group: Sequence[dict]) -> dict:
    """Where a group of maps looks: of the rows with a ``location`` (:func:`map_location`), n, the share
    of argmax on each group, the mean mass on each group and the mean normalised entropy."""
    group = [r for r in group if "location" in r]
    if not group:
        return {"n": 0}
    return {
        "n": len(group),
        "argmax_on": {loc: round(float(np.mean([r["location"]["argmax_on"] == loc for r in group])), 4)
                      for loc in LOCATIONS},
        "mass": {loc: round(float(np.mean([r["location"]["mass"][loc] for r in group])), 4) for loc in LOCATIONS},
        "entropy": round(float(np.mean([r["location"]["entropy"] for r in group])), 4),
    }


def hallucination_summary(rows: Sequence[dict]) -> dict:
    """Per sampling: where the maps of hallucinated "yes" answers look, beside correct "yes" ones.

    ``rows``: POPE rows with ``pope``, ``answers``, ``prediction`` and, for answers with a map,
    ``location`` (from :func:`map_location`). Returns {sampling: {"hallucinated": {...},
    "correct_yes": {...}}} with n, the share of argmax per group, the mean mass per group and the
    mean normalised entropy.
    """
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["pope"]].append(r)
    out = {}
    for sampling in [s for s in SAMPLINGS if s in by]:
        g = by[sampling]
        out[sampling] = {
            "hallucinated": location_stats([r for r in g if r["answers"] == ["no"] and r["prediction"] == "yes"]),
            "correct_yes": location_stats([r for r in g if r["answers"] == ["yes"] and r["prediction"] == "yes"]),
        }
    return out


_SAYS = {
    "asked": "an object of the asked type",
    "cooccurring": "an object that co-occurs with the asked type in this world",
    "same_color": "another object of the asked colour",
    "same_shape": "another object of the asked shape",
    "other_object": "another object",
    "background": "the background",
}


def describe_map(rel_map: np.ndarray, scene: Scene, asked: str, cfg: WorldConfig = WorldConfig()) -> str:
    """Where one answer's map looks, in words, from the scene's masks (for demos and reports).

    ``rel_map``: (g, g) non-negative map (any method); ``asked``: the asked type ("colour shape").

    >>> ex = pope_questions(pope_scenes(1, seed=3), seed=3, k=1, samplings=["random"])["random"][0]
    >>> from shapesvqa.grounding import object_patches
    >>> m = object_patches(ex.scene.masks, 12)[ex.evidence[0]].astype(float)
    >>> describe_map(m, ex.scene, ex.question[:-1].split(maxsplit=3)[-1]).startswith("peak on the " + ex.scene.objects[ex.evidence[0]].type)
    True
    """
    from .grounding import object_patches

    g = rel_map.shape[0]
    patch = scene.masks.shape[1] // g if len(scene.objects) else 1
    pm = object_patches(scene.masks, patch) if len(scene.objects) else np.zeros((0,) + rel_map.shape, bool)
    loc = map_location(rel_map, pm, scene, asked, cfg)
    where = loc["argmax_on"]
    peak = int(np.clip(rel_map, 0, None).reshape(-1).argmax())
    on = [k for k in range(len(scene.objects)) if pm[k].reshape(-1)[peak]]
    if on:
        o = scene.objects[on[0]]
        if where == "other_object":
            # a sibling partner: shares a cue with the asked type, so it comes with it in this world too
            shared = sorted(_partners_of(asked, cfg) & _partners_of(o.type, cfg))
            what = f"the {o.type} (" + (f"another partner of the {shared[0]}, like the asked type" if shared
                                         else _SAYS[where]) + ")"
        else:
            what = f"the {o.type} ({_SAYS[where]})"
    else:
        what = "the background"
    return (f"peak on {what}; {loc['mass'][where]:.0%} of the map there; "
            f"entropy {loc['entropy']:.2f} (0 = one patch, 1 = flat)")


@dataclass(frozen=True)
class DescribeQuestion:
    """A "Describe the image." example for demos: the example's fields, the labels of any description of
    its scene (:meth:`label_text`) and where a claim's map looks (:meth:`describe_claim_map`)."""

    example: Example
    cfg: WorldConfig

    def __getattr__(self, name: str):  # id, image, question, answers, family, scene ...
        return getattr(self.example, name)

    def label_text(self, text: str):
        return self.example.label_text(text)

    def describe_claim_map(self, rel_map: np.ndarray, mentioned: str) -> str:
        """Where a claim's map (rows, cols) looks, relative to the ``mentioned`` type ("colour shape")."""
        return describe_map(rel_map, self.example.scene, mentioned, self.cfg)


@dataclass(frozen=True)
class PopeQuestion:
    """A POPE question for demos: what a preset's ``examples`` return (``id``, ``image``, ``question``,
    ``answers``, ``family``), plus ``pope`` (its sampling, or "positive") and :meth:`describe_map`."""

    example: Example
    world: WorldConfig

    @property
    def id(self) -> str:
        return self.example.id

    @property
    def image(self):
        return self.example.image

    @property
    def question(self) -> str:
        return self.example.question

    @property
    def answers(self) -> list[str]:
        return list(self.example.truth)

    @property
    def family(self) -> str:
        return "pope"

    @property
    def pope(self) -> str:
        return "positive" if self.example.kind == "positive" else self.example.pope

    @property
    def asked(self) -> str:
        return self.example.question[:-1].split(maxsplit=3)[-1]

    def describe_map(self, rel_map: np.ndarray) -> str:
        """Where ``rel_map`` looks in this question's scene (see :func:`describe_map`)."""
        return describe_map(np.asarray(rel_map, dtype=np.float64), self.example.scene, self.asked, self.world)


def pope_probes(n_scenes: int, seed: int, cfg: WorldConfig = WorldConfig(), sampling: str = "adversarial",
                k: int = 3, stats_scenes: int = 300) -> list[PopeQuestion]:
    """The POPE questions of one sampling about ``n_scenes`` scenes (positives and negatives
    interleaved), wrapped for demos (:class:`PopeQuestion`); labels are always the true ones."""
    cfg = cfg.truthful()
    questions, _ = pope_split(n_scenes, seed, cfg, k=k, stats_scenes=stats_scenes, samplings=[sampling],
                              world=None)
    return [PopeQuestion(ex, cfg) for ex in questions[sampling]]
