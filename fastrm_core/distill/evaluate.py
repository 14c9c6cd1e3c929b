"""Evaluating a FastRM proxy against the exact gradient baseline on a VQA JSONL file.

Per record: one greedy generation with the proxy captured (:func:`fastrm_core.capturing.capture`),
the exact gradient maps of the same tokens (:func:`fastrm_core.relevancy.gradient_relevancy`),
then

1. **classification**: the proxy's per-patch probabilities against the baseline maps binarised
   at the labelling threshold, confusion counts at thresholds 0.1..0.9 pooled over tokens and
   records (-> accuracy, precision, recall, F1). The headline figures are over the *content*
   tokens (:func:`fastrm_common.tokens.content_token_mask`: the maps the Guard scores);
   ``all_tokens`` gives the same over every generated token, end-of-sequence included, and
   ``by_family`` per question family when the records have a ``family`` field (ShapesVQA's).
   Each F1 carries ``f1_ci``, a percentile bootstrap interval over records
   (:func:`metrics.f1_interval`; ``bootstrap`` resamples at level ``confidence``);
2. **correlation**: Pearson and Spearman between each token's proxy probabilities and its
   continuous baseline map (mean over content tokens, and over all tokens; constant maps are
   left out);
3. **perturbation**: one map per record and method (the first content token's by default,
   ``token="mean"`` averages the answer's content tokens), patches ranked by it, then 0..50% of
   them removed (:mod:`fastrm_core.distill.perturbation`; most relevant first = positive,
   least relevant first = negative) and the question answered again greedily. Accuracy
   against the reference answers (:func:`fastrm_common.vqa.is_correct`) and agreement with the
   unperturbed answer, per fraction; AUC = the curve's mean height (:func:`metrics.curve_auc`).
   Methods: ``proxy``, ``gradient``, ``gradcam`` (:mod:`fastrm_core.distill.gradcam`) and
   ``random`` (the mean over ``random_seeds`` seeded permutations);
4. **pointing** (records with ``evidence_masks``, e.g. ShapesVQA): the target is the first
   evidence mask for ``attribute`` and ``relational`` questions (the queried object) and the
   union of the masks otherwise (as ``shapesvqa eval``), downsampled to the patch grid
   (:func:`metrics.mask_to_grid`); hit rate of the argmax patch and mass on the target.

:func:`evaluate_record` returns a JSON-able dict per record (workers send these back) and
:func:`aggregate` turns a list of them into the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from fastrm_core.adapters import VLMAdapter, get_adapter
from fastrm_common.errors import ConfigMismatchError, DataError, GuardrailError, InputError
from fastrm_common.vqa import is_correct, normalize_answer
from fastrm_core.capturing import capture
from fastrm_core.relevancy import gradient_relevancy

from .generation import content_mask, greedy_kwargs, load_image, prepare_inputs
from .methods import Explained, get_method, list_methods
from .perturbation import generate_without_patches

from .metrics import (
    binarize_maps,
    DEFAULT_FRACTIONS,
    DEFAULT_THRESHOLDS,
    classification_scores,
    confusion_counts,
    correlations,
    curve_auc,
    f1_interval,
    mask_to_grid,
    pointing,
    rank_patches,
    removal_masks,
    trivial_baselines,
)

__all__ = ["METHODS", "EvalConfig", "aggregate", "evaluate_record", "evaluate_records"]

METHODS = ("proxy", "gradient", "gradcam", "random")  # the default methods; the registry (.methods) has more
OnRecord = Callable[[dict], None]


@dataclass(frozen=True)
class EvalConfig:
    """Settings of :func:`evaluate_proxy` (recorded in the report)."""

    max_new_tokens: int = 10
    prompt_suffix: str | None = None
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    label_threshold: float | None = None  # None: the proxy's
    methods: tuple[str, ...] = METHODS
    random_seeds: int = 5
    seed: int = 0
    gradcam_layer: int | None = None
    fill: Literal["zero", "mean"] = "zero"
    token: Literal["first", "mean"] = "first"
    perturbation: bool = True
    perturb_batch_size: int = 32
    coverage: float = 0.3
    bootstrap: int = 1000  # resamples of records behind each F1's confidence interval (0: none)
    confidence: float = 0.95

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in list_methods()]
        if unknown:
            raise InputError(f"unknown method(s) {', '.join(unknown)}; expected some of: {', '.join(list_methods())}")
        if self.token not in ("first", "mean"):
            raise InputError(f"unknown token {self.token!r}; expected one of: first, mean")
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if len(self.fractions) < 2 or list(self.fractions) != sorted(self.fractions) or self.fractions[0] != 0:
            raise InputError(f"fractions must start at 0 and increase, got {self.fractions}")
        if self.random_seeds < 1:
            raise InputError(f"random_seeds must be >= 1, got {self.random_seeds}")
        if self.bootstrap < 0:
            raise InputError(f"bootstrap must be >= 0 (0: no confidence interval), got {self.bootstrap}")
        if not 0 < self.confidence < 1:
            raise InputError(f"confidence must be in (0, 1), got {self.confidence}")


# --------------------------------------------------------------------------------------
# one record


_WHOLE_IMAGE_KINDS = ("full", "base", "global")  # regions that show the whole picture on their grid


def _target_mask(record, base_dir: Path | None, regions, coverage: float) -> np.ndarray | None:
    """The evidence target flat over the regions' patches (N_img,) bool, or None without evidence masks
    (or when a region is a crop or tile, whose place in the picture the evaluation does not know)."""
    from PIL import Image

    extra = record.model_extra or {}
    paths = extra.get("evidence_masks") or []
    if not paths:
        return None
    masks = []
    for rel in paths:
        if not Path(rel).is_absolute() and base_dir is None:
            raise DataError(f"evidence mask path {rel!r} is relative: pass base_dir (the JSONL file's folder)")
        path = Path(rel) if Path(rel).is_absolute() else base_dir / rel
        try:
            with Image.open(path) as img:
                masks.append(np.asarray(img.convert("L")) > 127)
        except OSError as exc:
            raise DataError(f"unreadable evidence mask {str(path)!r}: {exc}") from exc
    family = extra.get("family")
    pixels = masks[0] if family in ("attribute", "relational") else np.logical_or.reduce(masks)
    if not pixels.any() or any(r.kind not in _WHOLE_IMAGE_KINDS for r in regions):
        return None
    return np.concatenate([mask_to_grid(pixels, r.grid, coverage).reshape(-1) for r in regions])


def evaluate_record(
    model,
    processor,
    proxy,
    record,
    config: EvalConfig = EvalConfig(),
    *,
    base_dir: str | Path | None = None,
    adapter: VLMAdapter | None = None,
) -> dict:
    """All per-record measurements (a JSON-able dict); ``{"id", "skipped": reason}`` when unusable.

    ``record`` is a :class:`fastrm_common.records.VQARecord` (``id``, ``image``, ``question``,
    ``answers``, optional ``evidence_masks`` and ``family``); ``base_dir`` is the JSONL file's
    folder, against which relative ``evidence_masks`` paths resolve.
    """
    adapter = adapter or get_adapter(model)
    base_dir = Path(base_dir) if base_dir is not None else None
    label_threshold = config.label_threshold or proxy.config.label_threshold
    tok = processor.tokenizer
    try:
        image = load_image(record.image)
        prompt, _ = adapter.build_prompt(processor, record.question, config.prompt_suffix)
        inputs = prepare_inputs(model, processor, image, prompt)
        target = _target_mask(record, base_dir, adapter.regions(inputs), config.coverage)
        gen_kwargs = greedy_kwargs(adapter, config.max_new_tokens)
        with torch.no_grad(), capture(model, proxy, adapter=adapter) as cap:
            out = model.generate(**inputs, **gen_kwargs)
        rel = gradient_relevancy(model, inputs, out, adapter=adapter)
    except (GuardrailError, OSError) as exc:
        return {"id": record.id, "skipped": f"{type(exc).__name__}: {exc}"}

    n_tok = len(rel)
    new = rel.token_ids  # (T,)
    answer = tok.decode(new, skip_special_tokens=True).strip()
    correct = bool(is_correct(answer, record.answers))
    grad = rel.flat_maps.float()  # (T, N)
    probs = cap.row_maps(0)[:n_tok].float()  # (T, N)
    labels = binarize_maps(grad, label_threshold)
    content = content_mask(model, processor, new)  # (T,)
    result: dict = {
        "id": record.id,
        "family": getattr(record, "family", None),
        "answer": answer,
        "correct": correct,
        "n_tokens": n_tok,
        "content": content.tolist(),
        "counts": confusion_counts(probs[content].numpy(), labels[content].numpy(), config.thresholds).tolist(),
        "counts_all": confusion_counts(probs.numpy(), labels.numpy(), config.thresholds).tolist(),
    }
    pairs = [correlations(probs[t].numpy(), grad[t].numpy()) for t in range(n_tok)]
    result["pearson"] = [p for p, _ in pairs]
    result["spearman"] = [s for _, s in pairs]

    chosen = content.nonzero(as_tuple=True)[0]
    if chosen.numel() == 0:
        chosen = torch.tensor([0])
    if config.token == "first":
        chosen = chosen[:1]
    explained = Explained(model=model, inputs=inputs, generated=out, adapter=adapter, gradient=grad, proxy=probs,
                          chosen=chosen, record_id=record.id, seed=config.seed, random_seeds=config.random_seeds,
                          gradcam_layer=config.gradcam_layer)
    method_maps: dict[str, list[np.ndarray]] = {}  # method -> its ranking maps (N,), several for random ones
    for name in config.methods:
        method = get_method(name)
        try:
            method_maps[name] = method.rankings(explained)
        except GuardrailError as exc:
            return {"id": record.id, "skipped": f"{method.label}: {type(exc).__name__}: {exc}"}

    if target is not None:
        point = {}
        for name, maps in method_maps.items():
            scores = [pointing(v, target) for v in maps]
            point[name] = scores[0] if len(scores) == 1 else {
                key: float(np.mean([r[key] for r in scores])) for key in ("hit", "mass", "chance")}
        result["pointing"] = point

    if config.perturbation:
        result.update(_perturb(model, inputs, adapter, gen_kwargs, config, method_maps, tok, record.answers, answer))
    return result


def _perturb(model, inputs, adapter, gen_kwargs, config, method_maps, tok, refs, answer) -> dict:
    """Positive/negative perturbation accuracy and agreement per method and fraction (averaged over a method's maps)."""
    fractions = list(config.fractions)
    rankings: dict[str, list[np.ndarray]] = {m: [rank_patches(v) for v in maps] for m, maps in method_maps.items()}
    # every (method, direction, ranking) x fraction mask; identical masks are generated once
    unique: dict[bytes, int] = {}
    masks: list[np.ndarray] = []
    plan: dict[tuple[str, str], list[list[int]]] = {}
    for method, orders in rankings.items():
        for direction in ("positive", "negative"):
            rows = []
            for order in orders:
                idx = []
                for mask in removal_masks(order, fractions, positive=direction == "positive"):
                    key = mask.tobytes()
                    if key not in unique:
                        unique[key] = len(masks)
                        masks.append(mask)
                    idx.append(unique[key])
                rows.append(idx)
            plan[(method, direction)] = rows
    answers: dict[int, str] = {}
    todo = [i for i, m in enumerate(masks) if m.any()]
    for i, m in enumerate(masks):
        if not m.any():
            answers[i] = answer  # nothing removed: the unperturbed answer
    if todo:
        remove = torch.from_numpy(np.stack([masks[i] for i in todo]))  # (M, N)
        outs = generate_without_patches(model, inputs, remove, adapter=adapter, generate_kwargs=gen_kwargs,
                                        batch_size=config.perturb_batch_size, fill=config.fill)
        for i, ids in zip(todo, outs):
            answers[i] = tok.decode(ids, skip_special_tokens=True).strip()
    base = normalize_answer(answer)
    acc = {i: float(is_correct(a, refs)) for i, a in answers.items()}
    same = {i: float(normalize_answer(a) == base) for i, a in answers.items()}
    curves: dict = {"positive": {}, "negative": {}}
    agree: dict = {"positive": {}, "negative": {}}
    for (method, direction), rows in plan.items():
        curves[direction][method] = np.mean([[acc[i] for i in row] for row in rows], axis=0).tolist()
        agree[direction][method] = np.mean([[same[i] for i in row] for row in rows], axis=0).tolist()
    return {"perturbation": curves, "agreement": agree, "n_generations": len(todo)}


# --------------------------------------------------------------------------------------
# many records


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and not np.isnan(v)]
    return round(float(np.mean(vals)), 4) if vals else None


