"""Claims: the spans of an answer that each assert one thing, found by a splitter.

A :class:`ClaimSpan` is a character range of the answer text with a ``kind``. A splitter turns a
text into claim spans, in order and without overlap; the Guard then gives each claim the same
signals, scores and verdict as a whole answer, over its own tokens. Splitters live in one registry
(:data:`SPLITTERS`); the built-ins work on any model's text:

``sentences``
    one claim per sentence (``.``, ``!``, ``?`` or a line break ends one; a full stop between
    digits, as in "3.5", does not).
``clauses`` (the default)
    sentences, then list items and clauses: a sentence is cut at ``,`` ``;`` ``:`` and before
    `` and `` / `` but `` / `` or ``; connectives and articles stay with the clause they open.
``objects``
    CHAIR-style object mentions: each occurrence of a word of an object vocabulary (by default
    :data:`COCO_OBJECTS`, the 80 COCO categories with their plurals and common synonyms, written for
    this project) together with the modifiers before it (articles, numbers, adjectives up to the
    previous clause boundary). Words outside mentions belong to no claim.

A world registers its own (ShapesVQA's grammar-aware ``shapes`` splitter). Register yours with
``SPLITTERS.add(name, splitter)``; a splitter is any callable ``text -> list[ClaimSpan]``.

    >>> [c.text for c in split_claims("A dog sits on a red sofa, and a cat sleeps.")]
    ['A dog sits on a red sofa', 'and a cat sleeps']
    >>> [c.text for c in split_claims("A dog sits on a red sofa, and a cat sleeps.", "objects")]
    ['A dog', 'a red sofa', 'a cat']

Limits of the generic splitters: they read punctuation and a short list of connectives, not
syntax, so a clause like "the man, who wears a hat, runs" becomes three claims; the object splitter
finds only listed words (a "puppy" is not a "dog" unless listed) and cannot tell a negated
mention ("there is no dog") from an asserted one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from fastrm_common.errors import InputError, RegistryError
from fastrm_common.registry import Registry

__all__ = ["COCO_OBJECTS", "ClaimSpan", "LABELERS", "ObjectSplitter", "SPLITTERS", "label_objects", "split_claims"]


@dataclass(frozen=True)
class ClaimSpan:
    """One claim of a text: ``text[start:end]``, what kind of span it is, and (for an object
    mention) the object word it names (``object``)."""

    start: int
    end: int
    text: str
    kind: str
    object: str | None = None


class SplitterError(RegistryError):
    """An unknown or taken splitter name."""


#: claim splitters by name: callables ``text -> list[ClaimSpan]``
SPLITTERS: Registry[Callable[[str], list[ClaimSpan]]] = Registry("claim splitter", error=SplitterError)

_SENTENCE_END = re.compile(r"(?<!\d)[.!?](?!\d)|\n+|(?<=\d)[.!?](?=\s|$)")
_CLAUSE_CUT = re.compile(r"[,;:]|\s(?=(?:and|but|or|while|whereas)\s)", re.IGNORECASE)


def _trimmed(text: str, start: int, end: int, kind: str) -> ClaimSpan | None:
    """The span ``text[start:end]`` without surrounding spaces and punctuation, or None when empty."""
    while start < end and (text[start].isspace() or text[start] in ",;:.!?-\u2014\u2013\"'()[]"):
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in ",;:.!?-\u2014\u2013\"'()[]"):
        end -= 1
    if start >= end or not any(ch.isalnum() for ch in text[start:end]):
        return None
    return ClaimSpan(start, end, text[start:end], kind)


def _cut(text: str, start: int, end: int, pattern: re.Pattern, kind: str) -> list[ClaimSpan]:
    out, last = [], start
    for m in pattern.finditer(text, start, end):
        span = _trimmed(text, last, m.start(), kind)
        if span is not None:
            out.append(span)
        last = m.end() if m.group(0).strip() else m.start() + 1
    span = _trimmed(text, last, end, kind)
    if span is not None:
        out.append(span)
    return out


def split_sentences(text: str) -> list[ClaimSpan]:
    """One claim per sentence."""
    return _cut(text, 0, len(text), _SENTENCE_END, "sentence")


def split_clauses(text: str) -> list[ClaimSpan]:
    """Sentences cut into list items and clauses (the default splitter)."""
    out = []
    for s in split_sentences(text):
        parts = _cut(text, s.start, s.end, _CLAUSE_CUT, "clause")
        out += parts if len(parts) > 1 else [ClaimSpan(s.start, s.end, s.text, "sentence")]
    return out


#: COCO's 80 object categories (and their plurals and common synonyms): category -> words
COCO_OBJECTS: dict[str, tuple[str, ...]] = {
    "person": ("person", "people", "man", "men", "woman", "women", "boy", "boys", "girl", "girls", "child",
               "children", "kid", "kids", "player", "players", "guy", "lady", "ladies", "skier", "surfer"),
    "bicycle": ("bicycle", "bicycles", "bike", "bikes"), "car": ("car", "cars"),
    "motorcycle": ("motorcycle", "motorcycles", "motorbike"), "airplane": ("airplane", "airplanes", "plane", "planes", "jet"),
    "bus": ("bus", "buses"), "train": ("train", "trains"), "truck": ("truck", "trucks"), "boat": ("boat", "boats", "ship"),
    "traffic light": ("traffic light", "traffic lights"), "fire hydrant": ("fire hydrant", "hydrant"),
    "stop sign": ("stop sign", "stop signs"), "parking meter": ("parking meter", "parking meters"),
    "bench": ("bench", "benches"), "bird": ("bird", "birds"), "cat": ("cat", "cats", "kitten"),
    "dog": ("dog", "dogs", "puppy"), "horse": ("horse", "horses"), "sheep": ("sheep", "lamb"),
    "cow": ("cow", "cows", "cattle"), "elephant": ("elephant", "elephants"), "bear": ("bear", "bears"),
    "zebra": ("zebra", "zebras"), "giraffe": ("giraffe", "giraffes"), "backpack": ("backpack", "backpacks"),
    "umbrella": ("umbrella", "umbrellas"), "handbag": ("handbag", "handbags", "purse"), "tie": ("tie", "ties"),
    "suitcase": ("suitcase", "suitcases", "luggage"), "frisbee": ("frisbee", "frisbees"),
    "skis": ("skis", "ski"), "snowboard": ("snowboard", "snowboards"), "sports ball": ("ball", "balls"),
    "kite": ("kite", "kites"), "baseball bat": ("baseball bat", "bat"), "baseball glove": ("baseball glove", "glove"),
    "skateboard": ("skateboard", "skateboards"), "surfboard": ("surfboard", "surfboards"),
    "tennis racket": ("tennis racket", "racket"), "bottle": ("bottle", "bottles"),
    "wine glass": ("wine glass", "wine glasses"), "cup": ("cup", "cups", "mug"), "fork": ("fork", "forks"),
    "knife": ("knife", "knives"), "spoon": ("spoon", "spoons"), "bowl": ("bowl", "bowls"),
    "banana": ("banana", "bananas"), "apple": ("apple", "apples"), "sandwich": ("sandwich", "sandwiches"),
    "orange": ("orange", "oranges"), "broccoli": ("broccoli",), "carrot": ("carrot", "carrots"),
    "hot dog": ("hot dog", "hot dogs"), "pizza": ("pizza", "pizzas"), "donut": ("donut", "donuts", "doughnut"),
    "cake": ("cake", "cakes"), "chair": ("chair", "chairs"), "couch": ("couch", "couches", "sofa", "sofas"),
    "potted plant": ("potted plant", "plant", "plants"), "bed": ("bed", "beds"),
    "dining table": ("dining table", "table", "tables"), "toilet": ("toilet", "toilets"),
    "tv": ("tv", "television", "tvs"), "laptop": ("laptop", "laptops"), "mouse": ("mouse",),
    "remote": ("remote", "remotes"), "keyboard": ("keyboard", "keyboards"), "cell phone": ("cell phone", "phone", "phones"),
    "microwave": ("microwave",), "oven": ("oven", "ovens"), "toaster": ("toaster",), "sink": ("sink", "sinks"),
    "refrigerator": ("refrigerator", "fridge"), "book": ("book", "books"), "clock": ("clock", "clocks"),
    "vase": ("vase", "vases"), "scissors": ("scissors",), "teddy bear": ("teddy bear", "teddy bears"),
    "hair drier": ("hair drier", "hair dryer"), "toothbrush": ("toothbrush", "toothbrushes"),
}

_MODIFIER_STOP = re.compile(r"[,;:!?\n]|(?<!\d)\.(?!\d)|\b(?:and|but|or|with|on|in|of|at|near|next|to|by|from|is|are|was|were|has|have|"
                            r"holds?|holding|sits?|sitting|stands?|standing|shows?|showing|contains?|containing|"
                            r"there|see|sees|wears?|wearing|carr(?:y|ies|ying)|looks?|looking)\b",
                            re.IGNORECASE)


_DETERMINER = re.compile(r"\b(?:a|an|the|this|that|these|those|some|several|many|few|his|her|their|its|my|your|our|"
                         r"one|two|three|four|five|six|seven|eight|nine|ten|\d+(?:\.\d+)?)\b", re.IGNORECASE)


class ObjectSplitter:
    """CHAIR-style object mentions of a vocabulary ``{category: words}`` (default :data:`COCO_OBJECTS`).

    A mention is an object word (longest words first, so "hot dog" beats "dog") with its modifiers:
    from the last determiner or number before it ("two small dogs", "the old wooden bench"), looking
    back no further than the previous clause boundary, connective, preposition or common verb; the
    word alone without one. ``ClaimSpan.object`` is its category.
    """

    def __init__(self, vocabulary: dict[str, tuple[str, ...]] | None = None) -> None:
        vocab = COCO_OBJECTS if vocabulary is None else vocabulary
        self.category = {w.lower(): cat for cat, words in vocab.items() for w in words}
        if not self.category:
            raise InputError("an object vocabulary needs at least one word")
        words = sorted(self.category, key=len, reverse=True)
        self._pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)

    def __call__(self, text: str) -> list[ClaimSpan]:
        out: list[ClaimSpan] = []
        floor = 0
        for m in self._pattern.finditer(text):
            start = m.start()
            # back to a boundary (or the previous mention), then from the last determiner or number
            # there ("two small dogs", "the old bench"); without one, the word alone
            stops = [s.end() for s in _MODIFIER_STOP.finditer(text, floor, start)]
            window = max([floor, *stops])
            dets = [d.start() for d in _DETERMINER.finditer(text, window, start)]
            start = dets[-1] if dets else start
            span = _trimmed(text, start, m.end(), "object")
            if span is not None:
                out.append(ClaimSpan(span.start, span.end, span.text, "object", self.category[m.group(1).lower()]))
            floor = m.end()
        return out


def split_claims(text: str, splitter: str | Callable[[str], list[ClaimSpan]] = "clauses") -> list[ClaimSpan]:
    """The claims of ``text`` by ``splitter`` (a registered name or a callable), checked: in order,
    inside the text, not overlapping.

    Raises:
        InputError: ``text`` is not a string, or the splitter returned spans that are not in order.
    """
    if not isinstance(text, str):
        raise InputError(f"claims are split from text, got {type(text).__name__}")
    split = SPLITTERS.get(splitter) if isinstance(splitter, str) else splitter
    spans = list(split(text))
    last = 0
    for s in spans:
        if not (isinstance(s, ClaimSpan) and last <= s.start < s.end <= len(text)):
            raise InputError(f"splitter {splitter!r} returned a span out of order or outside the text: {s!r}")
        last = s.end
    return spans


#: claim labelers by name, for claim-level calibration data: ``labeler(text, spans, record) -> [bool | None]``
#: (each claim correct, wrong, or None when the record cannot tell)
LABELERS: Registry[Callable[[str, list[ClaimSpan], dict], list]] = Registry("claim labeler", error=SplitterError)


def label_objects(text: str, spans: list[ClaimSpan], record: dict) -> list[bool | None]:
    """CHAIR's rule for object mentions: a claim naming an object category (``ClaimSpan.object``) is
    correct when the record's ``objects`` (the categories present in the image) hold it, a
    hallucination otherwise; a claim that names no object cannot be labelled (None).

    >>> spans = split_claims("A dog and a cat on a sofa.", "objects")
    >>> label_objects("", spans, {"objects": ["dog", "couch"]})
    [True, False, True]
    """
    present = record.get("objects")
    if not isinstance(present, list) or not all(isinstance(o, str) for o in present):
        raise InputError("the 'objects' labeler needs each record's 'objects': a list of object categories")
    have = {o.lower() for o in present}
    return [None if s.object is None else s.object.lower() in have for s in spans]


SPLITTERS.add("sentences", split_sentences)
SPLITTERS.add("clauses", split_clauses)
SPLITTERS.add("objects", ObjectSplitter())
LABELERS.add("objects", label_objects)
