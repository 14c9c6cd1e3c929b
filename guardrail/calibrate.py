"""``guardrail calibrate``: run a model over a labelled JSONL set, gather every answer's signals, fit a threshold.

The data loop (:func:`score_records`) runs the model once per batch, with the FastRM capture and
the token-signal recorder (the Guard's own path: no extra pass), and returns one
:class:`ScoredAnswer` per record with its :class:`calibration.AnswerSignals`. The fit
(:func:`calibrate_scores`) is separate, so stored signals (:func:`write_signals`,
:func:`read_signals`) can be re-fitted with other scores and rules without the model.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from transformers import LogitsProcessorList

from calibration import (
    AnswerSignals,
    Calibration,
    GroupThresholds,
    NoveltyGate,
    ScoreSpec,
    auroc,
    evaluate_threshold,
    fit_calibration,
    fit_score,
    get_score,
    lookup_score,
    split_fit_heldout,
    table_scores,
)
from fastrm_common.records import VQARecord, open_regular
from fastrm_common.vqa import is_correct
from fastrm_core import FastRMProxy, capture, get_adapter
from fastrm_common.errors import CalibrationError, DataError
from fastrm_common.images import load_image
from fastrm_common.tokens import eos_token_ids
from fastrm_core.inputs import prepare_inputs

from guardrail.answers.pipeline import add_imageless_logprobs, answer_signals, cut_at_eos, generation_rows
from guardrail.answers.token_signals import TokenSignals

__all__ = [
    "TABLE_SCORES",
    "ScoredAnswer",
    "calibrate_scores",
    "expected_calibration_error",
    "fit_heldout_split",
    "prediction_rejection_ratio",
    "score_available",
    "score_label",
    "read_signals",
    "score_records",
    "write_signals",
]

#: the scores compared in the calibrate table (name, parameters), in print order: every registered
#: score's ``table`` parameter sets (:func:`calibration.table_scores`)
TABLE_SCORES: tuple[tuple[str, dict[str, Any]], ...] = tuple(table_scores())


@dataclass
class ScoredAnswer:
    """One record's answer, whether it is correct, and the signals gathered while generating it."""

    id: str
    answer: str
    correct: bool
    signals: AnswerSignals
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str | None:
        fam = self.extra.get("family")
        return None if fam is None else str(fam)


def score_records(
    model,
    processor,
    proxy: FastRMProxy,
    records: Sequence[VQARecord],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 8,
    prompt_suffix: str | None = None,
    progress=None,
    keep_maps: bool = True,
    claims: str | Any | None = None,
    labeler: str | Any | None = None,
    visual_contrast: bool = False,
) -> tuple[list[ScoredAnswer], list[str]]:
    """Greedy answers with every signal for each record; returns (scored answers, problems).

    A record whose answer has no content token is reported in ``problems`` and left out.

    With ``claims`` (a claim splitter: a :data:`fastrm_common.claims.SPLITTERS` name or a callable)
    each answer is cut into claims and each claim becomes one row: its signals are the answer's over
    its own tokens (:func:`guardrail.answers.claims.claim_signals`, as the Guard scores claims), its
    ``correct`` the ``labeler``'s word (a :data:`fastrm_common.claims.LABELERS` name or a callable
    ``(text, spans, record) -> [bool | None]``; default: the labeler of the splitter's name, else
    ``objects``). Claims the labeler cannot tell are left out; ``extra["record"]`` names the record,
    so that the fit keeps a record's claims on one side of the split.

    With ``visual_contrast`` each batch also gets the image-free pass
    (:func:`fastrm_core.contrast.imageless_logprobs`), the ``imageless_logprob`` signal of
    ``visual_contrast``, as the Guard computes it.
    """
    from fastrm_common.claims import LABELERS

    if claims is not None and labeler is None:
        labeler = claims if isinstance(claims, str) and claims in LABELERS else "objects"
    label = LABELERS.get(labeler) if isinstance(labeler, str) else labeler
    adapter = get_adapter(model)
    tok = processor.tokenizer
    eos = set(eos_token_ids(model, tok)) | adapter.stop_token_ids(tok)
    out_rows: list[ScoredAnswer] = []
    problems: list[str] = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        images = [load_image(r.image) for r in batch]
        texts = [adapter.build_prompt(processor, r.question, prompt_suffix)[0] for r in batch]
        inputs = prepare_inputs(model, processor, images, texts)
        recorder = TokenSignals()
        with torch.no_grad(), capture(model, proxy, adapter=adapter, keep_states=True) as cap:
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 logits_processor=LogitsProcessorList([recorder]))
        rows = generation_rows(cap, recorder, out)  # the Guard's own reading of a generate, per row
        if visual_contrast:
            add_imageless_logprobs(rows, model, inputs, out, adapter)
        n_prompt = inputs["input_ids"].shape[1]
        for b, rec in enumerate(batch):
            gen, _ = cut_at_eos(out[b, n_prompt:].tolist(), eos)
            answer = tok.decode(gen, skip_special_tokens=True).strip()
            extra = {k: v for k, v in (rec.model_extra or {}).items() if isinstance(v, (str, int, float, bool))}
            sig = answer_signals(gen, tok, maps=rows[b].maps, eos_ids=eos, keep_maps=keep_maps,
                                 group=None if extra.get("family") is None else str(extra["family"]),
                                 **rows[b].token_signals)
            if not sig.content.any():
                problems.append(f"record {rec.id}: the answer has no content token to score (answer {answer!r})")
                continue
            if claims is not None:
                out_rows += _claim_rows(rec, answer, gen, tok, sig, claims, label, extra)
                continue
            out_rows.append(ScoredAnswer(id=rec.id, answer=answer, correct=is_correct(answer, rec.answers),
                                         signals=sig, extra=extra))
        if progress is not None:
            progress(len(batch))
    return out_rows, problems


