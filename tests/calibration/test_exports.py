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
    assert calibration.__all__ == sorted(calibration.__all__)
    # defined once in the torch-free leaf, shared with the Guard and distillation, re-exported here
    leaf = {"content_token_mask": "fastrm_common.tokens", "is_correct": "fastrm_common.vqa",
            "normalize_answer": "fastrm_common.vqa", "vqa_accuracy": "fastrm_common.vqa",
            "DataProblem": "fastrm_common.records", "VQARecord": "fastrm_common.records",
            "dataset_hash": "fastrm_common.records", "read_vqa_jsonl": "fastrm_common.records"}
    for name in calibration.__all__:
        module = getattr(calibration, name).__module__
        assert module == leaf[name] if name in leaf else module.startswith("calibration.")
