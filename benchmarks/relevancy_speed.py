"""Seconds per answer and peak memory: per-step gradient maps vs the exact baseline vs proxy capture.

For one model, in one run, for answers of 10, 30 and 100 tokens:

* ``per_step``  greedy generation computing each token's exact Chefer map during generation, the
  naive way (attentions kept in the graph, a backward per step, full N x N products). This is our
  own slow reference, not a port of an interactive tool: LVLM-Interpret, for instance, reuses
  earlier steps' gradients (an approximation), also takes parameter and vision-tower gradients
  and backpropagates temperature-scaled logits, so its cost is not measured here;
* ``exact``     :func:`fastrm_core.gradient_relevancy` on the same tokens (one forward,
  row-vector propagation, batched backward), timed alone and with the generation it needs;
* ``capture``   ``model.generate`` inside :func:`fastrm_core.capture` with a FastRM proxy;
* ``generate``  plain ``model.generate`` (the floor).

Default model: a randomly initialised LLaVA-shaped model that fits a laptop CPU (hidden 1024,
8 layers, 576 image tokens). ``--shape llava-1.5-7b`` builds the real 7B language-model shape
in bf16 (use a GPU); ``--shape qwen2-vl-7b`` the real Qwen2-VL-7B shape (language model and vision
tower; a 672 x 672 picture: 576 image tokens after the 2 x 2 merge, M-RoPE), ``qwen2-vl-small`` a
CPU-sized Qwen2-VL with the same number of image tokens. Peak memory is the CUDA allocator's peak on GPU, and the peak resident set
size above the pre-call level on CPU (sampled every 2 ms).

    python benchmarks/relevancy_speed.py                 # CPU default, lengths 10 30 100
    python benchmarks/relevancy_speed.py --lengths 10 30 --threads 2
    python benchmarks/relevancy_speed.py --shape llava-1.5-7b --device cuda
    python benchmarks/relevancy_speed.py --shape qwen2-vl-7b --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import threading
import time

import torch
from rich.console import Console
from rich.table import Table

from fastrm_core import FastRMProxy, ProxyConfig, capture, get_adapter, gradient_relevancy, per_step_relevancy
from fastrm_core.testing import TinyLlavaSpec, TinyQwenSpec, blank_image, build_tiny_llava, build_tiny_qwen2_vl

SHAPES = {
    "cpu-small": TinyLlavaSpec(hidden_size=1024, num_layers=8, num_heads=16, intermediate_size=2816,
                               image_size=336, patch_size=14, vision_hidden_size=64, vision_layers=1),
    "llava-1.5-7b": TinyLlavaSpec(hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008,
                                  image_size=336, patch_size=14, vision_hidden_size=1024, vision_layers=23,
                                  vision_heads=16, dtype=torch.bfloat16),
    # Qwen2-VL: 672 x 672 pixels, 14-pixel patches, 2 x 2 merge -> 24 x 24 = 576 image tokens
    "qwen2-vl-small": TinyQwenSpec(hidden_size=1024, num_layers=8, num_heads=16, num_kv_heads=4, intermediate_size=2816,
                                   mrope_section=(8, 12, 12), patch_size=14, vision_hidden_size=64, vision_layers=1,
                                   min_pixels=672 * 672, max_pixels=672 * 672),
    "qwen2-vl-7b": TinyQwenSpec(hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4, intermediate_size=18944,
                                mrope_section=(16, 24, 24), patch_size=14, vision_hidden_size=1280, vision_layers=32,
                                vision_heads=16, vision_mlp_ratio=4, min_pixels=672 * 672, max_pixels=672 * 672,
                                dtype=torch.bfloat16),
}
IMAGE_SIDE = {"qwen2-vl-small": 672, "qwen2-vl-7b": 672}


class PeakMemory:
    """Peak memory above the level at entry, in MiB (CUDA allocator on GPU, sampled RSS on CPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = self._rss()
            self._peak = self._base
            self._stop = threading.Event()

            def sample():
                while not self._stop.is_set():
                    self._peak = max(self._peak, self._rss())
                    time.sleep(0.002)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.peak_mib = (self._peak - self._base) / 2**20


def timed(fn, device, repeats=1):
    """(best seconds, peak MiB, result). On CPU with one thread each repeat runs in a forked child
    process, so memory that an earlier measurement freed (and the allocator kept) cannot hide this
    one's peak; with more threads it runs in-process (fork and OpenMP pools do not mix) and the
    memory column can under-report."""
    if device.type == "cpu" and torch.get_num_threads() == 1:  # OpenMP thread pools do not survive fork
        return _timed_forked(fn, repeats)
    best, result, mem = float("inf"), None, 0.0
    for _ in range(repeats):
        with PeakMemory(device) as pm:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        mem = max(mem, pm.peak_mib)
    return best, mem, result


def _timed_forked(fn, repeats):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    best, mem, result = float("inf"), 0.0, None
    for _ in range(repeats):
        parent, child = ctx.Pipe(duplex=False)

        def work(conn=child):
            with PeakMemory(torch.device("cpu")) as pm:
                start = time.perf_counter()
                value = fn()
                seconds = time.perf_counter() - start
            # plain pickle over our own pipe (not torch's shared-memory pickler, whose fds die with the child)
            conn.send_bytes(pickle.dumps((seconds, pm.peak_mib, value)))
            conn.close()

        proc = ctx.Process(target=work)
        proc.start()
        seconds, peak, result = pickle.loads(parent.recv_bytes())
        proc.join()
        best, mem = min(best, seconds), max(mem, peak)
    return best, mem, result


def propagation_only(adapter, n_pos: int, n_tokens: int, device) -> tuple[float, float]:
    """Seconds for the relevancy propagation alone, given L random (N, N) matrices Ā, for n_tokens rows:
    the row-vector update v <- v + v Ā (what gradient_relevancy does) vs full R <- R + Ā R per token."""
    n_layers = len(adapter.decoder_layers)
    gen = torch.Generator().manual_seed(0)
    a_bar = [torch.rand(n_pos, n_pos, generator=gen).tril_().to(device) / n_pos for _ in range(n_layers)]

    def rows():
        v = torch.zeros(n_tokens, n_pos, device=device)
        v[torch.arange(n_tokens), torch.arange(n_pos - n_tokens, n_pos)] = 1.0
        for a in reversed(a_bar):
            v = v + v @ a
        return v

    def full():
        out = []
        for t in range(n_tokens):
            r = torch.eye(n_pos, device=device)
            for a in a_bar:
                r = r + a @ r
            out.append(r[n_pos - n_tokens + t])
        return torch.stack(out)

    t_row, _, v = timed(rows, device)
    t_full, _, r = timed(full, device)
    assert torch.allclose(v, r, rtol=1e-4, atol=1e-6)
    return t_row, t_full


def proxy_only(proxy, adapter, n_image: int, n_tokens: int, device, repeats: int = 5) -> float:
    """Seconds the proxy itself needs for one answer's maps: image keys once, then one query per token
    (what capture adds to each decoding step), on random states of the model's width. Best of ``repeats``."""
    dtype = next(proxy.parameters()).dtype
    img = torch.randn(1, n_image, adapter.hidden_size, device=device, dtype=dtype)
    steps = torch.randn(n_tokens, 1, 1, adapter.hidden_size, device=device, dtype=dtype)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            keys = proxy.image_keys(img)
            maps = [torch.sigmoid(proxy.token_logits(h, keys)) for h in steps]
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    assert len(maps) == n_tokens
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu-small")
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--skip-per-step-above", type=int, default=10**9,
                        help="skip the (slow) per-step method for longer answers")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    console = Console()
    spec = SHAPES[args.shape]
    side = IMAGE_SIDE.get(args.shape, getattr(spec, "image_size", 0))
    console.print(f"building {args.shape} ({spec.hidden_size=}, {spec.num_layers=}, image {side}/{spec.patch_size}) on {device}")
    qwen = isinstance(spec, TinyQwenSpec)
    model, processor = (build_tiny_qwen2_vl if qwen else build_tiny_llava)(spec, device=device)
    adapter = get_adapter(model)
    model.generation_config.eos_token_id = None  # answers of exactly the requested length
    proxy = FastRMProxy(ProxyConfig(hidden_size=adapter.hidden_size))  # any grid: the maths does not depend on it
    proxy = proxy.to(device=device, dtype=spec.dtype).eval()
    prompt = adapter.build_prompt(processor, "What color is the circle?")[0]
    inputs = processor(images=blank_image(side, (180, 40, 40)), text=prompt, return_tensors="pt").to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(spec.dtype)
    suppress = sorted(adapter.placeholder_token_ids)
    n_prompt = inputs["input_ids"].shape[1]
    regions = adapter.regions(inputs)
    n_image = sum(r.size for r in regions)
    console.print(f"prompt: {n_prompt} tokens ({n_image} image tokens, grids {[r.grid for r in regions]})")

    def gen(n):
        with torch.no_grad():
            return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, suppress_tokens=suppress)

    def gen_capture(n):
        with torch.no_grad(), capture(model, proxy) as cap:
            out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, suppress_tokens=suppress)
        return out, cap.row_maps(0)

    gen(2)  # warm-up
    results = []
    for n in args.lengths:
        t_gen, m_gen, out = timed(lambda: gen(n), device, repeats=2)
        t_cap, m_cap, (out_cap, maps) = timed(lambda: gen_capture(n), device, repeats=2)
        assert maps.shape[0] == n
        # Capture only reads the final norm's output, so the tokens should match; on a GPU with a
        # random bf16 model, near-tied logits can still flip between two generations (seen once at
        # 100 tokens on an H200). Report where instead of failing: the timings stay comparable.
        diverged = (out != out_cap).nonzero()
        if len(diverged):
            console.print(f"[yellow]note: generation with capture diverged from the plain one at token "
                          f"{int(diverged[0, 1]) - n_prompt} of {n}[/yellow]")
        t_exact, m_exact, rel = timed(lambda: gradient_relevancy(model, inputs, out), device)
        t_loop, m_loop, rel_loop = timed(lambda: gradient_relevancy(model, inputs, out, batched_backward=device.type != "cuda"), device)
        assert torch.allclose(rel.rows, rel_loop.rows, rtol=1e-4, atol=1e-7)
        t_prop_row, t_prop_full = propagation_only(adapter, n_prompt + n - 1, n, device)
        t_proxy = proxy_only(proxy, adapter, n_image, n, device, repeats=5)
        row = {"tokens": n, "generate_s": t_gen, "capture_s": t_cap, "exact_maps_s": t_exact,
               "exact_total_s": t_exact + t_gen, "generate_mib": m_gen, "capture_mib": m_cap, "exact_mib": m_exact,
               "exact_loop_s": t_loop, "exact_loop_mib": m_loop,
               "propagation_row_s": t_prop_row, "propagation_full_s": t_prop_full, "proxy_maps_s": t_proxy,
               "capture_tokens_match": not len(diverged)}
        if n <= args.skip_per_step_above:
            t_ps, m_ps, slow = timed(lambda: per_step_relevancy(model, inputs, n, stop_at_eos=False,
                                                                suppress_tokens=suppress), device)
            assert torch.equal(slow.token_ids.to(out.device), out[0, n_prompt:].cpu().to(out.device))
            err = float((slow.flat_maps - rel.flat_maps).abs().max() / rel.flat_maps.abs().max())
            row.update(per_step_s=t_ps, per_step_mib=m_ps, max_rel_diff=err)
        results.append(row)
        console.print(row)

    table = Table(width=260, title=f"relevancy cost per answer, {args.shape} on {device} (prompt {n_prompt} tokens)")
    for col in ["tokens", "per_step s", "exact s (+gen)", "exact other s", "capture s", "generate s",
                "per_step MiB", "exact MiB", "capture MiB", "per_step/exact", "per_step/capture", "capture/generate",
                "proxy maps s", "exact maps/proxy maps", "propagation full/row", "max rel diff"]:
        table.add_column(col, justify="right")
    for r in results:
        ps = r.get("per_step_s")
        table.add_row(
            str(r["tokens"]),
            f"{ps:.3f}" if ps else "skipped",
            f"{r['exact_maps_s']:.3f} (+{r['generate_s']:.3f})",
            f"{r['exact_loop_s']:.3f}",
            f"{r['capture_s']:.3f}",
            f"{r['generate_s']:.3f}",
            f"{r['per_step_mib']:.0f}" if ps else "-",
            f"{r['exact_mib']:.0f}",
            f"{r['capture_mib']:.0f}",
            f"{ps / r['exact_total_s']:.1f}x" if ps else "-",
            f"{ps / r['capture_s']:.0f}x" if ps else "-",
            f"{r['capture_s'] / r['generate_s']:.3f}",
            f"{r['proxy_maps_s']:.5f}",
            f"{r['exact_maps_s'] / r['proxy_maps_s']:.0f}x",
            f"{r['propagation_full_s'] / r['propagation_row_s']:.0f}x",
            f"{r['max_rel_diff']:.1e}" if ps else "-",
        )
    console.print(table)
    console.print("per_step/exact compares whole answers: the exact column includes the generation it needs. "
                  "capture's extra cost over plain generation is capture/generate - 1. 'proxy maps' is the proxy's own "
                  "work for one answer (keys once, one query per token): 'exact maps/proxy maps' compares the cost of "
                  "the maps themselves, given the generated tokens. 'propagation full/row' times "
                  "the relevancy propagation alone (same L, N, T): full N x N products per token vs the row vector. "
                  "Both gradient methods pay one backward pass per token; that is what dominates their time.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": args.shape, "device": str(device), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