def _claim_rows(rec: VQARecord, answer: str, gen: list[int], tok: Any, sig: AnswerSignals, claims: Any,
                label: Any, extra: dict[str, Any]) -> list[ScoredAnswer]:
    """One row per labelled claim of one record's answer."""
    from guardrail.answers.claims import claim_signals, split_and_align

    aligned = split_and_align(answer, tok, gen, claims)
    labels = label(answer, [c.span for c in aligned], dict(rec.model_extra or {}))
    rows = []
    for k, (c, ok) in enumerate(zip(aligned, labels)):
        csig = claim_signals(sig, c)
        if ok is None or not csig.content.any():
            continue
        rows.append(ScoredAnswer(id=f"{rec.id}#{k}", answer=c.span.text, correct=bool(ok), signals=csig,
                                 extra={**extra, "record": str(rec.id), "claim_kind": c.span.kind,
                                        **({"claim_object": c.span.object} if c.span.object else {})}))
    return rows


def score_label(name: str, params: dict[str, Any]) -> str:
    """The table's label of score ``name`` with ``params`` (a fitted score: its name alone)."""
    return lookup_score(name).table_label(**params)


def score_available(name: str, rows: Sequence[ScoredAnswer], params: dict[str, Any] | None = None) -> bool:
    """Whether every answer of ``rows`` carries the signals score ``name`` needs (those of the scores
    it is built on included)."""
    return lookup_score(name).available([r.signals for r in rows], **(params or {}))


def _auroc_table(rows, fit_idx, ho_idx, correct, families) -> list[dict[str, Any]]:
    """Held-out AUROC of every available score (fitted scores fitted on the fitting split only)."""
    fit_sig = [rows[i].signals for i in fit_idx]
    ho_sig = [rows[i].signals for i in ho_idx]
    table = []
    for name, params in table_scores():
        if not score_available(name, rows, params):
            continue
        score = fit_score(name, fit_sig, correct[fit_idx], **params)
        values = score.many(ho_sig)
        ok = np.isfinite(values)
        y = ~correct[ho_idx]
        by_family = {}
        for fam in families:
            sel = ok & (np.array([rows[i].family for i in ho_idx]) == fam)
            by_family[fam] = auroc(values[sel], y[sel]) if sel.sum() > 1 else None
        table.append({"name": name, "params": params, "label": score_label(name, params),
                      "auroc": auroc(values[ok], y[ok]) if ok.sum() > 1 else None,
                      "prr": prediction_rejection_ratio(values[ok], y[ok]) if ok.sum() > 1 else None,
                      "families": by_family, "heldout_values": values[ok], "heldout_wrong": y[ok]})
    return table


