"""The proxy-headroom benchmark runs end to end on a tiny dataset and scores both models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "proxy_headroom.py"


def _load():
    spec = importlib.util.spec_from_file_location("proxy_headroom", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_headroom_fits_proxy_and_probe_on_the_same_split(distill_world, capsys):
    results = _load().main(["--data", str(distill_world["dataset"]), "--steps", "30", "--batch-size", "8",
                            "--val-fraction", "0.2", "--probe-width", "16", "--lr", "1e-2"])
    out = capsys.readouterr().out
    assert list(results) == ["proxy (bilinear)", "MLP probe (width 16)"]
    for scores in results.values():
        assert 0.0 <= scores["f1@0.5"] <= scores["best_f1"] <= 1.0
        assert scores["best_threshold"] in [round(0.1 * i, 1) for i in range(1, 10)]
        assert 0.0 < scores["positive_rate"] <= 1.0
    assert "proxy/probe" in out and "train F1@0.5" in out


def test_headroom_pair_probe_shapes():
    import torch

    probe = _load().PairProbe(hidden_size=8, width=4)
    assert probe(torch.randn(3, 8), torch.randn(3, 5, 8)).shape == (3, 5)
