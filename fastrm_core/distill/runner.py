"""The two drivers of distillation, local or on Ray: :func:`build_dataset` and :func:`evaluate_proxy`.

This is the one module that chooses between the local loop (:mod:`.dataset`, :mod:`.evaluate`,
in this process) and Ray actors (:mod:`.distributed`, which runs the same per-shard and
per-record functions in its workers), so that neither side imports the other.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Literal

from fastrm_common.errors import InputError
from fastrm_common.records import dataset_hash, read_vqa_jsonl
from fastrm_core.adapters import get_adapter
from fastrm_core.loading import load_vlm
from fastrm_core.proxy import FastRMProxy

from .dataset import (
    BuildSettings,
    Manifest,
    ModelInfo,
    OnRecord,
    build_shard,
    load_manifest,
    prepare_manifest,
    records_done,
    save_manifest,
)
from .evaluate import EvalConfig, aggregate, check_proxy_fits, evaluate_records

OnResult = Callable[[dict], None]  # one evaluated record's result

__all__ = ["build_dataset", "evaluate_proxy"]


def build_dataset(
    data: str | Path,
    out: str | Path,
    *,
    model=None,
    processor=None,
    model_name: str | Path | None = None,
    settings: BuildSettings = BuildSettings(),
    dtype: str | None = None,
    device: str | None = None,
    backend: Literal["local", "ray"] = "local",
    workers: int = 1,
    ray_address: str | None = None,
    overwrite: bool = False,
    on_record: OnRecord | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Build (or resume) a distillation dataset from a VQA JSONL file into folder ``out``.

    Args:
        data: the JSONL file (ShapesVQA export format).
        out: the output folder; if it already holds a manifest of the same inputs, the run resumes.
        model, processor: a loaded VLM (local backend). Without them, ``model_name`` is loaded
            with :func:`fastrm_core.loading.load_vlm` (``dtype``, ``device``).
        model_name: the path or hub id recorded in the manifest (and loaded by Ray workers).
        backend: ``"local"`` (this process, no Ray import) or ``"ray"`` (``workers`` actors, each
            holding one model copy; needs ``model_name``; see :mod:`fastrm_core.distill.distributed`).
        on_start: called once as ``on_start(records_to_do, records_done_before)``.
        on_record: called after each record as ``on_record(record_id, n_tokens)`` (0 = skipped).

    Returns:
        The final :class:`Manifest` (``complete`` is True).

    Example::

        manifest = build_dataset("shapes/data.jsonl", "runs/ds", model_name="reference",
                                 settings=BuildSettings(max_new_tokens=4))
        manifest.n_records, manifest.n_tokens
    """
    if backend not in ("local", "ray"):
        raise InputError(f"unknown backend {backend!r}; expected one of: local, ray")
    if backend == "ray":
        if model_name is None:
            raise InputError("the ray backend loads the model in each worker: pass model_name (a path or hub id)")
        from .distributed import ray_build  # Ray is optional: imported only for this backend

        return ray_build(
            data, out, model_name=str(model_name), settings=settings, dtype=dtype, device=device,
            workers=workers, ray_address=ray_address, overwrite=overwrite, on_record=on_record, on_start=on_start,
        )

    if model is None:
        if model_name is None:
            raise InputError("pass a loaded model and processor, or model_name")
        model, processor = load_vlm(model_name, dtype=dtype, device=device)
    elif processor is None:
        raise InputError("a model was passed without its processor")
    adapter = get_adapter(model)
    name = str(model_name) if model_name is not None else adapter.model_id
    manifest, todo = prepare_manifest(
        data, out, model_name=name, info=ModelInfo.from_model(adapter, processor, settings), settings=settings,
        overwrite=overwrite,
    )
    if on_start is not None:
        on_start(sum(len(r) for _, r in todo), records_done(manifest))
    out = Path(out)
    for index, records in todo:
        entry = build_shard(model, processor, adapter, index, records, out, settings, on_record)
        manifest.shards.append(entry)
        save_manifest(out, manifest)
    return load_manifest(out)


