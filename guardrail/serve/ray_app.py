"""The same guarded endpoint as a Ray Serve deployment: N replicas behind one HTTP endpoint.

``guardrail serve --ray --replicas N`` (the ``distributed`` extra, ``ray[serve]``). Each replica
loads its own Guard and serves the app of :func:`guardrail.serve.create_app` unchanged (its own
batcher, limits and auth); Ray Serve's proxy spreads requests over the replicas. When the cluster
has GPUs, each replica asks for one (``num_gpus=1``) and loads the model on ``cuda``, so replicas
are pinned one per GPU; without GPUs they take one CPU each. Responses carry
``X-Guardrail-Instance`` (the replica's id), so a client or a test can see which replica answered.

Ray is imported only here, only with ``--ray``.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from fastrm_common.errors import GuardrailError

from guardrail.serve.config import ServeConfig
from guardrail.serve.server import is_loopback

__all__ = ["GuardReplica", "build_ray_app", "serve_on_ray"]


def _require_serve():
    try:
        import ray
        from ray import serve
    except ImportError as exc:  # the optional extra is not installed
        raise GuardrailError("--ray needs Ray Serve: pip install 'fastrm-guard[distributed]'") from exc
    return ray, serve


class GuardReplica:
    """One replica: loads a Guard, then hands Ray Serve the app to serve (late-bound ASGI ingress)."""

    def __init__(self, model: str, guard_kwargs: dict, config: ServeConfig, otlp_endpoint: Optional[str] = None,
                 threads: Optional[int] = None):
        import torch

        from guardrail.telemetry.exporters import configure_tracing
        from guardrail.guard import Guard

        if threads:
            torch.set_num_threads(threads)
        self.provider = configure_tracing(otlp_endpoint=otlp_endpoint)
        kwargs = dict(guard_kwargs)
        if torch.cuda.is_available() and kwargs.get("device") is None:
            kwargs["device"] = "cuda"  # Ray gave this replica one GPU (CUDA_VISIBLE_DEVICES)
        self.guard = Guard.from_pretrained(model, tracer_provider=self.provider, **kwargs)
        self.config = config
        try:
            from ray import serve

            self.instance = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a Serve replica (a unit test)
            self.instance = None

    def __serve_build_asgi_app__(self):
        from guardrail.serve.app import create_app

        return create_app(self.guard, config=self.config, tracer_provider=self.provider, instance_id=self.instance)


def build_ray_app(model: str = "reference", guard_kwargs: Optional[dict] = None, config: Optional[ServeConfig] = None,
                  *, replicas: int = 1, otlp_endpoint: Optional[str] = None, threads: Optional[int] = None,
                  use_gpus: Optional[bool] = None) -> Any:
    """A bound Ray Serve application of ``replicas`` :class:`GuardReplica` s (pass it to ``serve.run``).

    ``use_gpus`` None: one GPU per replica when the Ray cluster has GPUs, else one CPU each.
    Each replica admits up to ``config.max_queue + config.max_batch_size`` requests, so the
    app's own queue bound (429) applies rather than Ray's.
    """
    ray, serve = _require_serve()
    if replicas < 1:
        raise GuardrailError(f"--replicas must be >= 1, got {replicas}")
    config = config or ServeConfig()
    if use_gpus is None:
        use_gpus = ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1
    options = {"num_cpus": 1, "num_gpus": 1 if use_gpus else 0}
    deployment = serve.deployment(
        serve.ingress()(GuardReplica), name="guardrail", num_replicas=replicas, ray_actor_options=options,
        max_ongoing_requests=config.max_queue + config.max_batch_size,
    )
    return deployment.bind(model, dict(guard_kwargs or {}), config, otlp_endpoint, threads)


def serve_on_ray(model: str, guard_kwargs: dict, config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000,
                 replicas: int = 1, otlp_endpoint: Optional[str] = None, address: Optional[str] = None,
                 allow_insecure: bool = False, console=None) -> int:
    """Start (or join, with ``address``) a Ray cluster, deploy the replicas, serve until interrupted."""
    ray, serve = _require_serve()
    if not is_loopback(host) and config.api_key is None and not allow_insecure:
        raise GuardrailError(f"refusing to serve on {host} without an API key; set --api-key (or "
                             f"GUARDRAIL_API_KEY), or pass --insecure to accept an open endpoint")
    owned = not ray.is_initialized()
    if owned:
        ray.init(address=address, include_dashboard=False) if address else ray.init(include_dashboard=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_ray_app(model, guard_kwargs, config, replicas=replicas, otlp_endpoint=otlp_endpoint),
                  name="guardrail", route_prefix="/")
        if console is not None:
            console.print(f"serving {model} on http://{host}:{port}/v1 with {replicas} Ray Serve replica(s)")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0
    finally:
        serve.shutdown()
        if owned:
            ray.shutdown()
