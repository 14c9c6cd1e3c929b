"""The guard against object hallucinations, measured on a POPE split of ShapesVQA.

Answers every question of a POPE split (``shapesvqa.pope``: positives, and random, popular and
adversarial negatives) the way ``guardrail calibrate`` and the Guard do (one greedy ``generate``
with the FastRM capture and the token-signal recorder), gives each answer the shipped verdict
(:class:`guardrail.answers.pipeline.Scorer` with the calibration: its score, threshold and novelty gate),
and reports for the hallucinated "yes" answers (a "yes" to a negative):

- the POPE table of the guarded answers;
- the shipped verdict: share of hallucinated "yes" marked uncertain, share of correct answers
  kept confident;
- every score of the registry (the calibrate table's, plus mask-free map statistics): AUROC of
  hallucinated "yes" against correct "yes" answers (the hard comparison: same answer word) and
  against all correct answers, and the share of hallucinations each flags at two operating points:
  *matched* (the threshold keeping as many correct answers confident as the shipped verdict keeps:
  a comparison of scores at one operating point, set on this split's correct answers) and, with
  ``--fit-signals``, *own rule* (the shipped rule refitted for that score on the calibration data);
- which hallucinations the token signals catch, which the maps catch, and which none catches;
- where the maps of hallucinated "yes" answers look (``shapesvqa.pope.map_location`` on the
  masks: the asked type, the co-occurring type, an object of the asked colour or shape, another
  object, background), beside correct "yes" answers, also among hallucinations the token
  probability does not catch;
- whether the maps carry information the token signals lack: a logistic regression over token
  signals alone against one over token signals plus map statistics, each cross-fitted (two folds
  split by scene: every answer is scored by the model fitted on the other fold), compared on the
  hallucinations.

Fitted scores (``novelty``, ``fused``) are fitted on ``--fit-signals`` (what ``guardrail calibrate
--signals-out`` stored for the calibration data); without it they are left out of the table
(``novelty`` is then the calibration's own novelty gate score).

    python benchmarks/hallucination_guard.py --world cooccur-describe --n 500 --seed 108 \\
        --fit-signals runs/calibration-signals.jsonl --out runs/hallucination-guard.json

World seeds: 108 is the POPE acceptance split (docs/shapesvqa.md); develop on another seed
(2721 was this script's development split).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from calibration import AnswerSignals, Calibration, auroc, fit_calibration, fit_score, get_score, lookup_score
from calibration.fused import FusedModel
from fastrm_common.records import VQARecord
from fastrm_core import FastRMProxy, load_vlm, weights_fingerprint
from calibration import table_scores
from guardrail.calibrate import read_signals, score_available, score_label, score_records
from guardrail.answers.pipeline import Scorer
from shapesvqa.evaluate import first_word
from shapesvqa.grounding import object_patches
from shapesvqa.pope import LOCATIONS, map_location, pope_metrics, pope_split, scene_id
from shapesvqa.assets import model_world, reference_world
from shapesvqa.world import WORLDS, world_options

#: token signals (what the language model's own distribution says) and map statistics
TOKEN_FEATURES = ("low_margin(max)", "token_nll(max)", "predictive_entropy(max)")
MAP_FEATURES = ("map_entropy(mean)", "map_spread", "map_peak", "map_mass")


# ---- map statistics that need no mask -------------------------------------------------------------

def answer_map(sig: AnswerSignals) -> np.ndarray | None:
    """The map of an answer as the Guard shows it: the mean over its content tokens, (rows, cols)."""
    if sig.maps is None or not np.asarray(sig.content).any():
        return None
    return np.asarray(sig.maps, dtype=np.float64)[np.asarray(sig.content, dtype=bool)].mean(axis=0)


def map_peak(sig: AnswerSignals) -> float | None:
    """One minus the strongest patch probability of the proxy (no patch the proxy calls relevant: high)."""
    m = answer_map(sig)
    return None if m is None else float(1.0 - m.max())


def map_mass(sig: AnswerSignals) -> float | None:
    """Minus the summed patch probabilities (how much of the image the proxy calls relevant; little: high)."""
    m = answer_map(sig)
    return None if m is None else float(-m.sum())


EXTRA_SCORES = {"map_peak": map_peak, "map_mass": map_mass}


# ---- running the guard --------------------------------------------------------------------------

def pope_records(questions: dict[str, list], folder: Path) -> tuple[list[VQARecord], dict[str, Any]]:
    """One record per distinct question (a positive shared by the samplings is asked once), the scene
    images written to ``folder``; returns (records, {record id: example})."""
    records, examples, seen = [], {}, {}
    for exs in questions.values():
        for ex in exs:
            key = (scene_id(ex), ex.question)
            if key in seen:
                continue
            img = folder / f"{scene_id(ex)}.png"
            if not img.exists():
                ex.image.save(img)
            rid = f"{scene_id(ex)}-{len(seen)}"
            seen[key] = rid
            records.append(VQARecord(id=rid, image=img, question=ex.question, answers=list(ex.truth),
                                     family="existence"))
            examples[rid] = ex
    return records, {"examples": examples, "ids": seen}


def run_guard(model, processor, proxy, records, batch_size: int, console: Console, visual_contrast: bool = False):
    start = time.perf_counter()
    done = [0]

    def progress(k):
        done[0] += k
        if done[0] % (batch_size * 10) < k:
            console.print(f"  {done[0]}/{len(records)} answers ({time.perf_counter() - start:.0f} s)")

    rows, problems = score_records(model, processor, proxy, records, batch_size=batch_size, progress=progress,
                                   keep_maps=True, visual_contrast=visual_contrast)
    return rows, problems, time.perf_counter() - start


def all_scores(sig_rows: Sequence[AnswerSignals], fitted: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every score's value per answer: the calibrate table's scores (fitted ones from ``fitted``) and
    the map statistics above. NaN where an answer cannot be scored."""
    out: dict[str, np.ndarray] = {}
    for name, params in table_scores():
        label = score_label(name, params)
        if lookup_score(name).fitted:  # fitted on --fit-signals, by table label
            if label in fitted:
                out[label] = fitted[label].many(sig_rows)
            continue
        score = get_score(name, **params)
        if all(s.has(n) for s in sig_rows for n in score.needs):
            out[label] = score.many(sig_rows)
    for label, fn in EXTRA_SCORES.items():
        out[label] = np.array([np.nan if (v := fn(s)) is None else v for s in sig_rows], dtype=np.float64)
    return out


