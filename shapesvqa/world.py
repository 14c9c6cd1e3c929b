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
- ``describe`` (not in :data:`FAMILIES`, which holds the short-answer families; asked in a share
  ``describe_rate`` of a world's examples, or forced with ``family="describe"``): "Describe the
  image." (or "What is in the image?", "List the objects in the image.") answered by a list of every
  object in a fixed grammar, :func:`describe_objects`: "a large red circle, a small blue square and
  a small green triangle." Each object is one *mention* "a {size} {colour} {shape}"; mentions are
  sorted by colour (the order of :data:`COLORS`), then shape (:data:`SHAPES`), then size (large
  first), then left to right; two mentions are joined by " and ", more by ", " with " and " before
  the last; the text ends with ".". ``Example.mentions`` gives each mention's character span, the
  object it refers to and its label (:func:`label_description` labels any text, a model's own
  description included).

``Example.evidence`` lists the object indices that answer the question, the *queried* object first
(for relational questions: the target, then the reference). Negatives of existence have no evidence.

World options for object hallucination (all off in ``WorldConfig()``, which draws exactly the
world the previous, grounded reference model was trained on; named presets in ``WORLDS``; the
shipped model's world is ``cooccur-describe``, ``cooccur-confident`` with descriptions):

- ``cooccurrence``: (cue type, partner type, rate) triples over object types "colour shape"; a cue
  may have several partners (a kitchen has a cup, a fork and a knife), a partner has one cue. In
  a scene that contains the cue, each partner is made present with probability ``rate`` and absent
  otherwise, so P(partner present | cue present) = rate; ``cue_rate`` is the share of scenes
  holding a cue (one, drawn uniformly among the cues; cues appear in no other way). A partner
  takes the place of an object outside every pair; only when every object is a cue or a partner
  does the scene grow by one. Cue and partner objects are placed first, with more attempts, so a
  crowded canvas drops other objects rather than them.
- ``partner_question_rate``: share of existence negatives, in scenes holding a cue without one
  of its partners, that ask about such an absent partner (kind ``partner``);
- ``bias_rate``: share of those ``partner`` questions labelled "yes" (a biased annotation, as when
  answers are written from captions that mention objects not in the picture). Such an example has
  ``biased`` True, ``answers == ["yes"]`` (the training label) and ``true_answers == ["no"]``;
  ``bias_partners`` limits the bias to the questions about those partners (empty: every partner).
  The draw is made whatever the rates, so a world and its ``truthful()`` twin ask the same questions;
- ``describe_rate``: share of examples that are ``describe`` questions (drawn first, only when > 0);
- ``describe_bias_rate``: in a ``describe`` example whose scene holds a cue without one of its
  partners (one of ``bias_partners`` when set), each such absent partner is mentioned, as if it
  were there, with this probability (a biased description, as captions written from other captions
  mention objects that are not in the picture): ``biased`` True, ``answers`` the biased text and
  ``true_answers`` the true one, the invented mention labelled ``invented`` in ``mentions``;
- ``faint_rate``: share of objects drawn weakly visible (``faint_radius``, colour blended toward
  the background with opacity ``faint_contrast``); the mask is still exactly the painted pixels.

Evaluation splits use :meth:`WorldConfig.truthful` (``bias_rate`` 0): labels are then the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
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
    "WORLDS",
    "WorldConfig",
    "DESCRIBE",
    "DESCRIBE_QUESTIONS",
    "Mention",
    "answer_vocabulary",
    "ask",
    "chair_metrics",
    "describe_objects",
    "find_mentions",
    "generate",
    "label_description",
    "make_example",
    "object_type",
    "patch_coverage",
    "question_vocabulary",
    "render_scene",
    "world_config",
    "world_options",
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
DESCRIBE = "describe"
DESCRIBE_QUESTIONS: tuple[str, ...] = ("Describe the image.", "What is in the image?", "List the objects in the image.")
MENTION_LABELS: tuple[str, ...] = ("correct", "wrong_attribute", "invented")


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
    # Hallucination options (module docstring). Off by default: the old world, draw for draw.
    cooccurrence: tuple[tuple[str, str, float], ...] = ()  # (cue "colour shape", partner, P(partner | cue))
    cue_rate: float = 0.0  # share of scenes seeded with one cue object
    partner_question_rate: float = 0.0  # share of eligible existence negatives asked about the absent partner
    bias_rate: float = 0.0  # share of those partner questions labelled "yes"
    bias_partners: tuple[str, ...] = ()  # partners whose questions get biased labels (empty: all)
    faint_rate: float = 0.0  # share of objects drawn weakly visible
    describe_rate: float = 0.0  # share of examples that are "describe" questions (long answers)
    describe_bias_rate: float = 0.0  # P(an absent partner of a present cue is mentioned) in a description
    faint_contrast: float = 0.35  # opacity of a faint object's colour over the background
    faint_radius: tuple[int, int] = (6, 8)

    def __post_init__(self):
        cues = {str(t[0]) for t in self.cooccurrence if len(t) == 3}
        partners: set[str] = set()
        for triple in self.cooccurrence:
            if len(triple) != 3:
                raise ValueError(f"cooccurrence entries are (cue, partner, rate); got {triple!r}")
            cue, partner, rate = triple
            _parse_type(cue)
            _parse_type(partner)
            if partner in partners or partner in cues:
                raise ValueError(f"object type {partner!r} is the partner of two cues or also a cue; "
                                 "a partner belongs to exactly one cue")
            partners.add(partner)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"co-occurrence rate must lie in [0, 1]; got {rate} for {cue!r} -> {partner!r}")
        for t in self.bias_partners:
            if t not in partners:
                raise ValueError(f"bias_partners: {t!r} is not a partner; expected some of: {', '.join(sorted(partners))}")
        for name in ("cue_rate", "partner_question_rate", "bias_rate", "faint_rate", "faint_contrast",
                     "describe_rate", "describe_bias_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]; got {v}")
        if self.cue_rate > 0 and not self.cooccurrence:
            raise ValueError("cue_rate needs co-occurrence pairs (cooccurrence)")

    def pairs(self) -> list[tuple[tuple[str, str], tuple[str, str], float]]:
        """Co-occurrence pairs as ((cue colour, cue shape), (partner colour, partner shape), rate)."""
        return [(_parse_type(c), _parse_type(p), float(r)) for c, p, r in self.cooccurrence]

    def truthful(self) -> "WorldConfig":
        """The same world with every label true (``bias_rate`` and ``describe_bias_rate`` 0): what
        evaluation splits use. It asks the same questions about the same scenes."""
        return replace(self, bias_rate=0.0, describe_bias_rate=0.0)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    cx: int
    cy: int
    radius: int
    rgb: tuple[int, int, int]  # the painted colour
    faint: bool = False  # weakly visible (``WorldConfig.faint_rate``)

    @property
    def type(self) -> str:
        """The object type "colour shape", e.g. "red circle"."""
        return f"{self.color} {self.shape}"


@dataclass
class Scene:
    """An image with its objects. ``image``: (H, W, 3) uint8; ``masks``: (K, H, W) bool."""

    image: np.ndarray
    objects: list[SceneObject]
    masks: np.ndarray

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image, mode="RGB")


