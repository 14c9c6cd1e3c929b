"""Entropy scores, KDE-fitted confidence thresholds and calibration artifacts.

The pipeline, for one labelled set of answers::

    AnswerSignals (maps' entropies, token log-probs, ...)  gathered during the one generate
      -> get_score(name, **params)(signals)   one score per answer (higher = more uncertain)
      -> vqa_accuracy / is_correct            was the answer right
      -> fit_calibration(scores, correct)     a Calibration: score + threshold + held-out metrics
      -> Calibration.verdict(score)           "confident" if score < threshold else "uncertain"

Scores are plug-ins (``answer_scores``: ``map_entropy`` of the FastRM paper, token
probabilities, predictive entropy, margin, input ``novelty``, ``fused``); the
``guaranteed_precision`` rule (``guarantee``) certifies the precision of confident answers.
The math modules (``entropy``, ``scores``, ``answer_scores``, ``novelty``, ``fused``,
``guarantee``, ``fit``) are pure; ``artifact`` (JSON save/load) and ``plot`` do the I/O.
The VQA records (JSONL reading) and accuracy live in the torch-free leaf
(:mod:`fastrm_common.records`, :mod:`fastrm_common.vqa`), shared with distillation, and are
re-exported here. ``import calibration`` does not import torch.
"""

from calibration.answer_scores import (
    AnswerSignals,
    Score,
    fit_score,
    get_score,
    list_scores,
    lookup_score,
    observed_scores,
    register_score,
    table_scores,
)
from calibration.artifact import (
    Calibration,
    GroupThresholds,
    KDECurves,
    NoveltyGate,
    RuleResult,
    ScoreSpec,
    ThresholdMetrics,
)
from calibration.entropy import token_entropy
from calibration.fit import auroc, evaluate_threshold, fit_calibration, split_fit_heldout
from calibration.guarantee import GuaranteeResult, clopper_pearson_upper, guaranteed_threshold
from calibration.plot import plot_calibration
from calibration.scores import answer_score, content_token_mask
from fastrm_common.records import DataProblem, VQARecord, dataset_hash, read_vqa_jsonl
from fastrm_common.vqa import is_correct, normalize_answer, vqa_accuracy

__all__ = [
    "AnswerSignals",
    "Calibration",
    "DataProblem",
    "GroupThresholds",
    "GuaranteeResult",
    "KDECurves",
    "NoveltyGate",
    "RuleResult",
    "Score",
    "ScoreSpec",
    "ThresholdMetrics",
    "VQARecord",
    "answer_score",
    "auroc",
    "clopper_pearson_upper",
    "content_token_mask",
    "dataset_hash",
    "evaluate_threshold",
    "fit_calibration",
    "fit_score",
    "get_score",
    "guaranteed_threshold",
    "is_correct",
    "list_scores",
    "lookup_score",
    "normalize_answer",
    "observed_scores",
    "plot_calibration",
    "read_vqa_jsonl",
    "register_score",
    "split_fit_heldout",
    "table_scores",
    "token_entropy",
    "vqa_accuracy",
]