def calibrate_scores(
    rows: Sequence[ScoredAnswer],
    *,
    score: str = "map_entropy",
    score_params: dict[str, Any] | None = None,
    rule: str = "paper_midpoint",
    fit_fraction: float = 0.5,
    seed: int = 0,
    target_precision: float = 0.98,
    delta: float = 0.1,
    novelty_quantile: float | None = None,
    group_by: str | None = None,
    min_per_class: int = 5,
    table: bool = True,
    command: str | None = None,
    **identity: Any,
) -> tuple[Calibration, dict]:
    """Fit ``score`` and a threshold on one part of ``rows``, report on the held-out rest.

    Args:
        rows: scored answers from :func:`score_records` or :func:`read_signals`.
        score, score_params: the score the threshold applies to (a registry name and its
            parameters); fitted scores (``fused``, ``novelty``) are fitted on the fitting split only.
        rule, target_precision, delta: the threshold rule (see :func:`calibration.fit_calibration`).
        fit_fraction, seed: the stratified fitting / held-out split.
        novelty_quantile: add a novelty gate at this quantile of the fitting inputs' novelty
            (e.g. 0.995); None: no gate. The novelty's Gaussians are fitted on a random half of
            the fitting answers, its view scales and the gate's threshold on the other half.
        group_by: ``"family"`` for per-family thresholds (records with a ``family`` field),
            with the global threshold as fallback for groups with fewer than ``min_per_class``
            right or wrong answers.
        table: also compute every available score's held-out AUROC (overall and per family).

    Returns:
        ``(calibration, side)``: side figures for printing (split sizes, the score table, the
        held-out figures with the gate, the held-out scores of the chosen score for the plot).
    """
    if not rows:
        raise CalibrationError("no scored answers to calibrate on")
    correct = np.array([r.correct for r in rows], dtype=bool)
    fit_idx, ho_idx = fit_heldout_split(rows, correct, fit_fraction, seed)
    fit_sig = [rows[i].signals for i in fit_idx]
    chosen = fit_score(score, fit_sig, correct[fit_idx], **(score_params or {}))
    values = chosen.many([r.signals for r in rows])  # (n,)
    fit_ok = fit_idx[np.isfinite(values[fit_idx])]
    ho_ok = ho_idx[np.isfinite(values[ho_idx])]
    params = chosen.params
    is_map = chosen.name == "map_entropy"
    cal = fit_calibration(
        values[fit_ok], correct[fit_ok], rule=rule, target_precision=target_precision, delta=delta,
        score=ScoreSpec(name=chosen.name, params=params),
        aggregation=params.get("aggregation", "mean") if is_map else "mean",
        entropy_normalized=bool(params.get("normalized", True)) if is_map else True,
        heldout=(values[ho_ok], correct[ho_ok]) if len(ho_ok) else None,
        command=command if command is not None else (" ".join(shlex.quote(a) for a in ["guardrail", *sys.argv[1:]]) if sys.argv else None),
        metadata={"seed": seed, "fit_fraction": fit_fraction, "n_fit": int(len(fit_ok)), "n_heldout": int(len(ho_ok))},
        min_per_class=min_per_class,
        **identity,
    )
    families = sorted({r.family for r in rows if r.family is not None})
    side: dict[str, Any] = {
        "n_fit": int(len(fit_ok)), "n_heldout": int(len(ho_ok)),
        "accuracy_heldout": float(correct[ho_idx].mean()) if len(ho_idx) else None,
        "families": families, "score_label": score_label(score, score_params or {}),  # the table's label (the * row)
        "heldout_scores": values[ho_ok], "heldout_correct": correct[ho_ok],
    }
    update: dict[str, Any] = {}
    gated_ho = np.zeros(len(ho_ok), dtype=bool)
    if novelty_quantile is not None and novelty_quantile > 0:
        if not score_available("novelty", rows):
            raise CalibrationError("a novelty gate needs the pooled hidden states (features) of every answer")
        # The Gaussians on one half of the fitting answers, the views' scales and the gate's threshold
        # on the other half: distances of the inputs a Gaussian was fitted on are too small.
        order = np.random.default_rng(seed).permutation(fit_idx)
        gauss_idx, ref_idx = order[len(order) // 2 :], order[: len(order) // 2]
        ref_sig = [rows[i].signals for i in ref_idx]
        nov = fit_score("novelty", [rows[i].signals for i in gauss_idx], correct[gauss_idx], reference=ref_sig,
                        quantile=float(novelty_quantile), seed=seed)
        gate_t = float(np.quantile(nov.many(ref_sig), float(novelty_quantile)))
        nov_ho = nov.many([rows[i].signals for i in ho_ok])
        gated_ho = nov_ho >= gate_t
        update["novelty_gate"] = NoveltyGate(score=ScoreSpec(name="novelty", params=nov.params), threshold=gate_t,
                                             quantile=float(novelty_quantile),
                                             heldout_share_gated=float(gated_ho.mean()) if len(ho_ok) else None)
    if group_by is not None:
        if group_by != "family":
            raise CalibrationError(f"group_by must be 'family' for calibration data, got {group_by!r}")
        thresholds, metrics = {}, {}
        fam_of = np.array([rows[i].family or "" for i in range(len(rows))])
        for fam in families:
            f_idx = fit_ok[fam_of[fit_ok] == fam]
            n_c, n_w = int(correct[f_idx].sum()), int((~correct[f_idx]).sum())
            if n_c < min_per_class or n_w < min_per_class:
                continue  # too few of one class: the global threshold applies
            g = fit_calibration(values[f_idx], correct[f_idx], rule=rule, target_precision=target_precision,
                                delta=delta, min_per_class=min_per_class, grid_size=16)
            thresholds[fam] = g.threshold
            h_idx = ho_ok[fam_of[ho_ok] == fam]
            if len(h_idx):
                metrics[fam] = evaluate_threshold(values[h_idx], correct[h_idx], g.threshold)
        update["groups"] = GroupThresholds(key="family", min_per_class=min_per_class, thresholds=thresholds,
                                           heldout_metrics=metrics)
    if len(fit_ok) > 2 and len(ho_ok) and 0 < correct[fit_ok].sum() < len(fit_ok):
        # the verdict's confidence: P(right | score), a logistic map of the score fitted on the fitting
        # answers; its ECE on the held-out ones
        from calibration.fused import FusedModel

        platt = FusedModel.fit(values[fit_ok][:, None], ~correct[fit_ok], bases=[{"name": chosen.name}], l2=1e-3)
        p_right = np.array([1.0 / (1.0 + np.exp(platt.log_odds([v]))) for v in values[ho_ok]])
        side["ece_heldout"] = expected_calibration_error(p_right, correct[ho_ok])
    if table:
        side["score_table"] = _auroc_table(rows, fit_idx, ho_idx, correct, families)
        update["score_aurocs"] = {t["label"]: t["auroc"] for t in side["score_table"]}
    if update:
        cal = cal.model_copy(update=update)
    # the verdict as the Guard gives it (gate and groups included) on held-out answers
    if len(ho_ok):
        groups = [rows[i].family for i in ho_ok]
        thr = np.array([np.nan if (t := cal.threshold_for(g)) is None else t for g in groups])
        confident = (values[ho_ok] < thr) & ~gated_ho
        c = correct[ho_ok]
        side["verdict_heldout"] = {
            "share_confident": float(confident.mean()),
            "precision_confident": float(c[confident].mean()) if confident.any() else None,
            "n_confident": int(confident.sum()), "n_wrong_confident": int((confident & ~c).sum()),
            "share_gated": float(gated_ho.mean()),
        }
    return cal, side


def prediction_rejection_ratio(scores: np.ndarray, wrong: np.ndarray) -> float | None:
    """lm-polygraph's PRR: how much of the oracle's gain a score gets when answers are rejected from
    the most uncertain down. With the error rate of the kept answers at each rejection share, PRR =
    (area under the random curve - area under the score's) / (random's - the oracle's); 1 = the
    oracle, 0 = chance, negative = worse than chance. None when every answer is right or wrong.

    >>> round(prediction_rejection_ratio(np.array([0.1, 0.2, 0.9, 0.8]), np.array([False, False, True, True])), 3)
    1.0
    """
    wrong = np.asarray(wrong, dtype=float)
    n = len(wrong)
    if n == 0 or wrong.all() or not wrong.any():
        return None

    def area(order: np.ndarray) -> float:
        kept = wrong[order]  # answers sorted from most certain to most uncertain
        # rejecting the k most uncertain leaves the first n - k: their error rate, for k = 0 .. n - 1
        cum = np.cumsum(kept)
        rates = cum[::-1] / np.arange(n, 0, -1)
        return float(rates.mean())

    score_area = area(np.argsort(np.asarray(scores, dtype=float), kind="stable"))
    oracle_area = area(np.argsort(wrong, kind="stable"))
    random_area = float(wrong.mean())
    return (random_area - score_area) / (random_area - oracle_area) if random_area > oracle_area else None


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float | None:
    """ECE of confidences in [0, 1] that an answer is right: the mean over equal-width bins of
    |accuracy - mean confidence|, weighted by the bin's share of answers."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    if confidence.size == 0:
        return None
    idx = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(total)


def fit_heldout_split(rows: Sequence[ScoredAnswer], correct: np.ndarray, fit_fraction: float, seed: int):
    """The fitting / held-out split: stratified by correctness; claims (rows with ``extra["record"]``)
    split by record, so that no answer has claims on both sides."""
    records = [r.extra.get("record") for r in rows]
    if any(rec is None for rec in records):
        return split_fit_heldout(len(rows), fit_fraction, seed, stratify=correct)
    names = sorted(set(records))
    any_wrong = {n: False for n in names}
    for rec, ok in zip(records, correct):
        any_wrong[rec] |= not ok
    f, _ = split_fit_heldout(len(names), fit_fraction, seed, stratify=np.array([any_wrong[n] for n in names]))
    fit_names = {names[i] for i in f}
    mask = np.array([rec in fit_names for rec in records])
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def model_identity(model) -> str:
    return get_adapter(model).model_id


def write_signals(path: str | Path, rows: Sequence[ScoredAnswer], meta: dict[str, Any] | None = None) -> Path:
    """One JSON object per answer (id, answer, correct, signals, extra fields); ``meta`` as the first line."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"_meta": dict(meta or {})}) + "\n")
        for r in rows:
            f.write(json.dumps({"id": r.id, "answer": r.answer, "correct": r.correct,
                                "signals": r.signals.to_json(), "extra": r.extra}) + "\n")
    return path


def read_signals(path: str | Path) -> tuple[list[ScoredAnswer], dict[str, Any]]:
    """Read what :func:`write_signals` wrote: ``(rows, meta)``."""
    rows, meta = [], {}
    if not Path(path).exists():
        raise DataError(f"signals file not found: {path} (write one with guardrail calibrate --data ... --signals-out)")
    with open_regular(path) as fh:  # a FIFO or a device is refused, not read forever
        text = fh.read().decode("utf-8")
    for line in text.splitlines():
        if not line.strip():
            continue
        raw = json.loads(line)
        if "_meta" in raw:
            meta = raw["_meta"]
            continue
        rows.append(ScoredAnswer(id=str(raw["id"]), answer=raw["answer"], correct=bool(raw["correct"]),
                                 signals=AnswerSignals.from_json(raw["signals"]), extra=raw.get("extra", {})))
    return rows, meta


def write_scores(path: Path, rows: Sequence[ScoredAnswer], table: Sequence[tuple[str, dict[str, Any]]] | None = None) -> None:
    """Per-record values of the unfitted table scores (JSONL), for quick inspection."""
    scores = [(score_label(n, p), get_score(n, **p)) for n, p in (table_scores() if table is None else table)
              if not lookup_score(n).fitted and score_available(n, rows, p)]
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"id": r.id, "answer": r.answer, "correct": r.correct,
                                "scores": {label: s(r.signals) for label, s in scores}, **r.extra}) + "\n")
