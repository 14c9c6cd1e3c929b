"""Entropy scores, KDE-fitted confidence thresholds and calibration artifacts.

The pipeline, for one labelled set of answers::

    token_entropy(maps)                       per-token map entropy (higher = less focused)
      -> answer_score(H, content_token_mask)  one score per answer (higher = more uncertain)
      -> vqa_accuracy / is_correct            was the answer right
      -> fit_calibration(scores, correct)     a Calibration: threshold + held-out metrics
      -> Calibration.verdict(score)           "confident" if score < threshold else "uncertain"

The math modules (``entropy``, ``scores``, ``vqa``, ``fit``) are pure; ``artifact``
(JSON save/load), ``data`` (JSONL reading) and ``plot`` do the I/O.
"""

from calibration.artifact import Calibration, KDECurves, RuleResult, ThresholdMetrics
from calibration.data import DataProblem, VQARecord, dataset_hash, read_vqa_jsonl
from calibration.entropy import token_entropy
from calibration.fit import auroc, evaluate_threshold, fit_calibration, split_fit_heldout
from calibration.plot import plot_calibration
from calibration.scores import answer_score, content_token_mask
from calibration.vqa import is_correct, normalize_answer, vqa_accuracy

__all__ = [
    "Calibration",
    "DataProblem",
    "KDECurves",
    "RuleResult",
    "ThresholdMetrics",
    "VQARecord",
    "answer_score",
    "auroc",
    "content_token_mask",
    "dataset_hash",
    "evaluate_threshold",
    "fit_calibration",
    "is_correct",
    "normalize_answer",
    "plot_calibration",
    "read_vqa_jsonl",
    "split_fit_heldout",
    "token_entropy",
    "vqa_accuracy",
]