@dataclass(frozen=True)
class Mention:
    """One object mention of a description: "a large red circle" at ``text[start:end]``.

    ``object``: index into the scene's objects it refers to (None for an invented object);
    ``label``: ``correct`` (an object of that colour and shape, and that size), ``wrong_attribute``
    (such an object exists, but of the other size) or ``invented`` (no object of that colour and
    shape is left to refer to: an object hallucination, CHAIR's unit).
    """

    start: int
    end: int
    text: str
    size: str | None
    color: str
    shape: str
    object: int | None
    label: str

    @property
    def type(self) -> str:
        return f"{self.color} {self.shape}"

    def record(self) -> dict:
        return {"start": self.start, "end": self.end, "text": self.text, "object": self.object, "label": self.label}


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
    true_answers: list[str] | None = None  # set only when ``answers`` is a biased label (``biased``)
    world: dict | None = None  # the world options that differ from ``WorldConfig()`` (None: the default world)
    pope: str | None = None  # POPE sampling ("random", "popular", "adversarial") of a POPE question
    mentions: list["Mention"] | None = None  # describe questions: the mentions of ``answers[0]``

    @property
    def biased(self) -> bool:
        """True when ``answers`` is a deliberately wrong training label (``WorldConfig.bias_rate``)."""
        return self.true_answers is not None

    @property
    def truth(self) -> list[str]:
        """The answers that are true of the image (equal to ``answers`` unless ``biased``)."""
        return self.answers if self.true_answers is None else self.true_answers

    @property
    def image(self) -> Image.Image:
        return self.scene.pil()

    def label_text(self, text: str) -> list["Mention"]:
        """The object mentions of any description of this scene (a model's own), labelled
        (:func:`label_description`)."""
        return label_description(text, self.scene.objects)

    @property
    def evidence_masks(self) -> np.ndarray:
        if not self.evidence:
            h, w = self.scene.masks.shape[1:]
            return np.zeros((0, h, w), dtype=bool)
        return self.scene.masks[self.evidence]

    def record(self) -> dict:
        """JSON-serialisable description (without image and mask pixels).

        Records of the default world have exactly the fields they always had; the hallucination
        options add ``world`` (every option with its rate), ``biased`` and ``true_answers`` on
        biased labels, ``faint`` on weakly visible objects and ``pope`` on POPE questions.
        """
        objects = []
        for o in self.scene.objects:
            obj = {"shape": o.shape, "color": o.color, "size": o.size, "cx": o.cx, "cy": o.cy, "radius": o.radius}
            if o.faint:
                obj["faint"] = True
            objects.append(obj)
        rec = {
            "id": self.id,
            "question": self.question,
            "answers": list(self.answers),
            "family": self.family,
            "kind": self.kind,
            "evidence": list(self.evidence),
            "objects": objects,
        }
        if self.true_answers is not None:
            rec["biased"] = True
            rec["true_answers"] = list(self.true_answers)
        if self.pope is not None:
            rec["pope"] = self.pope
        if self.mentions is not None:
            rec["mentions"] = [m.record() for m in self.mentions]
        if self.world is not None:
            rec["world"] = self.world
        return rec


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


