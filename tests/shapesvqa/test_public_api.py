"""The public surface of shapesvqa changes only on purpose."""

import shapesvqa


def test_exported_names():
    assert shapesvqa.__all__ == sorted(shapesvqa.__all__)
    assert set(shapesvqa.__all__) == {
        "FAMILIES", "Example", "Scene", "SceneObject", "WorldConfig", "evaluate", "export_examples",
        "generate", "make_example", "object_patches", "pointing", "prompt", "read_jsonl", "reference_model_path",
    }
    for name in shapesvqa.__all__:
        assert hasattr(shapesvqa, name)
