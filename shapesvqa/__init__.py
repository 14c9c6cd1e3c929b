"""ShapesVQA: a synthetic grounded VQA world with exact object masks, and its tiny reference LLaVA.

- :mod:`shapesvqa.world`: scenes and questions (``generate``, ``make_example``);
- :mod:`shapesvqa.export`: the JSONL + PNG export (``export_examples``, ``read_jsonl``);
- :mod:`shapesvqa.model`: tokenizer / processor / model builders and the LLaVA prompt;
- :mod:`shapesvqa.grounding`: patch masks and pointing-game figures;
- :mod:`shapesvqa.evaluate`: accuracy and pointing per family (``evaluate``), POPE (``evaluate_pope``);
- :mod:`shapesvqa.pope`: POPE sampling (random / popular / adversarial) and where hallucination maps look;
- :mod:`shapesvqa.train`: the trainer (``python -m shapesvqa.train``);
- :mod:`shapesvqa.assets`: the shipped reference model (``reference_model_path``).
"""

from __future__ import annotations

from .assets import reference_model_path
from .evaluate import evaluate
from .export import export_examples, read_jsonl
from .grounding import object_patches, pointing
from .model import prompt
from .world import FAMILIES, Example, Scene, SceneObject, WorldConfig, generate, make_example

__all__ = [
    "Example",
    "FAMILIES",
    "Scene",
    "SceneObject",
    "WorldConfig",
    "evaluate",
    "export_examples",
    "generate",
    "make_example",
    "object_patches",
    "pointing",
    "prompt",
    "read_jsonl",
    "reference_model_path",
]
