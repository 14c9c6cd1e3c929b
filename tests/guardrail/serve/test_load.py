"""A bounded load test on 127.0.0.1: 200 requests from 16 clients against the reference model, batched.

It uses the benchmark's own load generator (benchmarks/serve_load.py), bounded to 60 s: every request
is answered (or deliberately refused with 429), answers equal the in-process Guard's, and the server
needed fewer generate_batch calls than requests.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow  # 200 requests through a live server; make test-fast skips the whole module

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "serve_load.py"


def load_script():
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_200_requests_from_16_clients_within_a_minute(reference_guard):
    bench = load_script()
    bodies = bench.request_bodies(200, reference_guard.model_name)
    report = bench.serve_and_load(reference_guard, bodies, max_batch_size=16, max_wait_ms=5, max_queue=64,
                                  concurrency=16, timeout_s=60, label="batched")
    assert not report.timed_out and report.wall_s < 60, f"{report.ok} answered in {report.wall_s:.1f} s"
    assert report.errors == {} and report.ok + report.rejected == 200
    assert report.ok > 0 and report.pct(0.5) <= report.pct(0.95)
    assert sum(report.batches.values()) < report.ok and max(report.batches) > 1
    # the answers equal the in-process Guard's (spot-check a spread of them)
    import json

    from guardrail.serve.images import image_from_url

    for k in list(report.answers)[::25]:
        body = json.loads(bodies[k])
        content = body["messages"][0]["content"]
        direct = reference_guard.generate(image_from_url(content[1]["image_url"]["url"], max_pixels=1 << 24),
                                          content[0]["text"])
        assert report.answers[k] == (tuple(direct.token_ids), direct.verdict, direct.action)


def test_the_benchmark_prints_both_servers_side_by_side(capsys):
    reports = load_script().main(["--requests", "12", "--concurrency", "4", "--timeout", "60"])
    out = capsys.readouterr().out
    assert [r.label for r in reports] == ["batched (max 16)", "one at a time"]
    assert all(r.ok == 12 and not r.errors for r in reports)
    assert "throughput batched (max 16) / one at a time" in out and "p95 ms" in out