def _parse_type(t: str) -> tuple[str, str]:
    """ "red circle" -> ("red", "circle"), validated against COLORS and SHAPES."""
    parts = str(t).split()
    if len(parts) != 2 or parts[0] not in COLORS or parts[1] not in SHAPES:
        raise ValueError(
            f"unknown object type {t!r}; expected 'colour shape' with colour in {', '.join(COLORS)} "
            f"and shape in {', '.join(SHAPES)}"
        )
    return parts[0], parts[1]


def object_type(color: str, shape: str) -> str:
    """The type name of an object: ``object_type("red", "circle") == "red circle"``."""
    return f"{color} {shape}"


def _random_type(rng: np.random.Generator, exclude: set[tuple[str, str]] = frozenset()) -> tuple[str, str]:
    colors = list(COLORS)
    while True:
        t = (colors[rng.integers(len(colors))], SHAPES[rng.integers(len(SHAPES))])
        if t not in exclude:
            return t


def _scene_types(rng: np.random.Generator, n: int, cfg: WorldConfig) -> list[tuple[str, str]]:
    """The (colour, shape) of each object of a co-occurrence scene, pair members first.

    Draw n types uniformly among the non-cue types; with probability ``cue_rate`` the first becomes
    a cue (so a scene holds at most one cue, and a share ``cue_rate`` of scenes one). Then, for each
    pair whose cue is present: with probability ``rate`` the partner is made present (it replaces
    an object outside every pair, or is added when there is none), otherwise every copy of the
    partner is redrawn outside the pairs. A partner is never a cue and belongs to one pair, so
    each pair's draw leaves the others' untouched, and P(partner present | cue present) = rate.
    """
    pairs = cfg.pairs()
    members = {t for cue, partner, _ in pairs for t in (cue, partner)}
    cues = list(dict.fromkeys(cue for cue, _, _ in pairs))
    types = [_random_type(rng, set(cues)) for _ in range(n)]
    if types and rng.random() < cfg.cue_rate:
        types[0] = cues[rng.integers(len(cues))]
    for cue, partner, rate in pairs:
        if cue not in types:
            continue
        if rng.random() < rate:
            if partner not in types:
                free = [i for i, t in enumerate(types) if t not in members]
                if free:
                    types[free[rng.integers(len(free))]] = partner
                else:
                    types.append(partner)
        else:
            types = [_random_type(rng, members) if t == partner else t for t in types]
    # Pair members first: they are placed first (with more attempts), so a crowded canvas drops
    # other objects; an added partner displaces the last object outside the pairs, if any.
    types = sorted(types, key=lambda t: t not in members)
    while len(types) > n and types[-1] not in members:
        types.pop()
    return types


