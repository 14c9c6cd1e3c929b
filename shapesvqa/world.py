"""The ShapesVQA world: procedurally drawn scenes with exact object masks, and questions about them.

Everything here is pure numpy + PIL and deterministic: example ``i`` of seed ``s`` is drawn from
``numpy.random.default_rng([s, i])``, so any example can be regenerated on its own and two seeds
give independent splits.

A scene is a light, optionally noisy background with optional grey clutter and 1..K coloured
objects (shape x colour x size) at random non-overlapping positions. Each object's boolean mask is
rendered first and the object is painted *from its mask*, so a mask is exactly the set of pixels
that carry the object's colour (before pixel noise, which perturbs values but never moves pixels).

Question families (``Example.family``) and sub-kinds (``Example.kind``):

- ``attribute``: ``color_of_shape`` "What color is the circle?" (asked only when exactly one circle
  exists), ``shape_of_color`` "What shape is the red object?" (exactly one red object).
- ``relational``: "What color is the object left of the square?" / "What shape is the object above
  the red object?". The reference is unique by its shape (or colour) and exactly one other object
  lies on the asked side, with no object inside an ambiguity band of ``relation_margin`` pixels.
- ``existence``: "Is there a green triangle?" with answer yes (``positive``) or no. Negatives are
  ``random`` (any absent colour/shape pair), ``popular`` (the shape is in the scene, the colour is
  not) or ``adversarial`` (both the colour and the shape are in the scene, on different objects).
- ``counting``: "How many squares are there?" / "How many red objects are there?" -> "0".."6".

``Example.evidence`` lists the object indices that answer the question, the *queried* object first
(for relational questions: the target, then the reference). Negatives of existence have no evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "FAMILIES",
    "SHAPES",
    "Example",
    "Scene",
    "SceneObject",
    "WorldConfig",
    "answer_vocabulary",
    "ask",
    "generate",
    "make_example",
    "patch_coverage",
    "question_vocabulary",
    "render_scene",
]

#: colour name -> base RGB. Saturated hues on a light background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 185),
    "orange": (245, 130, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
SIZES: tuple[str, ...] = ("small", "large")
FAMILIES: tuple[str, ...] = ("attribute", "relational", "existence", "counting")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
MAX_COUNT = 6


@dataclass(frozen=True)
class WorldConfig:
    """Hyper-parameters of the generator (internal, frozen)."""

    image_size: int = 96
    n_objects: tuple[int, int] = (2, 6)  # inclusive range of objects per scene
    radius: dict[str, tuple[int, int]] = field(
        default_factory=lambda: {"small": (10, 12), "large": (14, 16)}
    )
    min_gap: int = 3  # pixels between the bounding circles of two objects
    color_jitter: int = 15  # +- per channel
    noise_std: tuple[float, float] = (0.0, 6.0)  # per-image gaussian pixel noise, uniform range
    clutter: tuple[int, int] = (0, 6)  # grey specks per image, inclusive range
    relation_margin: int = 6  # pixels: objects this close to the reference on the axis are ambiguous
    family_weights: dict[str, float] = field(
        default_factory=lambda: {"attribute": 0.4, "relational": 0.15, "existence": 0.3, "counting": 0.15}
    )


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    cx: int
    cy: int
    radius: int
    rgb: tuple[int, int, int]


@dataclass
class Scene:
    """An image with its objects. ``image``: (H, W, 3) uint8; ``masks``: (K, H, W) bool."""

    image: np.ndarray
    objects: list[SceneObject]
    masks: np.ndarray

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image, mode="RGB")


@dataclass
class Example:
    """One question about one scene.

    ``answers`` holds the accepted short answers (lower case, one word). ``evidence`` holds object
    indices into ``scene.objects`` (queried object first); ``evidence_masks`` is (E, H, W) bool.
    """

    id: str
    question: str
    answers: list[str]
    family: str
    kind: str
    evidence: list[int]
    scene: Scene

    @property
    def image(self) -> Image.Image:
        return self.scene.pil()

    @property
    def evidence_masks(self) -> np.ndarray:
        if not self.evidence:
            h, w = self.scene.masks.shape[1:]
            return np.zeros((0, h, w), dtype=bool)
        return self.scene.masks[self.evidence]

    def record(self) -> dict:
        """JSON-serialisable description (without image and mask pixels)."""
        return {
            "id": self.id,
            "question": self.question,
            "answers": list(self.answers),
            "family": self.family,
            "kind": self.kind,
            "evidence": list(self.evidence),
            "objects": [
                {"shape": o.shape, "color": o.color, "size": o.size, "cx": o.cx, "cy": o.cy, "radius": o.radius}
                for o in self.scene.objects
            ],
        }


# ---------------------------------------------------------------- drawing


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "cross":
        a, b = r, r * 0.36
        return [
            (cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b),
            (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b),
            (cx - a, cy - b), (cx - b, cy - b),
        ]
    return None  # circle


def _object_mask(obj: SceneObject, size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    poly = _shape_polygon(obj.shape, obj.cx, obj.cy, obj.radius)
    if poly is None:
        r = obj.radius
        draw.ellipse([obj.cx - r, obj.cy - r, obj.cx + r, obj.cy + r], fill=255)
    else:
        draw.polygon(poly, fill=255)
    return np.asarray(canvas) > 0  # (H, W) bool


def _sample_objects(rng: np.random.Generator, n: int, cfg: WorldConfig) -> list[SceneObject]:
    objects: list[SceneObject] = []
    colors = list(COLORS)
    for _ in range(n):
        for _attempt in range(60):
            shape = SHAPES[rng.integers(len(SHAPES))]
            color = colors[rng.integers(len(colors))]
            size = SIZES[rng.integers(len(SIZES))]
            lo, hi = cfg.radius[size]
            r = int(rng.integers(lo, hi + 1))
            cx = int(rng.integers(r + 1, cfg.image_size - r - 1))
            cy = int(rng.integers(r + 1, cfg.image_size - r - 1))
            if all((cx - o.cx) ** 2 + (cy - o.cy) ** 2 >= (r + o.radius + cfg.min_gap) ** 2 for o in objects):
                base = np.array(COLORS[color])
                rgb = np.clip(base + rng.integers(-cfg.color_jitter, cfg.color_jitter + 1, 3), 0, 255)
                objects.append(SceneObject(shape, color, size, cx, cy, r, tuple(int(v) for v in rgb)))
                break
    return objects


def render_scene(rng: np.random.Generator, cfg: WorldConfig = WorldConfig(), n_objects: int | None = None) -> Scene:
    """Draw one scene. ``n_objects`` overrides ``cfg.n_objects`` (may end lower if the canvas is full)."""
    size = cfg.image_size
    n = int(rng.integers(cfg.n_objects[0], cfg.n_objects[1] + 1)) if n_objects is None else n_objects
    # Background: a light, low-saturation tint with an optional linear gradient.
    base = rng.integers(195, 250) + rng.integers(-10, 11, 3)
    grad = rng.uniform(-20, 20, 2)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    bg = base[None, None, :] + (grad[0] * xx + grad[1] * yy)[:, :, None]
    img = np.clip(bg, 0, 255)
    # Clutter: small grey specks, painted before the objects so they never cover one.
    for _ in range(int(rng.integers(cfg.clutter[0], cfg.clutter[1] + 1))):
        x, y = rng.integers(0, size, 2)
        s = int(rng.integers(1, 3))
        img[max(0, y - s) : y + s, max(0, x - s) : x + s] = rng.integers(90, 170)
    objects = _sample_objects(rng, n, cfg)
    masks = np.zeros((len(objects), size, size), dtype=bool)
    for k, obj in enumerate(objects):
        masks[k] = _object_mask(obj, size)
        img[masks[k]] = obj.rgb  # paint from the mask: the mask is exactly the drawn pixels
    std = rng.uniform(*cfg.noise_std)
    if std > 0:
        img = img + rng.normal(0.0, std, img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return Scene(image=image, objects=objects, masks=masks)


def patch_coverage(masks: np.ndarray, patch: int) -> np.ndarray:
    """Share of each patch covered by each mask: (K, H, W) bool -> (K, H/patch, W/patch) float in [0, 1]."""
    k, h, w = masks.shape
    return masks.reshape(k, h // patch, patch, w // patch, patch).mean(axis=(2, 4))


# ---------------------------------------------------------------- questions


def _an(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _attribute(scene: Scene, rng: np.random.Generator) -> tuple | None:
    objs = scene.objects
    options = []
    for i, o in enumerate(objs):
        if sum(p.shape == o.shape for p in objs) == 1:
            options.append((f"What color is the {o.shape}?", [o.color], "color_of_shape", [i]))
        if sum(p.color == o.color for p in objs) == 1:
            options.append((f"What shape is the {o.color} object?", [o.shape], "shape_of_color", [i]))
    if not options:
        return None
    return options[rng.integers(len(options))]


def _relational(scene: Scene, rng: np.random.Generator, margin: int) -> tuple | None:
    objs = scene.objects
    options = []
    for ri, ref in enumerate(objs):
        names = []
        if sum(p.shape == ref.shape for p in objs) == 1:
            names.append(f"the {ref.shape}")
        if sum(p.color == ref.color for p in objs) == 1:
            names.append(f"the {ref.color} object")
        if not names:
            continue
        for rel in RELATIONS:
            # Signed offset of each other object along the asked direction (positive = on that side).
            offs = []
            for ti, t in enumerate(objs):
                if ti == ri:
                    continue
                d = {"left": ref.cx - t.cx, "right": t.cx - ref.cx, "above": ref.cy - t.cy, "below": t.cy - ref.cy}[rel]
                offs.append((d, ti))
            side = [ti for d, ti in offs if d > margin]
            band = [ti for d, ti in offs if -margin <= d <= margin]
            if len(side) != 1 or band:
                continue
            ti = side[0]
            rel_text = f"{rel} of" if rel in ("left", "right") else rel
            for name in names:
                attr = "color" if rng.random() < 0.5 else "shape"
                ans = objs[ti].color if attr == "color" else objs[ti].shape
                options.append((f"What {attr} is the object {rel_text} {name}?", [ans], f"{attr}_{rel}", [ti, ri]))
    if not options:
        return None
    return options[rng.integers(len(options))]


def _existence(scene: Scene, rng: np.random.Generator) -> tuple:
    objs = scene.objects
    present = {(o.color, o.shape) for o in objs}
    if rng.random() < 0.5 and objs:
        i = int(rng.integers(len(objs)))
        o = objs[i]
        ev = [k for k, p in enumerate(objs) if (p.color, p.shape) == (o.color, o.shape)]
        ev = [i] + [k for k in ev if k != i]
        return (f"Is there {_an(o.color)} {o.color} {o.shape}?", ["yes"], "positive", ev)
    colors_in = {o.color for o in objs}
    shapes_in = {o.shape for o in objs}
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    pools = {
        "adversarial": [(c, s) for c, s in absent if c in colors_in and s in shapes_in],
        "popular": [(c, s) for c, s in absent if c not in colors_in and s in shapes_in],
        "random": absent,
    }
    kinds = [k for k in ("random", "popular", "adversarial") if pools[k]]
    kind = kinds[rng.integers(len(kinds))]
    c, s = pools[kind][rng.integers(len(pools[kind]))]
    return (f"Is there {_an(c)} {c} {s}?", ["no"], kind, [])


def _counting(scene: Scene, rng: np.random.Generator) -> tuple:
    objs = scene.objects
    if rng.random() < 0.5:
        s = SHAPES[rng.integers(len(SHAPES))]
        ev = [i for i, o in enumerate(objs) if o.shape == s]
        return (f"How many {PLURALS[s]} are there?", [str(len(ev))], "count_shape", ev)
    c = list(COLORS)[rng.integers(len(COLORS))]
    ev = [i for i, o in enumerate(objs) if o.color == c]
    return (f"How many {c} objects are there?", [str(len(ev))], "count_color", ev)


def ask(scene: Scene, family: str, rng: np.random.Generator, cfg: WorldConfig = WorldConfig()) -> tuple | None:
    """One question of ``family`` about ``scene``: (question, answers, kind, evidence) or None if impossible."""
    if family == "attribute":
        return _attribute(scene, rng)
    if family == "relational":
        return _relational(scene, rng, cfg.relation_margin)
    if family == "existence":
        return _existence(scene, rng)
    if family == "counting":
        return _counting(scene, rng)
    raise ValueError(f"unknown family {family!r}; expected one of: {', '.join(FAMILIES)}")


def make_example(
    seed: int,
    index: int,
    cfg: WorldConfig = WorldConfig(),
    family: str | None = None,
    n_objects: int | None = None,
) -> Example:
    """Example ``index`` of split ``seed``: deterministic, independent of every other index.

    ``family`` forces a family (default: drawn with ``cfg.family_weights``); a scene where the
    family cannot be asked unambiguously is redrawn.
    """
    rng = np.random.default_rng([seed, index])
    fams = list(cfg.family_weights)
    weights = np.array([cfg.family_weights[f] for f in fams], dtype=float)
    fam = family or fams[rng.choice(len(fams), p=weights / weights.sum())]
    for _ in range(100):
        scene = render_scene(rng, cfg, n_objects)
        q = ask(scene, fam, rng, cfg)
        if q is not None:
            question, answers, kind, evidence = q
            return Example(f"{seed}-{index}", question, answers, fam, kind, evidence, scene)
    raise RuntimeError(f"could not ask a {fam} question after 100 scenes (seed {seed}, index {index})")


def generate(
    n: int, seed: int, cfg: WorldConfig = WorldConfig(), family: str | None = None, start: int = 0
) -> Iterator[Example]:
    """Examples ``start .. start+n-1`` of split ``seed``.

    >>> ex = next(generate(1, seed=0))
    >>> ex.image.size, ex.evidence_masks.dtype
    ((96, 96), dtype('bool'))
    """
    for i in range(start, start + n):
        yield make_example(seed, i, cfg, family)


def answer_vocabulary() -> list[str]:
    """Every possible answer word."""
    return list(COLORS) + list(SHAPES) + ["yes", "no"] + [str(i) for i in range(MAX_COUNT + 1)]


def question_vocabulary() -> list[str]:
    """Every word (and punctuation mark) a question can contain, plus the answers."""
    words = ["What", "How", "Is", "color", "shape", "is", "the", "object", "objects", "of", "there",
             "a", "an", "many", "are", "?", "small", "large"]
    words += list(RELATIONS) + list(PLURALS.values())
    out = []
    for w in words + answer_vocabulary():
        if w not in out:
            out.append(w)
    return out
