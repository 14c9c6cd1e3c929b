"""Command lines are quiet by default: no transformers "Loading weights" bar unless --verbose."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from calibration import fit_calibration
from fastrm_core.testing import blank_image
from guardrail.cli.main import main

BAR = "Loading weights"


@pytest.fixture(scope="module")
def artifacts(tiny_llava, tiny_proxy, tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    model, processor = tiny_llava
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    tiny_proxy.save_pretrained(root / "proxy")
    rng = np.random.default_rng(0)
    cal = fit_calibration(np.r_[rng.normal(0.5, 0.05, 20), rng.normal(0.9, 0.05, 20)], np.arange(40) < 20)
    cal.save(root / "calibration.json")
    blank_image(32, (200, 30, 30)).save(root / "scene.png")
    return root


def run(root, *extra):
    argv = ["run", "--model", root / "model", "--proxy", root / "proxy", "--calibration", root / "calibration.json",
            "--image", root / "scene.png", "--question", "What color is it?", "--max-new-tokens", "2", *extra]
    out = io.StringIO()
    return main([str(a) for a in argv], console=Console(file=out, width=120, color_system=None))


def test_a_cli_call_prints_no_loading_bar_unless_verbose(artifacts, capfd):
    assert run(artifacts) == 0
    assert BAR not in capfd.readouterr().err
    assert run(artifacts, "--verbose") == 0  # the bar is there to be hidden: verbose shows it
    assert BAR in capfd.readouterr().err
    assert run(artifacts) == 0
    assert BAR not in capfd.readouterr().err


def test_every_command_line_that_loads_a_model_has_verbose():
    from fastrm_core.cli import build_parser as fastrm_parser
    from guardrail.cli.main import build_parser as guardrail_parser
    from shapesvqa.cli import build_parser as shapes_parser

    assert guardrail_parser().parse_args(["demo", "-v"]).verbose
    assert guardrail_parser().parse_args(["calibrate", "--data", "d", "--out", "o", "--verbose"]).verbose
    assert fastrm_parser().parse_args(["distill", "eval", "--data", "d", "--out", "o", "-v"]).verbose
    assert fastrm_parser().parse_args(["distill", "build", "--data", "d", "--out", "o", "-v"]).verbose
    assert shapes_parser().parse_args(["eval", "-v"]).verbose
