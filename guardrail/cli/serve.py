"""Arguments and entry of ``guardrail serve`` (kept apart so ``guardrail --help`` needs no FastAPI)."""

from __future__ import annotations

import argparse

from rich.console import Console

from fastrm_common.errors import GuardrailError

__all__ = ["add_serve_arguments", "serve_command"]


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: the GUARDRAIL_API_KEY variable; unset: no auth)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    p.add_argument("--image-dir", default=None, help="the one folder file:// image URLs may read (default: none)")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests per generate_batch call (1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits for batch company")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429")
    p.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024)
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096)
    p.add_argument("--max-tokens", type=int, default=256, help="the largest max_tokens a request may ask")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection may take to send a request's headers (default: 10)")
    p.add_argument("--cors-origin", action="append", default=[], help="allow this browser origin (repeatable; default: no CORS)")
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: the Guard's)")
    p.add_argument("--trace", default=None, help="append spans to this JSONL file")
    p.add_argument("--otlp-endpoint", default=None,
                   help="send spans to this OTLP/HTTP collector (default: the OTEL_EXPORTER_OTLP_* variables; "
                        "a Phoenix or MLflow there also gets each verdict as an annotation)")
    p.add_argument("--phoenix", default=None, metavar="URL",
                   help="send spans to an Arize Phoenix at URL and post each verdict there as a span annotation")
    p.add_argument("--capture-content", action="store_true", default=None, help="record question/answer text in spans")
    p.add_argument("--ray", action="store_true", help="serve as a Ray Serve deployment (the distributed extra)")
    p.add_argument("--replicas", type=int, default=1, help="with --ray: replicas (one GPU each when GPUs exist)")
    p.add_argument("--ray-address", default=None, help="with --ray: join this cluster (default: start a local one)")
    p.add_argument("--log-level", default="info")


def serve_command(args, console: Console) -> int:
    """Build the config, then serve in-process (uvicorn) or on Ray Serve; returns when stopped."""
    try:
        from guardrail.serve import ServeConfig, create_app, run
    except ImportError as exc:
        raise GuardrailError(str(exc)) from None
    from guardrail.telemetry.exporters import configure_tracing
    from guardrail.guard import Guard

    if args.api_key is not None and not args.api_key.strip():  # `--api-key "$UNSET"` must not mean "no auth"
        raise GuardrailError("--api-key is empty; give a non-empty key, or leave --api-key out to serve "
                             "without auth (loopback only)")
    try:
        config = ServeConfig(
            max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
            max_body_bytes=args.max_body_bytes, max_image_pixels=args.max_image_pixels, max_tokens=args.max_tokens,
            api_key=args.api_key or ServeConfig.api_key_from_env(), image_dir=args.image_dir,
            cors_origins=tuple(args.cors_origin), model_name=args.served_model_name,
            header_timeout_s=args.header_timeout,
        )
    except ValueError as exc:
        raise GuardrailError(str(exc)) from None
    guard_kwargs = dict(proxy=args.proxy, calibration=args.calibration, policy=args.policy, dtype=args.dtype,
                        device=args.device, capture_content=args.capture_content,
                        visual_contrast=True if getattr(args, "visual_contrast", False) else None)
    if args.ray:
        if args.trace:
            raise GuardrailError("--trace (one JSONL file) does not work with several replicas; use --otlp-endpoint")
        from guardrail.serve.ray_app import serve_on_ray

        return serve_on_ray(args.model, guard_kwargs, config, host=args.host, port=args.port, replicas=args.replicas,
                            otlp_endpoint=args.otlp_endpoint or args.phoenix, address=args.ray_address,
                            allow_insecure=args.insecure, console=console)
    from guardrail.telemetry.setup import tracing_endpoints

    provider = configure_tracing(jsonl_path=args.trace, **tracing_endpoints(args))

    def load():
        return Guard.from_pretrained(args.model, tracer_provider=provider, **guard_kwargs)

    app = create_app(loader=load, config=config, tracer_provider=provider)
    auth = "bearer token required" if config.api_key else "no auth"
    console.print(f"serving {args.model} on http://{args.host}:{args.port}/v1 ({auth}; "
                  f"batches of up to {config.max_batch_size}, queue {config.max_queue})")
    try:
        run(app, host=args.host, port=args.port, api_key=config.api_key, allow_insecure=args.insecure,
            log_level=args.log_level, header_timeout_s=config.header_timeout_s)
    except ValueError as exc:
        raise GuardrailError(str(exc)) from None
    finally:
        provider.shutdown()  # flushes the spans and the verdict annotations still being posted
    return 0