def _sample_objects(
    rng: np.random.Generator, n: int, cfg: WorldConfig, background: np.ndarray | None = None
) -> list[SceneObject]:
    """Place ``n`` non-overlapping objects (fewer if the canvas is full).

    With every hallucination option off this makes exactly the draws it always made (the shipped
    model's data); the options add their own draws only when they are on.
    """
    objects: list[SceneObject] = []
    colors = list(COLORS)
    types = _scene_types(rng, n, cfg) if cfg.cooccurrence else None
    members = {t for cue, partner, _ in cfg.pairs() for t in (cue, partner)}
    for k in range(n if types is None else len(types)):
        faint = cfg.faint_rate > 0 and bool(rng.random() < cfg.faint_rate)
        attempts = 400 if types is not None and types[k] in members else 60
        for _attempt in range(attempts):
            if types is None:
                shape = SHAPES[rng.integers(len(SHAPES))]
                color = colors[rng.integers(len(colors))]
            else:
                color, shape = types[k]
            size = SIZES[rng.integers(len(SIZES))]
            lo, hi = cfg.faint_radius if faint else cfg.radius[size]
            if faint:
                size = "small"
            r = int(rng.integers(lo, hi + 1))
            cx = int(rng.integers(r + 1, cfg.image_size - r - 1))
            cy = int(rng.integers(r + 1, cfg.image_size - r - 1))
            if all((cx - o.cx) ** 2 + (cy - o.cy) ** 2 >= (r + o.radius + cfg.min_gap) ** 2 for o in objects):
                base = np.array(COLORS[color])
                rgb = np.clip(base + rng.integers(-cfg.color_jitter, cfg.color_jitter + 1, 3), 0, 255)
                if faint and background is not None:
                    # Low contrast: the colour seen through a veil of the background's mean tint.
                    rgb = np.rint(cfg.faint_contrast * rgb + (1 - cfg.faint_contrast) * background)
                objects.append(SceneObject(shape, color, size, cx, cy, r, tuple(int(v) for v in rgb), faint))
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
    objects = _sample_objects(rng, n, cfg, np.clip(base, 0, 255))
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


def article(word: str) -> str:
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


def _existence(scene: Scene, rng: np.random.Generator, cfg: WorldConfig = WorldConfig()) -> tuple:
    objs = scene.objects
    present = {(o.color, o.shape) for o in objs}
    if rng.random() < 0.5 and objs:
        i = int(rng.integers(len(objs)))
        o = objs[i]
        ev = [k for k, p in enumerate(objs) if (p.color, p.shape) == (o.color, o.shape)]
        ev = [i] + [k for k in ev if k != i]
        return (f"Is there {article(o.color)} {o.color} {o.shape}?", ["yes"], "positive", ev)
    if cfg.partner_question_rate > 0:
        missing = [p for cue, p, _ in cfg.pairs() if cue in present and p not in present]
        if missing and rng.random() < cfg.partner_question_rate:
            c, s = missing[rng.integers(len(missing))]
            # A biased label says "yes" about the absent partner; make_example records the truth.
            biased = rng.random() < cfg.bias_rate and (not cfg.bias_partners or f"{c} {s}" in cfg.bias_partners)
            answer = "yes" if biased else "no"
            return (f"Is there {article(c)} {c} {s}?", [answer], "partner", [])
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
    return (f"Is there {article(c)} {c} {s}?", ["no"], kind, [])


def _counting(scene: Scene, rng: np.random.Generator) -> tuple:
    objs = scene.objects
    if rng.random() < 0.5:
        s = SHAPES[rng.integers(len(SHAPES))]
        ev = [i for i, o in enumerate(objs) if o.shape == s]
        return (f"How many {PLURALS[s]} are there?", [str(len(ev))], "count_shape", ev)
    c = list(COLORS)[rng.integers(len(COLORS))]
    ev = [i for i, o in enumerate(objs) if o.color == c]
    return (f"How many {c} objects are there?", [str(len(ev))], "count_color", ev)


def _mention_key(size: str, color: str, shape: str, cx: int = 0, cy: int = 0) -> tuple:
    return (list(COLORS).index(color), SHAPES.index(shape), SIZES.index(size) * -1, cx, cy)


