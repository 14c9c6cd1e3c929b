"""ShapesVQA's claims: each object mention of a description ("a large red circle") is one claim,
and the scene says whether it is right.

Registered at import as the claim splitter ``shapes`` and the claim labeler ``shapes``
(:mod:`fastrm_common.claims`); the reference preset names the splitter, so a Guard on the
reference model cuts its descriptions into mentions.
"""

from __future__ import annotations

from fastrm_common.claims import LABELERS, SPLITTERS, ClaimSpan

from .world import find_mentions, label_description

__all__ = ["label_mentions", "split_mentions"]


def split_mentions(text: str) -> list[ClaimSpan]:
    """One claim per object mention (colour and shape, with the article and size before them)."""
    return [ClaimSpan(a, b, text[a:b], "object", f"{color} {shape}") for a, b, _size, color, shape in find_mentions(text)]


def label_mentions(text: str, spans: list[ClaimSpan], record: dict) -> list[bool | None]:
    """Each mention of ``spans`` correct (an object of its colour, shape and size is in the record's
    ``objects``) or not (an invented object, or a wrong size), matched as
    :func:`shapesvqa.world.label_description` matches a whole description; None for a claim that
    is no mention."""
    labelled = {(m.start, m.end): m.label for m in label_description(text, record.get("objects") or [])}
    return [None if (s.start, s.end) not in labelled else labelled[(s.start, s.end)] == "correct" for s in spans]


if "shapes" not in SPLITTERS:
    SPLITTERS.add("shapes", split_mentions)
if "shapes" not in LABELERS:
    LABELERS.add("shapes", label_mentions)