def aggregate(results: list[dict], config: EvalConfig = EvalConfig(), *, label_threshold: float | None = None) -> dict:
    """The report of a list of :func:`evaluate_record` results (JSON-able dict).

    Every figure is a mean over records (or pooled counts over tokens for classification);
    ``auc`` values are :func:`metrics.curve_auc` of the mean curves.
    """
    done = [r for r in results if "skipped" not in r]
    skipped = [{"id": r["id"], "reason": r["skipped"]} for r in results if "skipped" in r]
    report: dict = {
        "n_records": len(done),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "answer_accuracy": _mean([float(r["correct"]) for r in done]),
        "n_tokens": int(sum(r["n_tokens"] for r in done)),
    }
    def scores(key: str, rows: list[dict] = done) -> dict:
        """The threshold table of one set of tokens, with its label positive rate and trivial baselines."""
        per_record = np.asarray([r[key] for r in rows], dtype=np.int64).reshape(len(rows), len(config.thresholds), 4)
        pooled = per_record.sum(0)  # (K, 4)
        table = [{"threshold": t, **row} for t, row in zip(config.thresholds, classification_scores(pooled))]
        if config.bootstrap and len(rows) > 1:
            bounds = f1_interval(per_record, n_boot=config.bootstrap, level=config.confidence, seed=config.seed)
            for row, (lo, hi) in zip(table, bounds):
                row["f1_ci"] = [round(float(lo), 4), round(float(hi), 4)]
        baselines = trivial_baselines(pooled[0] if len(pooled) else np.zeros(4))  # labels: the same at every threshold
        return {"positive_rate": baselines.pop("positive_rate"), "baselines": baselines, "thresholds": table}

    def correlation(content_only: bool) -> dict:
        keep = [(p, s) for r in done for p, s, c in zip(r["pearson"], r["spearman"], r["content"]) if c or not content_only]
        return {
            "pearson": _mean([p for p, _ in keep]),
            "spearman": _mean([s for _, s in keep]),
            "n_tokens": int(sum(not np.isnan(p) for p, _ in keep)),
        }

    report["n_content_tokens"] = int(sum(sum(r["content"]) for r in done))
    report["classification"] = {
        "label_threshold": label_threshold if label_threshold is not None else config.label_threshold,
        "tokens": "content",
        "f1_ci": {"method": "percentile bootstrap over records", "level": config.confidence,
                  "resamples": config.bootstrap} if config.bootstrap else None,
        "n_tokens": report["n_content_tokens"],
        **scores("counts"),
        "all_tokens": {"n_tokens": report["n_tokens"], **scores("counts_all")},
    }
    by_family: dict[str, list[dict]] = {}  # records that say which kind of question they are (ShapesVQA's)
    for r in done:
        if r.get("family"):
            by_family.setdefault(r["family"], []).append(r)
    if by_family:
        report["classification"]["by_family"] = {
            fam: {"n_records": len(rows), "n_tokens": int(sum(sum(r["content"]) for r in rows)),
                  **scores("counts", rows)}
            for fam, rows in sorted(by_family.items())
        }
    report["correlation"] = {**correlation(True), "all_tokens": correlation(False)}
    with_curves = [r for r in done if "perturbation" in r]
    if with_curves:
        pert: dict = {"fractions": list(config.fractions), "n_records": len(with_curves)}
        for direction in ("positive", "negative"):
            pert[direction] = {}
            for method in with_curves[0]["perturbation"][direction]:
                curve = np.mean([r["perturbation"][direction][method] for r in with_curves], axis=0)
                agree = np.mean([r["agreement"][direction][method] for r in with_curves], axis=0)
                pert[direction][method] = {
                    "accuracy": [round(float(x), 4) for x in curve],
                    "agreement": [round(float(x), 4) for x in agree],
                    "auc": round(curve_auc(config.fractions, curve), 4),
                    "auc_agreement": round(curve_auc(config.fractions, agree), 4),
                }
        report["perturbation"] = pert
    pointed = [r for r in done if "pointing" in r]
    if pointed:
        def point_stats(rows):
            if not rows:
                return None
            return {
                method: {key: _mean([float(r["pointing"][method][key]) for r in rows]) for key in ("hit", "mass", "chance")}
                for method in rows[0]["pointing"]
            }

        report["pointing"] = {
            "n": len(pointed),
            "all": point_stats(pointed),
            "n_correct": sum(r["correct"] for r in pointed),
            "correct": point_stats([r for r in pointed if r["correct"]]),
        }
    report["records"] = [
        {"id": r["id"], "answer": r["answer"], "correct": r["correct"], "n_tokens": r["n_tokens"]} for r in done
    ]
    report["warnings"] = report_warnings(report)
    return report


