"""Accuracy and pointing-game evaluation of a VLM on ShapesVQA.

:func:`evaluate` generates an answer for every example (greedy, through the model's own processor
and ``generate``), scores it (exact match against ``answers``), takes the relevancy map of the
first answer token with the chosen method, and reports per family:

- ``accuracy``;
- ``pointing`` over correct answers whose question has evidence: ``hit`` (argmax patch on the
  queried object: ``evidence[0]`` for attribute and relational questions, the union of the
  evidence objects for existence and counting), ``chance`` (mean share of patches on that
  target = the hit rate of a uniformly random argmax), ``mass`` (mean share of the map's mass on
  the target) and ``on_other`` (argmax on another object instead);
- ``pointing_incorrect``: the same over wrong answers.

Patches belong to an object by :func:`shapesvqa.grounding.object_patches` (>= 30% coverage).
Methods: ``gradient`` (exact Chefer relevancy, ``fastrm_core.relevancy.gradient_relevancy_batch``) and
``proxy`` (a FastRM proxy's per-token maps captured during generation).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import numpy as np
import torch

from fastrm_core.relevancy import gradient_relevancy_batch

from .grounding import object_patches, pointing
from .model import prompt
from .world import FAMILIES, Example, WorldConfig

__all__ = ["METHODS", "evaluate", "evaluate_describe", "evaluate_pope", "first_word", "summarize", "token_text"]

METHODS = ("gradient", "proxy", "none")


def first_word(text: str) -> str:
    """Lower-case first word without punctuation: ' Red.' -> 'red' (ShapesVQA answers are one word;
    not :func:`fastrm_common.vqa.normalize_answer`, which keeps every word)."""
    words = text.strip().lower().replace(".", " ").replace(",", " ").split()
    return words[0] if words else ""


def _target(ex: Example, patch_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(target patches, other objects' patches), both (g, g) bool, or None without evidence."""
    if not ex.evidence:
        return None
    sel = [ex.evidence[0]] if ex.family in ("attribute", "relational") else list(ex.evidence)
    target = patch_masks[sel].any(0)
    rest = [k for k in range(len(patch_masks)) if k not in sel]
    others = patch_masks[rest].any(0) if rest else np.zeros_like(target)
    return target, others & ~target


def _gradient_maps(model, inputs: dict, out: torch.Tensor, rows: list[int]) -> dict[int, np.ndarray]:
    """First-answer-token gradient maps (g, g) for the given batch rows."""
    maps: dict[int, np.ndarray] = {}
    if not rows:
        return maps
    idx = torch.tensor(rows)
    sub = {k: v[idx] for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.shape[0] == out.shape[0]}
    prompt_len = inputs["input_ids"].shape[1]
    rels = gradient_relevancy_batch(model, sub, out[idx][:, prompt_len : prompt_len + 1])
    for r, rel in zip(rows, rels):
        maps[r] = rel.maps[0].float().numpy()
    return maps


