"""Time and peak-memory ratio of ``guard.generate`` over plain ``model.generate``, same model, one run.

All calls generate the same number of tokens from the same prompt; they alternate, each measured
``--repeats`` times, and the medians are compared. Side by side: plain ``model.generate``; the same
inside the FastRM capture (maps only); the capture plus the token-signal recorder (maps, chosen-token
log-probabilities, predictive entropy, margin, pooled prompt states: everything the scores need, no
host sync per token); the full ``guard.generate`` (all of that, plus every score, the verdict,
policy and span building; telemetry goes to an in-memory exporter, so its cost is counted); and the
same with the optional image-free pass of ``visual_contrast`` (one more forward per call). All
include the processor call. On CPU, peak memory is sampled RSS above the level at the call's
start, which the allocator's reuse of freed memory can hide (then it prints "-").

    python benchmarks/guard_overhead.py                       # random LLaVA-shaped model for this CPU
    python benchmarks/guard_overhead.py --model reference     # the shipped reference model
    python benchmarks/guard_overhead.py --shape llava-1.5-7b --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from relevancy_speed import SHAPES, PeakMemory  # noqa: E402

from calibration import fit_calibration  # noqa: E402
from fastrm_core import FastRMProxy, ProxyConfig, capture, get_adapter, load_vlm  # noqa: E402
from fastrm_core.inputs import prepare_inputs  # noqa: E402
from fastrm_core.testing import blank_image, build_tiny_llava  # noqa: E402
from guardrail import Guard  # noqa: E402
from guardrail.answers.token_signals import TokenSignals  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="cpu-small")
    ap.add_argument("--model", default=None, help="load this model instead of building --shape ('reference' works)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    console = Console()
    if args.model:
        model, processor = load_vlm(args.model, device=device)
        label = args.model
    else:
        model, processor = build_tiny_llava(SHAPES[args.shape], device=device)
        label = args.shape
    adapter = get_adapter(model)
    if args.model == "reference":
        from shapesvqa.assets import reference_proxy_path

        proxy = FastRMProxy.from_pretrained(reference_proxy_path())
    else:
        proxy = FastRMProxy(ProxyConfig(hidden_size=adapter.hidden_size))  # any grid
    proxy = proxy.to(device=device, dtype=next(model.parameters()).dtype).eval()
    rng = np.random.default_rng(0)
    cal = fit_calibration(np.r_[rng.normal(0.5, 0.05, 40), rng.normal(0.9, 0.05, 40)], np.r_[[True] * 40, [False] * 40],
                          entropy_normalized=True)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    guard = Guard(model, processor, proxy=proxy, calibration=cal, tracer_provider=provider)
    crop = getattr(processor.image_processor, "crop_size", None)
    size = crop["height"] if crop else 336
    image = blank_image(size, (180, 60, 60))
    question = "What color is the circle?"
    suppress = sorted(adapter.placeholder_token_ids)
    kw = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False, suppress_tokens=suppress)

    def plain():  # what an unguarded app does: build the prompt, call the processor, generate (no guard checks)
        with torch.no_grad():
            return model.generate(**prepare_inputs(model, processor, [image], [guard.prompt(question)]), **kw)

    def maps_only():
        with torch.no_grad(), capture(model, proxy, adapter=adapter) as cap:
            out = model.generate(**guard.prepare([image], [question]), **kw)
        cap.row_maps(0)
        return out

    def maps_and_signals():
        from transformers import LogitsProcessorList

        rec = TokenSignals()
        with torch.no_grad(), capture(model, proxy, adapter=adapter) as cap:
            out = model.generate(**guard.prepare([image], [question]), **kw, logits_processor=LogitsProcessorList([rec]))
        cap.row_maps(0), cap.features, rec.result(out)
        return out

    def maps_signals_evidence():  # what the Guard records since the evidence scores (issue 28)
        from transformers import LogitsProcessorList

        from guardrail.answers.pipeline import evidence_signals

        rec = TokenSignals()
        with torch.no_grad(), capture(model, proxy, adapter=adapter, keep_states=True) as cap:
            out = model.generate(**guard.prepare([image], [question]), **kw, logits_processor=LogitsProcessorList([rec]))
        cap.row_maps(0), cap.features, rec.result(out), evidence_signals(cap)
        return out

    def guarded():
        return guard.generate(image, question, **kw)

    contrast_guard = Guard(model, processor, proxy=proxy, calibration=cal, tracer_provider=provider, visual_contrast=True)

    def guarded_with_contrast():  # the optional image-free pass (issue 28), off by default
        return contrast_guard.generate(image, question, **kw)

    sides = {"model.generate": plain, "+ maps": maps_only, "+ maps + signals": maps_and_signals,
             "+ maps + signals + evidence": maps_signals_evidence, "guard.generate": guarded,
             "guard.generate, visual contrast on": guarded_with_contrast}
    for fn in sides.values():  # warm-up
        fn()
    times_of = {k: [] for k in sides}
    mems_of = {k: [] for k in sides}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            times, mems = times_of[name], mems_of[name]
            with PeakMemory(device) as pm:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            mems.append(pm.peak_mib)
        exporter.clear()
    tp = statistics.median(times_of["model.generate"])
    mp = statistics.median(mems_of["model.generate"])
    table = Table(title=f"vs model.generate: {label} on {device}, {args.tokens} tokens, median of {args.repeats}")
    for c in ["", "seconds", "ratio", "peak MiB above start", "ratio "]:
        table.add_column(c, justify="right")
    for name in sides:
        t, m = statistics.median(times_of[name]), statistics.median(mems_of[name])
        table.add_row(name, f"{t:.4f}", f"{t / tp:.3f}", f"{m:.1f}", f"{m / mp:.3f}" if mp >= 1 else "- (< 1 MiB)")
    console.print(table)
    for name in sides:
        console.print(f"all runs (s), {name}: {[round(t, 4) for t in times_of[name]]}")


if __name__ == "__main__":
    main()
