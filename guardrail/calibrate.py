"""``guardrail calibrate``: run a model with proxy capture over a labelled JSONL set and fit a threshold.

The data loop (:func:`score_records`) and the fit (:func:`calibrate_scores`) are separate so that the
same scores can be re-fitted with other rules without running the model again.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from calibration import Calibration, auroc, fit_calibration, split_fit_heldout
from fastrm_common.records import VQARecord
from fastrm_common.vqa import is_correct
from fastrm_core import FastRMProxy, capture, get_adapter
from fastrm_core.inputs import prepare_inputs
from fastrm_common.prompting import build_prompt

from .guard import load_image
from .scoring import cut_at_eos, score_answer

__all__ = ["ScoredAnswer", "calibrate_scores", "score_records"]


@dataclass
class ScoredAnswer:
    """One record's answer, whether it is correct, and its uncertainty signals (higher = more uncertain)."""

    id: str
    answer: str
    correct: bool
    scores: dict[str, float] = field(default_factory=dict)  # aggregation -> entropy score
    answer_prob: float = float("nan")  # mean probability of the content tokens (the simplest alternative)
    extra: dict[str, Any] = field(default_factory=dict)


def score_records(
    model,
    processor,
    proxy: FastRMProxy,
    records: Sequence[VQARecord],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 8,
    normalized: bool = True,
    prompt_suffix: str | None = None,
    progress=None,
) -> tuple[list[ScoredAnswer], list[str]]:
    """Greedy answers with per-token maps for every record; returns (scored answers, problems).

    A record whose answer has no content token is reported in ``problems`` and left out.
    """
    adapter = get_adapter(model)
    tok = processor.tokenizer
    eos = {int(e) for e in np.atleast_1d(model.generation_config.eos_token_id or [])}
    if tok.eos_token_id is not None:
        eos.add(int(tok.eos_token_id))
    out_rows: list[ScoredAnswer] = []
    problems: list[str] = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        images = [load_image(r.image) for r in batch]
        texts = [build_prompt(processor, r.question, prompt_suffix)[0] for r in batch]
        inputs = prepare_inputs(model, processor, images, texts)
        with torch.no_grad(), capture(model, proxy, adapter=adapter) as cap:
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 return_dict_in_generate=True, output_scores=True)
        maps = cap.maps.numpy()  # (B, T, rows, cols)
        probs = torch.stack([torch.softmax(s.float(), dim=-1) for s in out.scores], dim=1)  # (B, T, V)
        n_prompt = inputs["input_ids"].shape[1]
        for b, rec in enumerate(batch):
            gen, _ = cut_at_eos(out.sequences[b, n_prompt:].tolist(), eos)
            answer = tok.decode(gen, skip_special_tokens=True).strip()
            scores = {agg: score_answer(maps[b, : len(gen)], gen, tok, normalized=normalized,
                                        aggregation=agg, eos_ids=eos) for agg in ("mean", "max", "first")}
            if scores["mean"].score is None:
                problems.append(f"record {rec.id}: the answer has no content token to score (answer {answer!r})")
                continue
            content = scores["mean"].content
            token_p = probs[b, torch.arange(len(gen)), torch.tensor(gen)].numpy()  # (T,)
            extra = rec.model_extra or {}
            out_rows.append(ScoredAnswer(
                id=rec.id, answer=answer, correct=is_correct(answer, rec.answers),
                scores={k: v.score for k, v in scores.items()}, answer_prob=float(token_p[content].mean()),
                extra={k: v for k, v in extra.items() if isinstance(v, (str, int, float, bool))},
            ))
        if progress is not None:
            progress(len(batch))
    return out_rows, problems


def calibrate_scores(
    rows: Sequence[ScoredAnswer],
    *,
    rule: str = "paper_midpoint",
    aggregation: str = "mean",
    fit_fraction: float = 0.5,
    seed: int = 0,
    target_precision: float = 0.98,
    delta: float = 0.1,
    normalized: bool = True,
    **identity: Any,
) -> tuple[Calibration, dict]:
    """Fit on one part, report on the held-out rest. Returns the calibration and side figures
    (AUROC of the answer-probability signal on the held-out part, split sizes)."""
    scores = np.array([r.scores[aggregation] for r in rows])
    correct = np.array([r.correct for r in rows], dtype=bool)
    fit_idx, ho_idx = split_fit_heldout(len(rows), fit_fraction, seed, stratify=correct)
    cal = fit_calibration(
        scores[fit_idx], correct[fit_idx], rule=rule, target_precision=target_precision, delta=delta, aggregation=aggregation,
        entropy_normalized=normalized, heldout=(scores[ho_idx], correct[ho_idx]) if len(ho_idx) else None,
        command=" ".join(shlex.quote(a) for a in ["guardrail", *sys.argv[1:]]) if sys.argv else None,
        metadata={"seed": seed, "fit_fraction": fit_fraction, "n_fit": int(len(fit_idx)), "n_heldout": int(len(ho_idx))},
        **identity,
    )
    prob = np.array([r.answer_prob for r in rows])
    side = {
        "n_fit": int(len(fit_idx)),
        "n_heldout": int(len(ho_idx)),
        "accuracy_heldout": float(correct[ho_idx].mean()) if len(ho_idx) else None,
        "auroc_answer_prob_heldout": auroc(-prob[ho_idx], ~correct[ho_idx]) if len(ho_idx) else None,
        "auroc_entropy_heldout": {agg: auroc(np.array([r.scores[agg] for r in rows])[ho_idx], ~correct[ho_idx])
                                  for agg in ("mean", "max", "first")} if len(ho_idx) else None,
    }
    return cal, side


def model_identity(model) -> str:
    return get_adapter(model).model_id


def write_scores(path: Path, rows: Sequence[ScoredAnswer]) -> None:
    import json

    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({"id": r.id, "answer": r.answer, "correct": r.correct, "scores": r.scores,
                                "answer_prob": r.answer_prob, **r.extra}) + "\n")
