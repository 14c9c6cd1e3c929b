"""Scale-out of the dataset builder and the evaluation on Ray (``pip install 'fastrm-guard[distributed]'``).

``N`` stateful actors each load one copy of the model (and the proxy, for evaluation) once,
then take work from a queue (``ray.util.ActorPool``):

* build: one job = one shard (the same input-record ranges as the local run); the worker
  writes the shard file itself (atomically) into the output folder, which must therefore be
  on a file system every worker sees (one machine, or a shared mount); the driver appends the
  returned entry to the manifest and rewrites it after every shard, exactly like the local
  loop, so the result (and resuming after a kill) is the same as a local run;
* eval: one job = a contiguous block of records; the driver puts the per-record results back
  in input order and aggregates them like the local run.

Each actor asks for ``num_cpus=1`` and, when ``device`` is CUDA, ``num_gpus=1`` (one model per
GPU). Ray is imported only here, only when the ray backend is used: local runs never import it.
If Ray is not initialised, :func:`ray.init` is called (``address`` for an existing cluster,
else a local one with ``workers`` CPUs) and shut down at the end.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

from fastrm_common.errors import InputError
from fastrm_core.adapters import get_adapter
from fastrm_core.loading import load_vlm
from fastrm_core.proxy import FastRMProxy, ProxyConfig

from .dataset import BuildSettings, ModelInfo, ShardEntry, build_shard, load_manifest, prepare_manifest, records_done, save_manifest
from .evaluate import EvalConfig, evaluate_records

__all__ = ["DistillWorker", "ray_build", "ray_evaluate"]


def _require_ray():
    try:
        import ray
    except ImportError as exc:  # the optional extra is not installed
        raise InputError(
            "the ray backend needs Ray: pip install 'fastrm-guard[distributed]' (or use --backend local)"
        ) from exc
    return ray


@contextlib.contextmanager
def _ray_session(workers: int, address: str | None) -> Iterator:
    ray = _require_ray()
    owned = not ray.is_initialized()
    if owned:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=True)
    try:
        yield ray
    finally:
        if owned:
            ray.shutdown()


class DistillWorker:
    """A Ray actor holding one model copy (and optionally a proxy). Plain class; wrapped with ``ray.remote``."""

    def __init__(self, model_name: str, dtype: str | None = None, device: str | None = None, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model, self.processor = load_vlm(model_name, dtype=dtype, device=device)
        self.adapter = get_adapter(self.model)
        self.proxy = None

    def describe(self, settings: dict) -> dict:
        return asdict(ModelInfo.from_model(self.adapter, self.processor, BuildSettings(**settings)))

    def build_shard(self, index: int, records: list, folder: str, settings: dict) -> tuple[dict, list[tuple[str, int]]]:
        seen: list[tuple[str, int]] = []
        entry = build_shard(
            self.model, self.processor, self.adapter, index, records, folder, BuildSettings(**settings),
            on_record=lambda rid, n: seen.append((rid, n)),
        )
        return entry.model_dump(), seen

    def load_proxy(self, path: str) -> dict:
        self.proxy = FastRMProxy.from_pretrained(path, device=next(self.model.parameters()).device)
        self.proxy.check_compatible(self.adapter)
        return {"proxy_config": self.proxy.config.model_dump(), "model_id": self.adapter.model_id}

    def evaluate(self, start: int, records: list, config: dict, base_dir: str) -> tuple[int, list[dict]]:
        cfg = EvalConfig(**config)
        return start, evaluate_records(self.model, self.processor, self.proxy, records, cfg, base_dir=base_dir)


def _actors(ray, workers: int, model_name: str, dtype, device, threads: int | None = None):
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    gpus = 1 if device and str(device).startswith("cuda") else 0
    remote = ray.remote(num_cpus=1, num_gpus=gpus)(DistillWorker)
    return [remote.remote(model_name, dtype, device, threads) for _ in range(workers)]


def ray_build(
    data,
    out,
    *,
    model_name: str,
    settings,
    dtype: str | None,
    device: str | None,
    workers: int,
    ray_address: str | None = None,
    overwrite: bool = False,
    on_record: Callable[[str, int], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
):
    """:func:`fastrm_core.distill.runner.build_dataset` on ``workers`` Ray actors (same arguments)."""
    out = Path(out).resolve()
    with _ray_session(workers, ray_address) as ray:
        from ray.util import ActorPool

        actors = _actors(ray, workers, model_name, dtype, device)
        try:
            info = ModelInfo(**ray.get(actors[0].describe.remote(asdict(settings))))
            info = ModelInfo(info.model_id, info.adapter, info.hidden_size, tuple(info.grid), info.prompt_template,
                             info.model_hash)
            manifest, todo = prepare_manifest(data, out, model_name=model_name, info=info, settings=settings,
                                              overwrite=overwrite)
            if on_start is not None:
                on_start(sum(len(r) for _, r in todo), records_done(manifest))
            pool = ActorPool(actors)
            jobs = pool.map_unordered(
                lambda actor, job: actor.build_shard.remote(job[0], job[1], str(out), asdict(settings)), todo
            )
            for entry, seen in jobs:
                manifest.shards.append(ShardEntry.model_validate(entry))
                save_manifest(out, manifest)
                if on_record is not None:
                    for rid, n_tok in seen:
                        on_record(rid, n_tok)
        finally:
            for actor in actors:
                ray.kill(actor)
    return load_manifest(out)


def ray_evaluate(
    records: list,
    *,
    base_dir,
    model_name: str,
    proxy_path: str,
    config,
    dtype: str | None,
    device: str | None,
    workers: int,
    ray_address: str | None = None,
    on_record: Callable[[dict], None] | None = None,
    block_size: int | None = None,
):
    """Per-record evaluation results (input order), the proxy config and the model id, from Ray actors."""
    with _ray_session(workers, ray_address) as ray:
        from ray.util import ActorPool

        actors = _actors(ray, workers, model_name, dtype, device)
        try:
            loaded = ray.get([a.load_proxy.remote(str(proxy_path)) for a in actors])
            size = block_size or max(1, min(16, -(-len(records) // (4 * workers))))
            blocks = [(i, records[i : i + size]) for i in range(0, len(records), size)]
            pool = ActorPool(actors)
            jobs = pool.map_unordered(
                lambda actor, job: actor.evaluate.remote(job[0], job[1], asdict(config), str(base_dir)), blocks
            )
            by_start: dict[int, list[dict]] = {}
            for start, results in jobs:
                by_start[start] = results
                if on_record is not None:
                    for r in results:
                        on_record(r)
        finally:
            for actor in actors:
                ray.kill(actor)
    ordered = [r for start in sorted(by_start) for r in by_start[start]]
    return ordered, ProxyConfig.model_validate(loaded[0]["proxy_config"]), loaded[0]["model_id"]
