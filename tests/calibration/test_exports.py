"""The public surface of ``calibration`` changes only on purpose."""

import calibration


def test_public_names():
    assert calibration.__all__ == [
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
        "normalize_answer",
        "plot_calibration",
        "read_vqa_jsonl",
        "register_score",
        "split_fit_heldout",
        "token_entropy",
        "vqa_accuracy",
    ]
    assert calibration.__all__ == sorted(calibration.__all__)
    owners = {"content_token_mask": "fastrm_core.tokens"}  # one definition, shared with the Guard and distillation
    for name in calibration.__all__:
        module = getattr(calibration, name).__module__
        assert module == owners[name] if name in owners else module.startswith("calibration.")
