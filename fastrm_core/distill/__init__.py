"""Distillation of FastRM proxies: build (state, exact map) datasets, train, evaluate.

    from fastrm_core.distill import BuildSettings, TrainConfig, EvalConfig
    from fastrm_core.distill import build_dataset, train_proxy, evaluate_proxy

    build_dataset("shapes-train/data.jsonl", "runs/ds", model_name="reference",
                  settings=BuildSettings(max_new_tokens=4))
    train_proxy("runs/ds", "runs/proxy", TrainConfig(lr=1e-3, steps=3500))
    report = evaluate_proxy("shapes-test/data.jsonl", model_name="reference", proxy_path="runs/proxy")

Modules: :mod:`.runner` (:func:`build_dataset`, :func:`evaluate_proxy`: the one place that picks the local
loop or Ray), :mod:`.dataset` (records, shards, manifest), :mod:`.trainer`, :mod:`.evaluate`,
:mod:`.metrics` (pure metric functions), :mod:`.perturbation` (patch removal), :mod:`.gradcam`,
:mod:`.distributed` (Ray actors; imported only by ``backend="ray"``), :mod:`.cli`
(``fastrm distill ...``). See docs/distillation.md.
"""

from fastrm_core.distill.dataset import BuildSettings, Manifest, iter_records, load_manifest, read_shard
from fastrm_core.distill.evaluate import EvalConfig, aggregate, evaluate_record
from fastrm_core.distill.gradcam import gradcam_maps
from fastrm_core.distill.perturbation import generate_without_patches, removed_patches
from fastrm_core.distill.metrics import binarize_maps
from fastrm_core.distill.runner import build_dataset, evaluate_proxy
from fastrm_core.distill.trainer import PairStore, TrainConfig, TrainResult, train_proxy

__all__ = [
    "BuildSettings",
    "EvalConfig",
    "Manifest",
    "PairStore",
    "TrainConfig",
    "TrainResult",
    "aggregate",
    "binarize_maps",
    "build_dataset",
    "evaluate_proxy",
    "evaluate_record",
    "generate_without_patches",
    "gradcam_maps",
    "iter_records",
    "load_manifest",
    "read_shard",
    "removed_patches",
    "train_proxy",
]
