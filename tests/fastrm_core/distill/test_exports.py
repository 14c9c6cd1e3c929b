import doctest

import fastrm_core.distill
from fastrm_core.distill import metrics, trainer


def test_public_surface_is_deliberate():
    assert fastrm_core.distill.__all__ == sorted(fastrm_core.distill.__all__)
    assert set(fastrm_core.distill.__all__) == {
        "BuildSettings", "EvalConfig", "Manifest", "PairStore", "TrainConfig", "TrainResult", "aggregate",
        "binarize_maps", "build_dataset", "evaluate_proxy", "evaluate_record", "generate_without_patches",
        "gradcam_maps", "iter_records", "load_manifest", "read_shard", "removed_patches", "train_proxy",
    }
    for name in fastrm_core.distill.__all__:
        assert getattr(fastrm_core.distill, name) is not None


def test_docstring_examples_run():
    for module in (metrics, trainer):
        failed, _ = doctest.testmod(module, extraglobs={"np": __import__("numpy"), "torch": __import__("torch")})
        assert failed == 0, module.__name__
