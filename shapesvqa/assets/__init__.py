"""Shipped assets: the trained reference LLaVA (``reference-llava/``, a ``save_pretrained`` folder)."""

from __future__ import annotations

from pathlib import Path

from fastrm_common.presets import Preset

from .. import claims as _claims  # noqa: F401  registers the "shapes" claim splitter and labeler

__all__ = ["REFERENCE", "model_world", "reference_calibration_path", "reference_claim_calibration_path",
           "reference_model_path", "reference_proxy_path", "reference_world"]

_REFERENCE = Path(__file__).parent / "reference-llava"


def reference_model_path() -> Path:
    """Folder of the shipped reference model; loads with ``from_pretrained`` / ``load_vlm``."""
    if not (_REFERENCE / "config.json").exists():
        raise FileNotFoundError(
            f"the reference model is not in {_REFERENCE}; train it with "
            "`python -m shapesvqa.train --seed 4 --ship` (= `make reference-model`)"
        )
    return _REFERENCE


_PROXY = Path(__file__).parent / "reference-proxy"
_CALIBRATION = Path(__file__).parent / "reference-calibration.json"
_CLAIM_CALIBRATION = Path(__file__).parent / "reference-claim-calibration.json"


def reference_proxy_path() -> Path:
    """Folder of the FastRM proxy distilled from the reference model (``FastRMProxy.from_pretrained``)."""
    if not (_PROXY / "config.json").exists():
        raise FileNotFoundError(
            f"the reference proxy is not in {_PROXY}; distil it with the commands in docs/distillation.md"
        )
    return _PROXY


def reference_calibration_path() -> Path:
    """The calibration fitted for the reference model + proxy (``Calibration.load``)."""
    if not _CALIBRATION.exists():
        raise FileNotFoundError(
            f"the reference calibration is not at {_CALIBRATION}; fit it with `guardrail calibrate` (docs/calibration.md)"
        )
    return _CALIBRATION


def reference_claim_calibration_path() -> Path | None:
    """The claim-level calibration of the reference model's descriptions, or None when none is shipped."""
    return _CLAIM_CALIBRATION if _CLAIM_CALIBRATION.exists() else None


def model_world(folder: str | Path) -> str:
    """The world (a name of ``shapesvqa.world.WORLDS``) the model in ``folder`` was trained on, from the
    ``training.json`` that ``shapesvqa.train`` writes ("default" without one, or for a model trained
    before worlds existed)."""
    import json

    try:
        train = json.loads((Path(folder) / "training.json").read_text(encoding="utf-8")).get("train", {})
        return str(train.get("world", "default"))
    except (OSError, ValueError, AttributeError):
        return "default"


def reference_world() -> str:
    """The world the shipped model was trained on (:func:`model_world` of its folder)."""
    return model_world(_REFERENCE)


def _examples(n: int, seed: int) -> list:
    """Short-answer questions about scenes of the model's world (true labels; descriptions are asked apart)."""
    from dataclasses import replace

    from shapesvqa.world import WORLDS, generate

    return list(generate(n, seed=seed, cfg=replace(WORLDS[reference_world()].truthful(), describe_rate=0.0)))


def _describe_examples(n: int, seed: int) -> list:
    """"Describe the image." about ``n`` scenes of the model's world (true descriptions)."""
    from shapesvqa.pope import DescribeQuestion
    from shapesvqa.world import DESCRIBE, WORLDS, generate

    cfg = WORLDS[reference_world()].truthful()
    return [DescribeQuestion(ex, cfg) for ex in generate(n, seed=seed, cfg=cfg, family=DESCRIBE)]


def _pope_examples(n_scenes: int, seed: int) -> list:
    """POPE adversarial questions (positives and negatives) about ``n_scenes`` scenes of the model's world."""
    from shapesvqa.pope import pope_probes
    from shapesvqa.world import WORLDS

    return pope_probes(n_scenes, seed, WORLDS[reference_world()])


REFERENCE = Preset(
    "reference",
    model=reference_model_path,
    proxy=reference_proxy_path,
    calibration=reference_calibration_path,
    examples=_examples,
    pope_examples=_pope_examples,
    describe_examples=_describe_examples,
    description="the shipped ShapesVQA reference LLaVA with its proxy and calibration",
    claim_splitter="shapes",
    claim_calibration=reference_claim_calibration_path,
)
"""The ``"reference"`` preset, registered through the ``fastrm_guard.presets`` entry point (pyproject.toml)."""