def cross_fitted(values: dict[str, np.ndarray], features: Sequence[str], wrong: np.ndarray, folds: np.ndarray
                 ) -> np.ndarray:
    """Out-of-fold log-odds of a wrong answer from a logistic regression over ``features``."""
    x = np.stack([values[f] for f in features], axis=1)  # (n, k)
    out = np.full(len(wrong), np.nan)
    ok = np.isfinite(x).all(axis=1)
    for k in np.unique(folds):
        train, test = ok & (folds != k), ok & (folds == k)
        if wrong[train].all() or not wrong[train].any():
            continue  # a fold without both right and wrong answers fits nothing: NaN
        model = FusedModel.fit(x[train], wrong[train], bases=[{"name": f} for f in features], l2=1.0)
        out[test] = [model.log_odds(v) for v in x[test]]
    return out


def _auc(v: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float | None:
    sel = (pos | neg) & np.isfinite(v)
    a = auroc(v[sel], pos[sel]) if sel.any() else None
    return None if a is None else round(float(a), 4)


def matched_threshold(v: np.ndarray, correct: np.ndarray, share: float) -> float:
    """The threshold keeping ``share`` of the correct answers confident (``value < threshold``)."""
    c = np.sort(v[correct & np.isfinite(v)])
    if not len(c):
        return float("nan")
    k = int(round(share * len(c)))
    if k <= 0:
        return float(c[0])
    if k >= len(c):
        return float(np.nextafter(c[-1], np.inf))
    return float((c[k - 1] + c[k]) / 2) if c[k - 1] < c[k] else float(c[k])


# ---- the report ----------------------------------------------------------------------------------

def measure(rows, meta, calibration: Calibration, cfg, fitted: dict[str, Any], own_thresholds: dict[str, float],
            scene_of: np.ndarray) -> dict:
    examples = meta["examples"]
    n = len(rows)
    truth = np.array([examples[r.id].truth[0] for r in rows])
    pred = np.array([first_word(r.answer) for r in rows])
    correct = np.array([r.correct for r in rows])
    halluc = (truth == "no") & (pred == "yes")
    correct_yes = (truth == "yes") & (pred == "yes")
    kinds = np.array([examples[r.id].kind for r in rows])  # positive, or pope_<sampling> of its first set
    scorer = Scorer(calibration)
    evaluated = [scorer.evaluate(r.signals, group=r.signals.group) for r in rows]
    verdicts = np.array([e[2] for e in evaluated])
    uncertain = verdicts == "uncertain"
    sig = [r.signals for r in rows]
    values = all_scores(sig, fitted)
    cal_label = get_score(calibration.score.name, **calibration.score.params).label
    if calibration.novelty_gate is not None and "novelty" not in values:
        gate = get_score("novelty", **calibration.novelty_gate.score.params)
        values["novelty (gate)"] = gate.many(sig)
    p_yes = np.array([float(np.exp(np.asarray(s.token_logprob)[np.asarray(s.content)][0]))
                      if s.token_logprob is not None and np.asarray(s.content).any() else np.nan for s in sig])

    report: dict[str, Any] = {"n_answers": n, "accuracy": round(float(correct.mean()), 4)}
    # POPE table of the guarded answers, per sampling (a positive counts in every sampling)
    index_of = {r.id: i for i, r in enumerate(rows)}
    pope = {}
    for sampling, exs in meta["questions"].items():
        rids = [meta["ids"][(scene_id(ex), ex.question)] for ex in exs]
        idx = [index_of[rid] for rid in rids if rid in index_of]
        m = pope_metrics(list(truth[idx]), list(pred[idx]))
        hi = [i for i in idx if halluc[i]]
        m["false_yes_uncertain"] = round(float(uncertain[hi].mean()), 4) if hi else None
        pope[sampling] = m
    report["pope"] = pope

    # the shipped verdict
    share_conf_correct = float((~uncertain[correct]).mean())
    report["verdict"] = {
        "score": cal_label, "threshold": calibration.threshold, "rule": calibration.rule,
        "novelty_gate": None if calibration.novelty_gate is None else calibration.novelty_gate.threshold,
        "hallucinated_yes": int(halluc.sum()),
        "hallucinated_yes_uncertain": round(float(uncertain[halluc].mean()), 4) if halluc.any() else None,
        "correct": int(correct.sum()),
        "correct_confident": round(share_conf_correct, 4),
        "correct_yes_confident": round(float((~uncertain[correct_yes]).mean()), 4) if correct_yes.any() else None,
        "wrong_no_uncertain": round(float(uncertain[(truth == "yes") & (pred != "yes")].mean()), 4)
        if ((truth == "yes") & (pred != "yes")).any() else None,
        "precision_confident": round(float(correct[~uncertain].mean()), 4) if (~uncertain).any() else None,
        "correct_confident_by_kind": {str(k): round(float((~uncertain[correct & (kinds == k)]).mean()), 4)
                                      for k in sorted(set(kinds)) if (correct & (kinds == k)).any()},
        "hallucinated_uncertain_by_kind": {str(k): round(float(uncertain[halluc & (kinds == k)].mean()), 4)
                                           for k in sorted(set(kinds)) if (halluc & (kinds == k)).any()},
        "gated": round(float(np.mean([e[0].get("novelty") is not None
                                      and e[0]["novelty"] >= calibration.novelty_gate.threshold for e in evaluated])), 4)
        if calibration.novelty_gate is not None else 0.0,
        "p_yes_hallucinated": _quantiles(p_yes[halluc]),
        "p_yes_correct_yes": _quantiles(p_yes[correct_yes]),
    }

    # every score: AUROCs and shares flagged
    wrong = ~correct
    folds = _folds(scene_of)
    values["token signals, cross-fitted"] = cross_fitted(values, TOKEN_FEATURES, wrong, folds)
    values["token + map signals, cross-fitted"] = cross_fitted(values, TOKEN_FEATURES + MAP_FEATURES, wrong, folds)
    table = []
    for label, v in values.items():
        thr = matched_threshold(v, correct, share_conf_correct)
        flagged = ~(v < thr)  # NaN (unscorable): uncertain, as the Guard does
        own = own_thresholds.get(label)
        table.append({
            "score": label,
            "auroc_vs_correct_yes": _auc(v, halluc, correct_yes),
            "auroc_vs_all_correct": _auc(v, halluc, correct),
            "auroc_all_wrong": _auc(v, wrong, correct),
            "matched_threshold": round(thr, 6) if np.isfinite(thr) else None,
            "hallucinated_flagged_matched": round(float(flagged[halluc].mean()), 4) if halluc.any() else None,
            "own_threshold": None if own is None else round(own, 6),
            "hallucinated_flagged_own": None if own is None or not halluc.any()
            else round(float((~(v[halluc] < own)).mean()), 4),
            "correct_confident_own": None if own is None else round(float((v[correct] < own).mean()), 4),
        })
    report["scores"] = table

    # which signals catch which hallucinations: the shipped verdict (token), the maps at the matched point
    m_thr = {lab: matched_threshold(values[lab], correct, share_conf_correct) for lab in MAP_FEATURES}
    map_flag = np.zeros(n, dtype=bool)
    for lab, thr in m_thr.items():
        map_flag |= ~(values[lab] < thr)
    catch = Counter()
    for i in np.flatnonzero(halluc):
        catch[("verdict" if uncertain[i] else "-") + " / " + ("a map score" if map_flag[i] else "-")] += 1
    report["catches"] = {"by": "shipped verdict / any map score at the matched point", **dict(catch)}
    report["catches_map_only_scores"] = {lab: int((halluc & ~uncertain & ~(values[lab] < m_thr[lab])).sum())
                                         for lab in MAP_FEATURES}

    # high-probability hallucinations: can the maps tell them from correct "yes" answers?
    conf = ~uncertain
    report["among_confident"] = {
        "hallucinated_yes": int((halluc & conf).sum()), "correct_yes": int((correct_yes & conf).sum()),
        "auroc_vs_correct_yes": {lab: _auc(values[lab], halluc & conf, correct_yes & conf)
                                 for lab in (*MAP_FEATURES, *TOKEN_FEATURES)},
    }

    # why: a "yes" about a partner whose cue is in the scene (the co-occurrence prior), or another one
    prior = np.array([bool(_partners(examples[r.id], cfg) & {o.type for o in examples[r.id].scene.objects})
                      for r in rows])
    report["why"] = {name: {"n": int(sel.sum()), "uncertain": round(float(uncertain[sel].mean()), 4) if sel.any() else None,
                            "p_yes_median": round(float(np.nanmedian(p_yes[sel])), 4) if sel.any() else None}
                     for name, sel in (("co-occurrence (its cue in the scene)", halluc & prior),
                                       ("other (no cue of it in the scene)", halluc & ~prior))}

    # where the maps look
    report["maps"] = map_locations(rows, examples, cfg, halluc, correct_yes, uncertain)
    report["missed"] = [_describe(rows[i], examples[rows[i].id], p_yes[i], values, i)
                        for i in np.flatnonzero(halluc & conf)][:20]
    report["_per_answer"] = {"truth": truth, "pred": pred, "verdict": verdicts, "p_yes": p_yes, "values": values,
                             "halluc": halluc}
    return report


def _partners(ex, cfg) -> set[str]:
    """The types forming a co-occurrence pair with the asked type in the world ``cfg``."""
    asked = ex.question[:-1].split(maxsplit=3)[-1]
    return {c for c, p, _ in cfg.cooccurrence if p == asked} | {p for c, p, _ in cfg.cooccurrence if c == asked}


def _folds(scene_of: np.ndarray) -> np.ndarray:
    scenes = sorted(set(scene_of))
    rng = np.random.default_rng(0)
    fold_of = dict(zip(scenes, rng.permutation(len(scenes)) % 2))
    return np.array([fold_of[s] for s in scene_of])


def _quantiles(v: np.ndarray) -> dict | None:
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    return {q: round(float(np.quantile(v, float(q))), 4) for q in ("0.1", "0.25", "0.5", "0.75", "0.9")}


def _describe(row, ex, p_yes: float, values: dict, i: int) -> dict:
    return {"id": row.id, "question": ex.question, "answer": row.answer, "p_yes": round(float(p_yes), 4),
            "objects": [o.type for o in ex.scene.objects], "pope": ex.pope,
            "scores": {k: round(float(v[i]), 4) for k, v in values.items() if np.isfinite(v[i])}}


def map_locations(rows, examples, cfg, halluc, correct_yes, uncertain) -> dict:
    """Where each group's answer maps (the proxy's, as the Guard shows them) look, on the masks."""
    out = {}
    locs = []
    for r in rows:
        ex = examples[r.id]
        m = answer_map(r.signals)
        if m is None:
            locs.append(None)
            continue
        patch = ex.scene.masks.shape[1] // m.shape[0]
        pm = object_patches(ex.scene.masks, patch) if len(ex.scene.objects) else np.zeros((0,) + m.shape, bool)
        locs.append(map_location(m, pm, ex.scene, ex.question[:-1].split(maxsplit=3)[-1], cfg))
    groups = {"hallucinated yes": halluc, "hallucinated yes, caught": halluc & uncertain,
              "hallucinated yes, missed": halluc & ~uncertain, "correct yes": correct_yes}
    for name, sel in groups.items():
        g = [locs[i] for i in np.flatnonzero(sel) if locs[i] is not None]
        if not g:
            out[name] = {"n": 0}
            continue
        out[name] = {
            "n": len(g),
            "argmax_on": {loc: round(float(np.mean([x["argmax_on"] == loc for x in g])), 4) for loc in LOCATIONS},
            "mass": {loc: round(float(np.mean([x["mass"][loc] for x in g])), 4) for loc in LOCATIONS},
            "entropy": round(float(np.mean([x["entropy"] for x in g])), 4),
        }
    return out


def print_report(report: dict, console: Console, title: str) -> None:
    t = Table(title=f"POPE of the guarded answers: {title}")
    for col in ("sampling", "n", "accuracy", "precision", "recall", "F1", "yes-ratio", "false yes", "of them uncertain"):
        t.add_column(col, justify="right")
    for s, m in report["pope"].items():
        t.add_row(s, str(m["n"]), f"{m['accuracy']:.3f}", f"{m['precision']:.3f}", f"{m['recall']:.3f}",
                  f"{m['f1']:.3f}", f"{m['yes_ratio']:.3f}", str(m["false_yes"]),
                  "-" if m["false_yes_uncertain"] is None else f"{m['false_yes_uncertain']:.3f}")
    console.print(t)
    v = report["verdict"]
    console.print(f"shipped verdict ({v['score']} < {v['threshold']:.4f}, {v['rule']}"
                  + (f", novelty gate {v['novelty_gate']:.3f}" if v["novelty_gate"] is not None else "") + "): "
                  f"{v['hallucinated_yes']} hallucinated \"yes\", {_pct(v['hallucinated_yes_uncertain'])} marked "
                  f"uncertain; {v['correct']} correct answers, {_pct(v['correct_confident'])} kept confident "
                  f"(correct \"yes\": {_pct(v['correct_yes_confident'])}); precision of confident "
                  f"{_pct(v['precision_confident'])}; gated {_pct(v['gated'])}")
    console.print(f"correct answers kept confident, by question kind: {v['correct_confident_by_kind']}; "
                  f"hallucinated \"yes\" marked uncertain, by kind: {v['hallucinated_uncertain_by_kind']}")
    console.print(f"P(first answer token) of hallucinated \"yes\": {v['p_yes_hallucinated']}; "
                  f"of correct \"yes\": {v['p_yes_correct_yes']}")
    t = Table(title="every score on the hallucinated \"yes\" answers (positives: hallucinated yes)")
    t.add_column("score", no_wrap=True)
    for col in ("AUROC vs correct yes", "vs all correct", "all wrong vs correct",
                "flagged at matched point", "own rule: flagged", "own rule: correct confident"):
        t.add_column(col, justify="right")
    for row in report["scores"]:
        t.add_row(row["score"], _f(row["auroc_vs_correct_yes"]), _f(row["auroc_vs_all_correct"]),
                  _f(row["auroc_all_wrong"]), _pct(row["hallucinated_flagged_matched"]),
                  _pct(row["hallucinated_flagged_own"]), _pct(row["correct_confident_own"]))
    console.print(t)
    console.print(f"who catches the hallucinated \"yes\" ({report['catches']['by']}): "
                  + ", ".join(f"{k}: {c}" for k, c in report["catches"].items() if k != "by"))
    console.print("hallucinated \"yes\" by cause: " + "; ".join(
        f"{k}: {w['n']} ({_pct(w['uncertain'])} uncertain, median P(yes) {_f(w['p_yes_median'])})"
        for k, w in report["why"].items()))
    console.print(f"missed by the verdict but flagged by a map score at the matched point: {report['catches_map_only_scores']}")
    a = report["among_confident"]
    console.print(f"among answers the verdict keeps confident: {a['hallucinated_yes']} hallucinated yes, "
                  f"{a['correct_yes']} correct yes; AUROC: "
                  + ", ".join(f"{k} {_f(x)}" for k, x in a["auroc_vs_correct_yes"].items()))
    t = Table(title="where the answer maps look (proxy maps as the Guard shows them; argmax share / mean mass)")
    t.add_column("answers")
    t.add_column("n", justify="right")
    for loc in LOCATIONS:
        t.add_column(loc.replace("_", " "), justify="right")
    t.add_column("entropy", justify="right")
    for name, g in report["maps"].items():
        if not g["n"]:
            t.add_row(name, "0", *["-"] * (len(LOCATIONS) + 1))
            continue
        t.add_row(name, str(g["n"]), *[f"{g['argmax_on'][loc]:.2f} / {g['mass'][loc]:.2f}" for loc in LOCATIONS],
                  f"{g['entropy']:.3f}")
    console.print(t)


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", choices=list(WORLDS), default=None,
                    help="the model's world (default: the shipped model's, read from its folder)")
    ap.add_argument("--n", type=int, default=500, help="POPE scenes")
    ap.add_argument("--seed", type=int, default=2721, help="POPE world seed (108: the acceptance split)")
    ap.add_argument("--pope-k", type=int, default=3)
    ap.add_argument("--stats-scenes", type=int, default=1000)
    ap.add_argument("--model", default="reference", help="preset name or save_pretrained folder")
    ap.add_argument("--proxy", default=None, help="proxy folder (default: the preset's)")
    ap.add_argument("--calibration", default=None, help="calibration JSON (default: the preset's)")
    ap.add_argument("--no-identity-check", action="store_true",
                    help="use a calibration fitted for another model or proxy, without its novelty gate "
                         "(development only: the report says so)")
    ap.add_argument("--fit-signals", type=Path, default=None,
                    help="signals of the calibration data (guardrail calibrate --signals-out): fits novelty and "
                         "fused, and each score's own threshold with the calibration's rule, on its fitting part")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--visual-contrast", action="store_true",
                    help="also run the image-free pass per answer: the table gains visual_contrast (and fused with it "
                         "when --fit-signals carries it)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="JSON report")
    ap.add_argument("--rows", type=Path, default=None, help="per-answer JSONL (verdict, scores, map location)")
    args = ap.parse_args(argv)
    if args.fit_signals is not None and not args.fit_signals.is_file():
        ap.error(f"--fit-signals {args.fit_signals}: no such file; `make reference-calibration` writes "
                 "runs/calibration-signals.jsonl (or leave --fit-signals out: the report then skips the fitted "
                 "scores and each score's own rule)")
    torch.set_num_threads(args.threads)
    console = Console(width=160)
    from fastrm_common.presets import preset_path

    proxy_path = args.proxy or preset_path(args.model, "proxy")
    cal_path = args.calibration or preset_path(args.model, "calibration")
    if proxy_path is None or cal_path is None:
        ap.error("--proxy and --calibration are needed for a model that is not a preset")
    model, processor = load_vlm(args.model)
    model.eval()
    proxy = FastRMProxy.from_pretrained(proxy_path)
    calibration = Calibration.load(cal_path)
    identity = "checked"
    try:
        calibration.check_compatible(model_id=None, proxy_hash=proxy.fingerprint(),
                                     model_hash=weights_fingerprint(model) if calibration.model_hash else None)
    except Exception as exc:  # noqa: BLE001 - reported, then refused unless asked
        if not args.no_identity_check:
            raise
        identity = f"NOT the calibration's model/proxy ({exc}); development only"
        if calibration.novelty_gate is not None:  # fitted on another model's hidden states: meaningless here
            calibration = calibration.model_copy(update={"novelty_gate": None})
            identity += "; its novelty gate is dropped (fitted on another model's hidden states)"
    console.print(f"model {args.model}, proxy {proxy_path}, calibration {cal_path} (identity {identity})")

    if args.world is None:
        args.world = model_world(args.model) if Path(str(args.model)).is_dir() else reference_world()
    cfg = WORLDS[args.world].truthful()
    questions, stats = pope_split(args.n, args.seed, cfg, k=args.pope_k, stats_scenes=args.stats_scenes,
                                  world=world_options(cfg) or None)
    with tempfile.TemporaryDirectory() as tmp:
        records, meta = pope_records(questions, Path(tmp))
        meta["questions"] = questions
        console.print(f"{len(records)} distinct POPE questions about {args.n} scenes (world {args.world}, seed {args.seed})")
        rows, problems, seconds = run_guard(model, processor, proxy, records, args.batch_size, console,
                                            visual_contrast=args.visual_contrast)
    for p in problems:
        console.print(f"[yellow]{p}[/yellow]")
    scene_of = np.array([scene_id(meta["examples"][r.id]) for r in rows])

    fitted: dict[str, Any] = {}
    own: dict[str, float] = {}
    if args.fit_signals is not None:
        from calibration import split_fit_heldout

        frows, fmeta = read_signals(args.fit_signals)
        fc = np.array([r.correct for r in frows])
        fit_fraction = float(calibration.metadata.get("fit_fraction", 0.5)) if calibration.metadata else 0.5
        fseed = int(calibration.metadata.get("seed", 0)) if calibration.metadata else 0
        fit_idx, _ = split_fit_heldout(len(frows), fit_fraction, fseed, stratify=fc)
        fsig = [frows[i].signals for i in fit_idx]
        for name, params in table_scores():
            if lookup_score(name).fitted and score_available(name, frows, params):
                fitted[score_label(name, params)] = fit_score(name, fsig, fc[fit_idx], **params)
        fvalues = all_scores(fsig, fitted)
        for label, fv in fvalues.items():
            ok = np.isfinite(fv)
            try:
                c = fit_calibration(fv[ok], fc[fit_idx][ok], rule=calibration.rule,
                                    target_precision=calibration.target_precision or 0.98,
                                    delta=calibration.delta or 0.1)
            except Exception as exc:  # noqa: BLE001 - a score the rule cannot fit is reported as such
                console.print(f"[yellow]{label}: the rule cannot be fitted ({exc})[/yellow]")
                continue
            if c.threshold is None:
                console.print(f"[yellow]{label}: the rule marks nothing confident on the fitting data[/yellow]")
                continue
            own[label] = float(c.threshold)
    elif calibration.novelty_gate is not None:
        fitted["novelty"] = get_score("novelty", **calibration.novelty_gate.score.params)

    report = measure(rows, meta, calibration, cfg, fitted, own, scene_of)
    per = report.pop("_per_answer")
    report.update({"world": args.world, "seed": args.seed, "n_scenes": args.n, "model": str(args.model),
                   "proxy": str(proxy_path), "calibration": str(cal_path), "identity": identity,
                   "fit_signals": None if args.fit_signals is None else str(args.fit_signals),
                   "seconds_answering": round(seconds, 1)})
    print_report(report, console, f"{args.world} world, {args.n} scenes, seed {args.seed}")
    console.print(f"{len(rows)} answers in {seconds:.0f} s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
        console.print(f"wrote {args.out}")
    if args.rows is not None:
        with args.rows.open("w", encoding="utf-8") as f:
            for i, r in enumerate(rows):
                ex = meta["examples"][r.id]
                f.write(json.dumps({
                    "id": r.id, "question": ex.question, "pope": ex.pope, "kind": ex.kind, "truth": str(per["truth"][i]),
                    "answer": r.answer, "verdict": str(per["verdict"][i]), "p_yes": float(per["p_yes"][i]),
                    "hallucinated": bool(per["halluc"][i]), "objects": [o.type for o in ex.scene.objects],
                    "scores": {k: (float(v[i]) if np.isfinite(v[i]) else None) for k, v in per["values"].items()},
                }) + "\n")
    return report


if __name__ == "__main__":
    main()
