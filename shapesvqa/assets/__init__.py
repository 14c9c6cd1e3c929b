"""Shipped assets: the trained reference LLaVA (``reference-llava/``, a ``save_pretrained`` folder)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["reference_model_path"]

_REFERENCE = Path(__file__).parent / "reference-llava"


def reference_model_path() -> Path:
    """Folder of the shipped reference model; loads with ``from_pretrained`` / ``load_vlm``."""
    if not (_REFERENCE / "config.json").exists():
        raise FileNotFoundError(
            f"the reference model is not in {_REFERENCE}; train it with `python -m shapesvqa.train --ship`"
        )
    return _REFERENCE
