"""Server counters in the Prometheus text exposition format (``GET /metrics``).

Plain text is the simplest thing to scrape (Prometheus, the OpenTelemetry Collector's
prometheus receiver, ``curl``); the Guard's own spans still go through OpenTelemetry.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["ServerMetrics"]


def _labels(**kv) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in sorted(kv.items()))
    return "{" + inner + "}" if inner else ""


@dataclass
class ServerMetrics:
    """Request, verdict and action counters plus latency sums; thread-safe."""

    responses: Counter = field(default_factory=Counter)  # (route, status) -> n
    verdicts: Counter = field(default_factory=Counter)
    actions: Counter = field(default_factory=Counter)
    latency_sum: float = 0.0
    latency_count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def response(self, route: str, status: int) -> None:
        with self._lock:
            self.responses[(route, int(status))] += 1

    def result(self, verdict, action: str, seconds: float) -> None:
        with self._lock:
            self.verdicts[verdict or "none"] += 1
            self.actions[action] += 1
            self.latency_sum += seconds
            self.latency_count += 1

    def render(self, batch_stats, *, queue_depth: int, in_flight: int, ready: bool) -> str:
        """The exposition text: counters, gauges, and the batcher's statistics."""
        lines = []

        def metric(name, kind, help_, samples):
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{lab} {val}" for lab, val in samples)

        with self._lock:
            metric("guardrail_serve_responses_total", "counter", "HTTP responses by route and status",
                   [(_labels(route=r, status=s), n) for (r, s), n in sorted(self.responses.items())])
            metric("guardrail_serve_verdicts_total", "counter", "guarded answers by verdict",
                   [(_labels(verdict=v), n) for v, n in sorted(self.verdicts.items())])
            metric("guardrail_serve_actions_total", "counter", "guarded answers by policy action",
                   [(_labels(action=a), n) for a, n in sorted(self.actions.items())])
            lines += ["# HELP guardrail_serve_request_seconds wall time of answered chat requests",
                      "# TYPE guardrail_serve_request_seconds summary",
                      f"guardrail_serve_request_seconds_sum {self.latency_sum:.6f}",
                      f"guardrail_serve_request_seconds_count {self.latency_count}"]
        metric("guardrail_serve_batches_total", "counter", "generate_batch calls", [("", batch_stats.batches)])
        metric("guardrail_serve_batched_requests_total", "counter", "requests answered through batches",
               [("", batch_stats.batched_jobs)])
        metric("guardrail_serve_batch_seconds_total", "counter", "seconds spent in generate_batch",
               [("", f"{batch_stats.batch_seconds:.6f}")])
        metric("guardrail_serve_batch_size_total", "counter", "batches by size",
               [(_labels(size=k), v) for k, v in sorted(batch_stats.sizes.items())])
        metric("guardrail_serve_rejected_total", "counter", "requests answered 429 (queue full)",
               [("", batch_stats.rejected)])
        metric("guardrail_serve_cancelled_total", "counter", "queued requests dropped because the client left",
               [("", batch_stats.cancelled)])
        metric("guardrail_serve_queue_depth", "gauge", "requests waiting (streams included)", [("", queue_depth)])
        metric("guardrail_serve_in_flight", "gauge", "requests waiting or running", [("", in_flight)])
        metric("guardrail_serve_ready", "gauge", "1 once the model is loaded", [("", int(ready))])
        return "\n".join(lines) + "\n"