def evaluate_proxy(
    data: str | Path,
    *,
    model=None,
    processor=None,
    proxy=None,
    model_name: str | Path | None = None,
    proxy_path: str | Path | None = None,
    config: EvalConfig = EvalConfig(),
    n: int | None = None,
    dtype: str | None = None,
    device: str | None = None,
    backend: Literal["local", "ray"] = "local",
    workers: int = 1,
    ray_address: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_record: OnResult | None = None,
) -> dict:
    """Evaluate a proxy on the first ``n`` records of a VQA JSONL file; returns the report dict.

    Pass a loaded ``model``/``processor``/``proxy``, or ``model_name``/``proxy_path`` (required
    for ``backend="ray"``, whose workers load their own copies). A proxy that does not fit the
    model raises :class:`~fastrm_common.errors.ConfigMismatchError` before any record is run (with
    the local backend, before the data file is read or ``on_start`` is called; the message names
    the model the proxy was distilled from).

    Example::

        report = evaluate_proxy("shapes-test/data.jsonl", model_name="reference",
                                proxy_path="runs/proxy", n=200)
        report["classification"]["thresholds"][4]["f1"]      # F1 at 0.5
        report["perturbation"]["positive"]["proxy"]["auc"]   # lower = better
    """
    if backend not in ("local", "ray"):
        raise InputError(f"unknown backend {backend!r}; expected one of: local, ray")
    if backend == "local":  # load and check first: a proxy that does not fit is refused before any data is read
        if model is None:
            if model_name is None:
                raise InputError("pass a loaded model and processor, or model_name")
            model, processor = load_vlm(model_name, dtype=dtype, device=device)
        if proxy is None:
            if proxy_path is None:
                raise InputError("pass a loaded proxy, or proxy_path")
            proxy = FastRMProxy.from_pretrained(proxy_path, device=next(model.parameters()).device)
        check_proxy_fits(proxy, model, model_name)
    data = Path(data)
    records, problems = read_vqa_jsonl(data, check_images=False)
    if n is not None:
        if n < 1:
            raise InputError(f"n must be >= 1, got {n}")
        records = records[:n]
    start = time.perf_counter()
    if on_start is not None:
        on_start(len(records))
    if backend == "ray":
        if model_name is None or proxy_path is None:
            raise InputError("the ray backend loads model and proxy in each worker: pass model_name and proxy_path")
        from .distributed import ray_evaluate  # Ray is optional: imported only for this backend

        results, proxy_config, model_id = ray_evaluate(
            records, base_dir=data.resolve().parent, model_name=str(model_name), proxy_path=str(proxy_path),
            config=config, dtype=dtype, device=device, workers=workers, ray_address=ray_address, on_record=on_record,
        )
    else:
        proxy_config = proxy.config
        model_id = get_adapter(model).model_id
        results = evaluate_records(model, processor, proxy, records, config, base_dir=data.resolve().parent,
                                   on_record=on_record)
    label_threshold = config.label_threshold or proxy_config.label_threshold
    report = aggregate(results, config, label_threshold=label_threshold)
    report["skipped"] = [{"line": p.line, "reason": p.message} for p in problems] + report["skipped"]
    report["n_skipped"] = len(report["skipped"])
    report = {
        "model": str(model_name) if model_name is not None else model_id,
        "model_id": model_id,
        "proxy": str(proxy_path) if proxy_path is not None else None,
        "proxy_distilled_from": proxy_config.distilled_from,
        "proxy_training_data_hash": proxy_config.training_data_hash,
        "data": str(data.resolve()),
        "data_hash": dataset_hash(data),
        "settings": {**asdict(config), "backend": backend, "workers": workers},
        "seconds": round(time.perf_counter() - start, 2),
        **report,
    }
    return report
