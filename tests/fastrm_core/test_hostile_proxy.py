"""Hostile proxy folders (issue #18, rows 5, 18): rejected before any large allocation."""

from __future__ import annotations

import json
import resource
import time

import pytest

from fastrm_core import FastRMProxy, ProxyConfig
from fastrm_common.errors import DataError


@pytest.fixture
def proxy_dir(tmp_path):
    FastRMProxy(ProxyConfig(hidden_size=16, n_image_tokens=4, grid=(2, 2), head_dim=8)).save_pretrained(tmp_path)
    return tmp_path


def _edit(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("eps", [-1, 0, float("nan")])
def test_row05_negative_layer_norm_eps_is_rejected(proxy_dir, eps):
    _edit(proxy_dir, layer_norm_eps=eps)
    with pytest.raises(DataError, match="layer_norm_eps"):
        FastRMProxy.from_pretrained(proxy_dir)


def test_row05_huge_hidden_size_fails_before_allocating(proxy_dir):
    _edit(proxy_dir, hidden_size=30000)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(DataError, match="hidden_size|shape"):
        FastRMProxy.from_pretrained(proxy_dir)
    assert time.perf_counter() - start < 2.0
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grown_mib < 500, f"peak RSS grew by {grown_mib:.0f} MiB before the check"


@pytest.mark.parametrize(
    "payload, match",
    [(b"[" * 100_000 + b"]" * 100_000, "nested"), (b'{"hidden_size": ' + b"9" * 5000 + b"}", "digits|invalid"),
     ('{"distilled_from": "caf\xe9"}'.encode("latin-1"), "UTF-8")],
    ids=["deep-nesting", "5000-digit-int", "latin-1"],
)
def test_row18_hostile_proxy_config_text_is_a_data_error(proxy_dir, payload, match):
    (proxy_dir / "config.json").write_bytes(payload)
    with pytest.raises(DataError, match=match):
        FastRMProxy.from_pretrained(proxy_dir)


def test_row05_truncated_proxy_weights_are_a_data_error(proxy_dir):
    weights = proxy_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(DataError):
        FastRMProxy.from_pretrained(proxy_dir)