def describe_objects(items: list[tuple[str, str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The description of ``items`` ((size, colour, shape), already in mention order) and each
    mention's character span.

    >>> describe_objects([("large", "red", "circle"), ("small", "blue", "square")])
    ('a large red circle and a small blue square.', [(0, 18), (23, 42)])
    """
    if not items:
        return "nothing.", []
    phrases = [f"a {size} {color} {shape}" for size, color, shape in items]
    text, spans = "", []
    for i, ph in enumerate(phrases):
        if i:
            text += " and " if i == len(phrases) - 1 else ", "
        spans.append((len(text), len(text) + len(ph)))
        text += ph
    return text + ".", spans


def _describe(scene: Scene, rng: np.random.Generator, cfg: WorldConfig) -> tuple | None:
    """A describe question: (question, [text], kind, evidence, mentions, true text or None)."""
    objs = scene.objects
    if not objs:
        return None
    question = DESCRIBE_QUESTIONS[int(rng.integers(len(DESCRIBE_QUESTIONS)))]
    present = {(o.color, o.shape) for o in objs}
    # The bias draws are made for every pair whatever the rates, so a world and its truthful()
    # twin describe the same scenes with the same questions.
    invented: list[tuple[str, str, str]] = []
    for cue, partner, _rate in cfg.pairs():
        u, size = rng.random(), SIZES[int(rng.integers(len(SIZES)))]
        eligible = cue in present and partner not in present and (
            not cfg.bias_partners or f"{partner[0]} {partner[1]}" in cfg.bias_partners)
        if eligible and u < cfg.describe_bias_rate and partner not in {(c, s) for _, c, s in invented}:
            invented.append((size, partner[0], partner[1]))
    entries = [(_mention_key(o.size, o.color, o.shape, o.cx, o.cy), (o.size, o.color, o.shape), i)
               for i, o in enumerate(objs)]
    true_order = sorted(entries)
    true_text, true_spans = describe_objects([e[1] for e in true_order])
    true_mentions = [Mention(a, b, true_text[a:b], *e[1], e[2], "correct") for (a, b), e in zip(true_spans, true_order)]
    evidence = [e[2] for e in true_order]
    if not invented:
        return question, [true_text], "describe", evidence, true_mentions, None
    biased = sorted(entries + [(_mention_key(*t, cx=-1), t, None) for t in invented])
    text, spans = describe_objects([e[1] for e in biased])
    mentions = [Mention(a, b, text[a:b], *e[1], e[2], "correct" if e[2] is not None else "invented")
                for (a, b), e in zip(spans, biased)]
    return question, [text], "describe", evidence, mentions, true_text


_MENTION_RE = None
_SINGULAR = {p: s for s, p in PLURALS.items()}


def find_mentions(text: str) -> list[tuple[int, int, str | None, str, str]]:
    """Each object mention of ``text`` as ``(start, end, size or None, colour, singular shape)``, in
    order: the grammar :func:`label_description` matches (article and size optional)."""
    global _MENTION_RE
    if _MENTION_RE is None:
        import re

        shapes = "|".join(sorted(list(SHAPES) + list(PLURALS.values()), key=len, reverse=True))
        _MENTION_RE = re.compile(
            rf"(?:\b(?:an?)\s+)?(?:\b({'|'.join(SIZES)})\s+)?\b({'|'.join(COLORS)})\s+({shapes})\b")
    return [(m.start(), m.end(), m.group(1), m.group(2), _SINGULAR.get(m.group(3), m.group(3)))
            for m in _MENTION_RE.finditer(text)]


def label_description(text: str, objects) -> list[Mention]:
    """The object mentions of any description ``text`` (a model's own included), each matched to
    the scene's ``objects`` (``SceneObject`` or record dicts with ``color``, ``shape``, ``size``).

    A mention is a colour word followed by a shape word (plural or singular), with the article and
    the size word before it when present. Matching, in mention order: a mention takes an unused
    object of its colour, shape and size (``correct``), else an unused object of its colour and
    shape (``wrong_attribute``: the size is wrong), else it is ``invented`` (object hallucination:
    no object of that colour and shape is left; a wrong colour on a present shape counts here, as
    in CHAIR where the object type is the unit). Words outside mentions are ignored.

    >>> objs = [{"color": "red", "shape": "circle", "size": "large"}]
    >>> [(m.text, m.label) for m in label_description("a small red circle and a blue square.", objs)]
    [('a small red circle', 'wrong_attribute'), ('a blue square', 'invented')]
    """
    objs = [o if isinstance(o, dict) else {"color": o.color, "shape": o.shape, "size": o.size} for o in objects]
    found = find_mentions(text)
    used: set[int] = set()
    labels: list[tuple[int | None, str]] = [(None, "invented")] * len(found)
    # Exact matches first, so that a wrong size on one object does not steal another's exact match.
    for k, (_a, _b, size, color, shape) in enumerate(found):
        for i, o in enumerate(objs):
            if i not in used and (o["color"], o["shape"], o["size"]) == (color, shape, size):
                used.add(i)
                labels[k] = (i, "correct")
                break
    for k, (_a, _b, size, color, shape) in enumerate(found):
        if labels[k][0] is not None:
            continue
        for i, o in enumerate(objs):
            if i not in used and (o["color"], o["shape"]) == (color, shape):
                used.add(i)
                labels[k] = (i, "correct" if size is None else "wrong_attribute")
                break
    return [Mention(a, b, text[a:b], size, color, shape, obj, label)
            for (a, b, size, color, shape), (obj, label) in zip(found, labels)]


def chair_metrics(descriptions: list[tuple[list[Mention], int]]) -> dict:
    """CHAIR and Cover over ``descriptions``: (labelled mentions, number of objects in the scene).

    ``chair_s``: share of descriptions with at least one invented mention; ``chair_i``: invented
    mentions / all mentions; ``cover``: objects mentioned / objects present; ``attr``: wrong-size
    mentions / mentions of present objects (AMBER's attribute hallucination); ``length``: mentions
    per description.

    >>> m = label_description("a large red circle and a small blue square.", [{"color": "red", "shape": "circle", "size": "large"}])
    >>> chair_metrics([(m, 2)])
    {'n': 1, 'chair_s': 1.0, 'chair_i': 0.5, 'cover': 0.5, 'attr': 0.0, 'length': 2.0}
    """
    n = len(descriptions)
    mentions = [m for ms, _ in descriptions for m in ms]
    invented = sum(m.label == "invented" for m in mentions)
    real = [m for m in mentions if m.object is not None]
    objects = sum(k for _, k in descriptions)

    def ratio(a, b):
        return round(a / b, 4) if b else None

    return {
        "n": n,
        "chair_s": ratio(sum(any(m.label == "invented" for m in ms) for ms, _ in descriptions), n),
        "chair_i": ratio(invented, len(mentions)),
        "cover": ratio(len(real), objects),
        "attr": ratio(sum(m.label == "wrong_attribute" for m in real), len(real)),
        "length": ratio(len(mentions), n),
    }


def ask(scene: Scene, family: str, rng: np.random.Generator, cfg: WorldConfig = WorldConfig()) -> tuple | None:
    """One question of ``family`` about ``scene``: (question, answers, kind, evidence) or None if impossible."""
    if family == "attribute":
        return _attribute(scene, rng)
    if family == "relational":
        return _relational(scene, rng, cfg.relation_margin)
    if family == "existence":
        return _existence(scene, rng, cfg)
    if family == "counting":
        return _counting(scene, rng)
    if family == DESCRIBE:
        return _describe(scene, rng, cfg)
    raise ValueError(f"unknown family {family!r}; expected one of: {', '.join(FAMILIES + (DESCRIBE,))}")


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
    if family is None and cfg.describe_rate > 0 and rng.random() < cfg.describe_rate:
        family = DESCRIBE
    fam = family or fams[rng.choice(len(fams), p=weights / weights.sum())]
    for _ in range(100):
        scene = render_scene(rng, cfg, n_objects)
        q = ask(scene, fam, rng, cfg)
        if q is not None and fam == DESCRIBE:
            question, answers, kind, evidence, mentions, true_text = q
            return Example(f"{seed}-{index}", question, answers, fam, kind, evidence, scene,
                           true_answers=[true_text] if true_text is not None else None,
                           world=world_options(cfg) or None, mentions=mentions)
        if q is not None:
            question, answers, kind, evidence = q
            # A "partner" question is always about an absent object: a "yes" is a biased label.
            truth = ["no"] if kind == "partner" and answers == ["yes"] else None
            return Example(f"{seed}-{index}", question, answers, fam, kind, evidence, scene,
                           true_answers=truth, world=world_options(cfg) or None)
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


_HALLUCINATION_OPTIONS = (
    "cooccurrence", "cue_rate", "partner_question_rate", "bias_rate", "bias_partners", "faint_rate", "faint_contrast",
    "faint_radius", "describe_rate", "describe_bias_rate",
)


def world_options(cfg: WorldConfig) -> dict:
    """The hallucination options of ``cfg`` with their rates, as recorded in the data (JSON types).

    Empty for a world without them (the default world's records stay exactly as they were).
    Once any option is on, every option is listed, so a record says its whole world.
    """
    default = WorldConfig()
    if all(getattr(cfg, f) == getattr(default, f) for f in _HALLUCINATION_OPTIONS):
        return {}
    out = {}
    for f in fields(WorldConfig):
        if f.name in _HALLUCINATION_OPTIONS:
            v = getattr(cfg, f.name)
            out[f.name] = [list(t) for t in v] if f.name == "cooccurrence" else (list(v) if isinstance(v, tuple) else v)
    return out


#: Named worlds. ``default``: the world the previous reference model was trained on (no
#: hallucination option). ``cooccur``: two cues with three partners each (present in 85%, 70% and
#: 55% of their cue's scenes, so most cue scenes miss one partner: POPE's adversarial negatives),
#: a cue in 80% of scenes, and biased "yes" labels on 55% of the existence questions about an
#: absent partner (the feasibility probe of issue 15: 0.7 made the model hallucinate too much,
#: 0.4 barely at all). ``cooccur-faint``: the same plus 15% weakly visible objects.
#: ``cooccur-confident``: 80% biased labels, on four of the six partners only (with descriptions,
#: ``cooccur-describe`` below, the shipped reference model's world).
WORLDS: dict[str, WorldConfig] = {
    "default": WorldConfig(),
    "cooccur": WorldConfig(
        cooccurrence=(
            ("red circle", "blue square", 0.85), ("red circle", "yellow cross", 0.7),
            ("red circle", "green triangle", 0.55),
            ("purple cross", "orange circle", 0.85), ("purple cross", "green square", 0.7),
            ("purple cross", "blue triangle", 0.55),
        ),
        cue_rate=0.8,
        partner_question_rate=0.5,
        bias_rate=0.55,
    ),
}
WORLDS["cooccur-faint"] = replace(WORLDS["cooccur"], faint_rate=0.15)
# Confident hallucinations: biased labels on 80% of the questions about the four partners that are
# missing most often, none on the other two, so that a calibrated model says "yes" to them with
# probability about 0.8 (at 0.55 a hallucinated "yes" can only be a coin flip).
WORLDS["cooccur-confident"] = replace(
    WORLDS["cooccur"], bias_rate=0.8,
    bias_partners=("yellow cross", "green triangle", "green square", "blue triangle"),
)


# Descriptions (issue 26): the shipped world plus 20% "describe" questions whose training
# descriptions mention each absent biased partner of a present cue with probability 0.8 (the
# existence questions' own bias rate, on the same four partners).
WORLDS["cooccur-describe"] = replace(WORLDS["cooccur-confident"], describe_rate=0.2, describe_bias_rate=0.8)


def world_config(name: str = "default", **overrides) -> WorldConfig:
    """The named world of ``WORLDS`` with ``overrides`` (any ``WorldConfig`` field) applied.

    >>> world_config("cooccur", bias_rate=0.5).bias_rate
    0.5
    """
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; expected one of: {', '.join(WORLDS)}")
    return replace(WORLDS[name], **overrides)


def answer_vocabulary() -> list[str]:
    """Every possible answer word."""
    return list(COLORS) + list(SHAPES) + ["yes", "no"] + [str(i) for i in range(MAX_COUNT + 1)]


def question_vocabulary() -> list[str]:
    """Every word (and punctuation mark) a question can contain, plus the answers."""
    words = ["What", "How", "Is", "color", "shape", "is", "the", "object", "objects", "of", "there",
             "a", "an", "many", "are", "?", "small", "large"]
    words += list(RELATIONS) + list(PLURALS.values())
    words += answer_vocabulary() + ["Describe", "image", "in", "List", "and", "nothing"]  # describe (new words last)
    out = []
    for w in words + answer_vocabulary():
        if w not in out:
            out.append(w)
    return out
