"""Write ShapesVQA examples to disk: PNG images, PNG evidence masks and ``data.jsonl``.

Layout of ``OUT`` (see docs/shapesvqa.md)::

    OUT/data.jsonl                one JSON record per question
    OUT/images/{id}.png           the RGB scene
    OUT/masks/{id}_{k}.png        evidence mask k of question id (L mode, 255 = object pixel)

Each record: ``id``, ``image`` and ``evidence_masks`` (paths relative to data.jsonl), ``question``,
``answers``, ``family``, plus extra fields ``kind``, ``evidence`` (object indices, queried first),
``objects`` (shape, colour, size, centre, radius of every object) and ``seed``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from .world import Example

__all__ = ["DATA_FILE", "export_examples", "merge_jsonl", "read_jsonl"]

DATA_FILE = "data.jsonl"


def export_examples(examples: Iterable[Example], out: Path | str, seed: int | None = None) -> Path:
    """Write ``examples`` under ``out``; returns the path of the JSONL file."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    path = out / DATA_FILE
    with path.open("w") as f:
        for ex in examples:
            img_rel = f"images/{ex.id}.png"
            ex.image.save(out / img_rel)
            mask_rels = []
            for k, m in enumerate(ex.evidence_masks):
                rel = f"masks/{ex.id}_{k}.png"
                Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(out / rel)
                mask_rels.append(rel)
            rec = {"id": ex.id, "image": img_rel, "question": ex.question, "answers": ex.answers,
                   "family": ex.family, "evidence_masks": mask_rels}
            rec.update({k: v for k, v in ex.record().items() if k not in rec})
            if seed is not None:
                rec["seed"] = seed
            f.write(json.dumps(rec) + "\n")
    return path


def read_jsonl(path: Path | str) -> list[dict]:
    """Records of a data.jsonl file, with ``image`` and ``evidence_masks`` resolved to absolute paths."""
    path = Path(path)
    recs = []
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            r["image"] = str(path.parent / r["image"])
            r["evidence_masks"] = [str(path.parent / m) for m in r["evidence_masks"]]
            recs.append(r)
    return recs


def merge_jsonl(out: Path | str, sources: Iterable[Path | str]) -> Path:
    """One data.jsonl at ``out`` holding every record of ``sources`` (data.jsonl files, in order), with
    ``image`` and ``evidence_masks`` rewritten relative to ``out``'s folder (the files stay where they
    are). Record ids must be unique across the sources (seeds make them so)."""
    import os

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    with out.open("w") as f:
        for src in sources:
            for r in read_jsonl(src):
                if r["id"] in seen:
                    raise ValueError(f"record id {r['id']!r} appears in two sources; export them with other seeds")
                seen.add(r["id"])
                r["image"] = os.path.relpath(r["image"], out.parent)
                r["evidence_masks"] = [os.path.relpath(m, out.parent) for m in r["evidence_masks"]]
                f.write(json.dumps(r) + "\n")
    return out