EXTREME_POSITIVE_RATE = (0.05, 0.75)  # outside this range a constant map already scores high F1 or accuracy


def report_warnings(report: dict) -> list[str]:
    """What makes figures of a report misleading, in words (an empty list when nothing does)."""
    warnings = []
    cls = report.get("classification") or {}
    p, base = cls.get("positive_rate"), cls.get("baselines")
    if p is not None and base and report.get("n_records"):
        low, high = EXTREME_POSITIVE_RATE
        if p > high:
            warnings.append(
                f"{p:.0%} of the patches are labelled relevant (label threshold {cls.get('label_threshold')}): a map "
                f"that calls every patch relevant already scores F1 {base['all_positive']['f1']:.3f}, so read the "
                "proxy's F1 against that, not against 1 (the baseline maps may be nearly flat: a random or "
                "untrained model, or a label threshold too low)"
            )
        elif p < low:
            warnings.append(
                f"only {p:.1%} of the patches are labelled relevant: a map that calls no patch relevant already "
                f"has accuracy {base['all_negative']['accuracy']:.3f}, so judge the proxy by F1, not accuracy"
            )
        at_half = next((r for r in cls.get("thresholds", []) if abs(r["threshold"] - 0.5) < 1e-9), None)
        if at_half is not None and at_half["f1"] <= base["all_positive"]["f1"]:
            warnings.append(
                f"the proxy's F1 at 0.5 ({at_half['f1']:.3f}) is no better than calling every patch relevant "
                f"({base['all_positive']['f1']:.3f})"
            )
    if report.get("perturbation") and report.get("answer_accuracy") == 0:
        warnings.append(
            "no answer is correct (answer accuracy 0): every perturbation accuracy curve is 0 and its AUC says "
            "nothing about the maps; compare the agreement AUCs (answers unchanged by the removal) instead, "
            "or evaluate on questions the model answers correctly"
        )
    return warnings