def evaluate(
    model,
    processor,
    examples: Sequence[Example],
    method: str = "gradient",
    proxy=None,
    batch_size: int = 32,
    max_new_tokens: int = 4,
    on_batch: Callable[[int], None] | None = None,
    map_when: Callable[[Example, str], bool] | None = None,
    keep_maps: bool = False,
) -> dict:
    """Evaluate ``model`` on ``examples``; returns the report dict (see :func:`summarize`).

    ``method``: "gradient", "proxy" (needs ``proxy``, a ``fastrm_core.proxy.FastRMProxy``) or "none"
    (accuracy only). ``on_batch(n_done)`` is called after each batch (progress bars). Answers are
    scored against ``Example.truth`` (the true answers, also for a biased training label).
    ``map_when(example, prediction)`` chooses the rows that get a map (default: questions with
    evidence); ``keep_maps`` adds ``report["maps"]``, one (g, g) array or None per row.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of: {', '.join(METHODS)}")
    if method == "proxy" and proxy is None:
        raise ValueError("method 'proxy' needs a proxy")
    patch = processor.patch_size
    rows_out: list[dict] = []
    maps_out: list[np.ndarray | None] = []
    model.eval()
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        inputs = processor(
            images=[ex.image for ex in chunk], text=[prompt(ex.question) for ex in chunk],
            return_tensors="pt", padding=True,
        )
        prompt_len = inputs["input_ids"].shape[1]
        if method == "proxy":
            from fastrm_core.capturing import capture

            with torch.no_grad(), capture(model, proxy) as cap:
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            proxy_maps = cap.maps[:, 0].float().numpy()  # (B, rows, cols) first answer token
        else:
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        texts = processor.tokenizer.batch_decode(out[:, prompt_len:], skip_special_tokens=True)
        preds = [first_word(t) for t in texts]
        recs = []
        for ex, pred in zip(chunk, preds):
            pm = object_patches(ex.scene.masks, patch) if len(ex.scene.objects) else np.zeros((0, 1, 1), bool)
            recs.append({"ex": ex, "pred": pred, "correct": pred in ex.truth, "pm": pm})
        wanted = map_when or (lambda ex, _pred: bool(ex.evidence))
        need = [i for i, r in enumerate(recs) if wanted(r["ex"], r["pred"])] if method != "none" else []
        if method == "gradient":
            maps = _gradient_maps(model, inputs, out, need)
        elif method == "proxy":
            maps = {i: proxy_maps[i] for i in need}
        else:
            maps = {}
        for i, r in enumerate(recs):
            ex = r["ex"]
            row = {"id": ex.id, "family": ex.family, "kind": ex.kind, "n_objects": len(ex.scene.objects),
                   "question": ex.question, "answers": ex.answers, "prediction": r["pred"], "correct": r["correct"]}
            tgt = _target(ex, r["pm"])
            if i in maps and tgt is not None:
                row.update(pointing(maps[i], *tgt))
            rows_out.append(row)
            maps_out.append(maps.get(i))
        if on_batch is not None:
            on_batch(len(rows_out))
    report = summarize(rows_out)
    if keep_maps:
        report["maps"] = maps_out
    return report


def evaluate_pope(
    model,
    processor,
    questions: dict[str, list[Example]],
    cfg: WorldConfig = WorldConfig(),
    method: str = "gradient",
    proxy=None,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """POPE table and the maps of hallucinated "yes" answers (see :mod:`shapesvqa.pope`).

    ``questions``: {sampling: examples} from :func:`shapesvqa.pope.pope_questions`; ``cfg``: the
    world of the scenes (its co-occurrence pairs define the ``cooccurring`` map location). A
    question asked in several samplings (the positives) is answered once. Every "yes" answer gets
    a first-answer-token map (``method`` "none": no maps). Returns {"pope": {sampling: figures of
    :func:`shapesvqa.pope.pope_metrics`}, "hallucination_maps": ..., "rows": [...]}.
    """
    from .pope import hallucination_summary, map_location, pope_metrics, scene_id

    unique: dict[tuple[str, str], Example] = {}
    for exs in questions.values():
        for ex in exs:
            unique.setdefault((scene_id(ex), ex.question), ex)
    order = list(unique.values())
    report = evaluate(model, processor, order, method=method, proxy=proxy, batch_size=batch_size,
                      on_batch=on_batch, map_when=lambda _ex, pred: pred == "yes", keep_maps=True)
    patch = processor.patch_size
    answered = {}
    for ex, row, m in zip(order, report["rows"], report["maps"]):
        loc = None
        if m is not None:
            pm = object_patches(ex.scene.masks, patch) if len(ex.scene.objects) else np.zeros((0,) + m.shape, bool)
            loc = map_location(m, pm, ex.scene, ex.question[:-1].split(maxsplit=3)[-1], cfg)
        answered[(scene_id(ex), ex.question)] = (row["prediction"], loc)
    rows = []
    for sampling, exs in questions.items():
        for ex in exs:
            pred, loc = answered[(scene_id(ex), ex.question)]
            row = {"id": ex.id, "pope": sampling, "kind": ex.kind, "question": ex.question, "answers": ex.answers,
                   "prediction": pred, "correct": pred in ex.answers, "n_objects": len(ex.scene.objects)}
            if loc is not None:
                row["location"] = loc
            rows.append(row)
    table = {s: pope_metrics([ex.answers[0] for ex in exs], [r["prediction"] for r in rows if r["pope"] == s])
             for s, exs in questions.items()}
    return {"pope": table, "hallucination_maps": hallucination_summary(rows), "rows": rows}


def _point_stats(rows: list[dict]) -> dict | None:
    rows = [r for r in rows if "hit" in r]
    if not rows:
        return None
    return {
        "n": len(rows),
        "hit": round(float(np.mean([r["hit"] for r in rows])), 4),
        "chance": round(float(np.mean([r["chance"] for r in rows])), 4),
        "mass": round(float(np.mean([r["mass"] for r in rows])), 4),
        "on_other": round(float(np.mean([r["on_other"] for r in rows])), 4),
    }


def summarize(rows: list[dict]) -> dict:
    """Per-family / per-kind / per-scene-size accuracy and pointing figures from per-example rows."""
    def group(key: Callable[[dict], object]) -> dict:
        groups: dict = defaultdict(list)
        for r in rows:
            groups[key(r)].append(r)
        out = {}
        for k in sorted(groups, key=lambda k: (FAMILIES.index(k) if k in FAMILIES else 99, str(k))):
            g = groups[k]
            out[str(k)] = {
                "n": len(g),
                "accuracy": round(float(np.mean([r["correct"] for r in g])), 4),
                "pointing": _point_stats([r for r in g if r["correct"]]),
                "pointing_incorrect": _point_stats([r for r in g if not r["correct"]]),
            }
        return out

    return {
        "n": len(rows),
        "accuracy": round(float(np.mean([r["correct"] for r in rows])), 4) if rows else None,
        "families": group(lambda r: r["family"]),
        "kinds": group(lambda r: f"{r['family']}/{r['kind']}"),
        "n_objects": group(lambda r: r["n_objects"]),
        "rows": rows,
    }


def token_text(tokenizer, ids: Sequence[int]) -> tuple[str, list[tuple[int, int] | None]]:
    """The decoded text of ``ids`` (special tokens left out, words joined by one space, as the word-level
    reference tokenizer decodes) and each token's character span in it (None for a special token)."""
    special = set(tokenizer.all_special_ids)
    text, spans = "", []
    for t in ids:
        if int(t) in special:
            spans.append(None)
            continue
        piece = tokenizer.decode([int(t)])
        if text:
            text += " "
        spans.append((len(text), len(text) + len(piece)))
        text += piece
    return text, spans


