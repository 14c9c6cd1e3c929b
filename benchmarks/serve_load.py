"""Load on `guardrail serve`: batched serving against one-request-at-a-time serving, side by side.

The same app (the shipped reference Guard unless ``--model`` says otherwise) runs on 127.0.0.1
twice: with dynamic batching (``--max-batch-size``, default 16) and with batches of one. Each time
``--requests`` chat completions (distinct ShapesVQA scenes, sent as data URLs) come from
``--concurrency`` clients, each with its own keep-alive connection; the run is bounded by
``--timeout`` seconds and stops by itself. Printed: latency p50 / p95 / max, throughput
(answered requests per second of wall time), 429s, other errors, the batches the server ran and
whether both servers gave the same answers (tokens and verdicts).

    python benchmarks/serve_load.py                                   # 200 requests, 16 clients
    python benchmarks/serve_load.py --requests 64 --concurrency 8 --threads 1

Client and server share one process (and its GIL): the comparison is fair, the absolute numbers
are a lower bound of what a separate server process would give.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402


@dataclass
class LoadReport:
    """What one load run measured; latencies in seconds, of answered (200) requests."""

    label: str
    requests: int
    ok: int = 0
    rejected: int = 0  # 429: deliberate backpressure
    errors: dict = field(default_factory=dict)  # status or exception -> count
    latencies: list = field(default_factory=list)
    wall_s: float = 0.0
    answers: dict = field(default_factory=dict)  # request index -> (token_ids, verdict)
    batches: dict = field(default_factory=dict)  # batch size -> count, from the server's stats
    timed_out: bool = False

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]

    @property
    def throughput(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0


def request_bodies(n: int, model: str, seed: int = 2026, max_tokens: int = 16) -> list[bytes]:
    """``n`` chat-completion bodies over distinct ShapesVQA scenes (every question family)."""
    from shapesvqa.world import generate

    bodies = []
    for ex in generate(n, seed=seed):
        buf = io.BytesIO()
        ex.image.save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        bodies.append(json.dumps({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
            {"type": "text", "text": ex.question}, {"type": "image_url", "image_url": {"url": url}}]}]}).encode())
    return bodies


def run_load(url: str, bodies: list[bytes], *, concurrency: int, timeout_s: float, label: str,
             api_key: str | None = None) -> LoadReport:
    """Send every body once from ``concurrency`` client threads; stop at ``timeout_s`` whatever is left."""
    report = LoadReport(label=label, requests=len(bodies))
    host = url.removeprefix("http://")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    lock = threading.Lock()
    next_index = iter(range(len(bodies)))
    deadline = time.monotonic() + timeout_s

    def client():
        conn = http.client.HTTPConnection(host, timeout=max(1.0, timeout_s))
        while time.monotonic() < deadline:
            with lock:
                k = next(next_index, None)
            if k is None:
                break
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/chat/completions", body=bodies[k], headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(host, timeout=max(1.0, timeout_s))
                with lock:
                    report.errors[type(exc).__name__] = report.errors.get(type(exc).__name__, 0) + 1
                continue
            dt = time.perf_counter() - t0
            with lock:
                if status == 200:
                    g = json.loads(data)["guardrail"]
                    report.ok += 1
                    report.latencies.append(dt)
                    report.answers[k] = (tuple(g["token_ids"]), g["verdict"], g["action"])
                elif status == 429:
                    report.rejected += 1
                else:
                    report.errors[status] = report.errors.get(status, 0) + 1
        conn.close()

    threads = [threading.Thread(target=client, name=f"load-client-{i}", daemon=True) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 5)
    report.wall_s = time.perf_counter() - start
    report.timed_out = any(t.is_alive() for t in threads) or report.ok + report.rejected + sum(report.errors.values()) < len(bodies)
    return report


def serve_and_load(guard, bodies, *, max_batch_size: int, max_wait_ms: float, max_queue: int, concurrency: int,
                   timeout_s: float, label: str) -> LoadReport:
    """Start the app on 127.0.0.1 with these batching settings, run the load, stop the server."""
    from guardrail.serve import LoopbackServer, ServeConfig, create_app

    config = ServeConfig(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue)
    app = create_app(guard, config=config)
    with LoopbackServer(app) as server:
        report = run_load(server.url, bodies, concurrency=concurrency, timeout_s=timeout_s, label=label)
    report.batches = dict(sorted(app.state.guardrail.batcher.stats.sizes.items()))
    return report


def print_reports(reports: list[LoadReport], console: Console, concurrency: int) -> None:
    table = Table(title=f"{reports[0].requests} requests from {concurrency} concurrent clients, 127.0.0.1")
    for col in ("server", "answered", "429", "other errors", "p50 ms", "p95 ms", "max ms", "req/s", "batches (size: n)"):
        table.add_column(col, justify="right")
    for r in reports:
        table.add_row(r.label, str(r.ok), str(r.rejected), str(sum(r.errors.values())) + (f" {r.errors}" if r.errors else ""),
                      f"{1000 * r.pct(0.5):.0f}", f"{1000 * r.pct(0.95):.0f}", f"{1000 * max(r.latencies, default=0):.0f}",
                      f"{r.throughput:.1f}", ", ".join(f"{k}: {v}" for k, v in r.batches.items()))
    console.print(table)
    if len(reports) == 2 and reports[1].throughput:
        a, b = reports
        same = [k for k in a.answers if k in b.answers]
        equal = sum(a.answers[k] == b.answers[k] for k in same)
        console.print(f"throughput {a.label} / {b.label}: {a.throughput / b.throughput:.2f}x; "
                      f"p50 {1000 * a.pct(0.5):.0f} vs {1000 * b.pct(0.5):.0f} ms; "
                      f"same tokens, verdict and action on {equal} of {len(same)} requests answered by both")


def main(argv=None) -> list[LoadReport]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="reference")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per server; the run stops by itself")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--only", choices=["batched", "serial"], default=None, help="run one server only")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from guardrail import Guard

    console = Console(width=150)
    guard = Guard.from_pretrained(args.model)
    bodies = request_bodies(args.requests, guard.model_name, max_tokens=args.max_tokens)
    guard.generate_batch([(image_of(bodies[0]), "warm up")])  # first call pays one-off costs
    runs = [("batched", args.max_batch_size), ("serial", 1)]
    reports = []
    for label, size in runs:
        if args.only and label != args.only:
            continue
        name = f"batched (max {size})" if label == "batched" else "one at a time"
        reports.append(serve_and_load(guard, bodies, max_batch_size=size, max_wait_ms=args.max_wait_ms,
                                      max_queue=args.max_queue, concurrency=args.concurrency,
                                      timeout_s=args.timeout, label=name))
    console.print(f"model {guard.model_name}, torch threads {torch.get_num_threads()}, "
                  f"max_tokens {args.max_tokens}, max wait {args.max_wait_ms} ms, queue {args.max_queue}")
    print_reports(reports, console, args.concurrency)
    return reports


def image_of(body: bytes):
    """The PIL image inside one request body (for the warm-up call)."""
    from guardrail.serve.images import image_from_url

    url = json.loads(body)["messages"][0]["content"][1]["image_url"]["url"]
    return image_from_url(url, max_pixels=1 << 30)


if __name__ == "__main__":
    main()