def check_proxy_fits(proxy, model, model_name: str | Path | None = None) -> None:
    """Raise :class:`ConfigMismatchError` unless ``proxy`` fits ``model``, naming the model it was distilled from.

    Cheap (configs only): callers run it before reading data or generating anything.
    """
    try:
        proxy.check_compatible(get_adapter(model))
    except ConfigMismatchError as exc:
        origin = proxy.config.distilled_from
        if origin and str(origin) != str(model_name):
            hint = (f"; the proxy records that it was distilled from {origin!r}: evaluate it with that model "
                    f"(--model {origin}), or pass a proxy distilled for this one")
        else:
            hint = "; pass the proxy distilled for this model (or the model this proxy was distilled from)"
        raise ConfigMismatchError(f"{exc}{hint}") from None


def evaluate_records(model, processor, proxy, records, config: EvalConfig, *, base_dir, on_record=None) -> list[dict]:
    """:func:`evaluate_record` over ``records`` in order (the local backend; also each Ray worker's job)."""
    adapter = get_adapter(model)
    proxy.check_compatible(adapter)
    results = []
    for record in records:
        results.append(evaluate_record(model, processor, proxy, record, config, base_dir=base_dir, adapter=adapter))
        if on_record is not None:
            on_record(results[-1])
    return results