def _mention_map(maps: np.ndarray, spans, mention) -> np.ndarray | None:
    """The map of one mention: the mean of its colour and shape words' maps, each normalised to sum 1."""
    picked = []
    for t, span in enumerate(spans):
        if span is None or t >= len(maps) or not (span[0] >= mention.start and span[1] <= mention.end):
            continue
        word = mention.text[span[0] - mention.start: span[1] - mention.start]
        if word == mention.color or word.startswith(mention.shape):  # "cross" / "crosses"
            m = np.clip(np.asarray(maps[t], dtype=np.float64), 0, None)
            total = m.sum()
            if total > 0:
                picked.append(m / total)
    return np.mean(picked, axis=0) if picked else None


def evaluate_describe(
    model,
    processor,
    examples: Sequence[Example],
    cfg: WorldConfig = WorldConfig(),
    method: str = "proxy",
    proxy=None,
    batch_size: int = 16,
    max_new_tokens: int = 48,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Descriptions (``describe`` questions) of ``examples``: CHAIR, Cover, Attr and where the maps of
    invented mentions look, beside correct ones.

    Each greedy description is labelled with :func:`shapesvqa.world.label_description`; each mention's
    map is the mean of its colour and shape words' maps (each normalised), located with
    :func:`shapesvqa.pope.map_location` relative to the mentioned type (``cooccurring``: the
    co-occurrence partner or cue of that type in the scene). ``method``: "proxy" (needs ``proxy``;
    every token's map from the one ``generate``), "gradient" (the exact maps, one backward per token)
    or "none". Returns {"chair": :func:`~shapesvqa.world.chair_metrics`, "maps": {label: stats},
    "rows": [...]}.
    """
    from .pope import location_stats, map_location
    from .world import chair_metrics, label_description

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of: {', '.join(METHODS)}")
    if method == "proxy" and proxy is None:
        raise ValueError("method 'proxy' needs a proxy")
    tok = processor.tokenizer
    patch = processor.patch_size
    eos = tok.eos_token_id
    rows, labelled = [], []
    model.eval()
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start: start + batch_size])
        inputs = processor(images=[ex.image for ex in chunk], text=[prompt(ex.question) for ex in chunk],
                           return_tensors="pt", padding=True)
        n = inputs["input_ids"].shape[1]
        if method == "proxy":
            from fastrm_core.capturing import capture

            with torch.no_grad(), capture(model, proxy) as cap:
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            all_maps = [cap.maps[b].float().numpy() for b in range(len(chunk))]  # (T, rows, cols)
        else:
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            if method == "gradient":
                rels = gradient_relevancy_batch(model, {k: v for k, v in inputs.items() if torch.is_tensor(v)},
                                                out[:, n:])
                all_maps = [r.maps.float().numpy() for r in rels]
            else:
                all_maps = [None] * len(chunk)
        for b, ex in enumerate(chunk):
            ids = out[b, n:].tolist()
            if eos in ids:
                ids = ids[: ids.index(eos)]
            text, spans = token_text(tok, ids)
            mentions = label_description(text, ex.scene.objects)
            labelled.append((mentions, len(ex.scene.objects)))
            pm = object_patches(ex.scene.masks, patch) if len(ex.scene.objects) else None
            row = {"id": ex.id, "question": ex.question, "description": text, "truth": ex.truth[0],
                   "n_objects": len(ex.scene.objects), "mentions": []}
            for m in mentions:
                rec = {"text": m.text, "label": m.label, "object": m.object, "start": m.start, "end": m.end}
                mm = None if all_maps[b] is None or pm is None else _mention_map(all_maps[b], spans, m)
                if mm is not None:
                    rec["location"] = map_location(mm, pm, ex.scene, m.type, cfg)
                row["mentions"].append(rec)
            rows.append(row)
        if on_batch is not None:
            on_batch(len(rows))

    every = [m for r in rows for m in r["mentions"]]
    maps = {label: location_stats([m for m in every if m["label"] == label])
            for label in ("invented", "wrong_attribute", "correct")}
    return {"chair": chair_metrics(labelled), "maps": maps, "rows": rows}
