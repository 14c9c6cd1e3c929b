"""Patch removal: exactly the chosen image tokens change, nothing else, and the model is left clean."""

import pytest
import torch

from fastrm_core.adapters import get_adapter
from fastrm_core.distill.generation import greedy_kwargs
from fastrm_core.distill.perturbation import generate_without_patches, removed_patches
from fastrm_common.errors import InputError
from ..legacy_layout import image_layout, image_layouts  # noqa: F401


def _embeds(model, inputs):
    """The language model's inputs_embeds (B, S, D) for one forward."""
    seen = {}

    def grab(module, args, kwargs):
        seen["e"] = kwargs["inputs_embeds"].detach().clone()

    adapter = get_adapter(model)
    handle = adapter.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen["e"]


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_llava_gqa"])
@pytest.mark.parametrize("fill", ["zero", "mean"])
def test_removal_changes_exactly_the_chosen_patches(request, make_inputs, fixture, fill):
    model, processor = request.getfixturevalue(fixture)
    adapter = get_adapter(model)
    inputs = make_inputs(processor, ("What color is the circle?", "How many?"))
    n = adapter.grid[0] * adapter.grid[1]
    remove = torch.zeros(2, n, dtype=torch.bool)
    remove[0, [0, 5, 15]] = True
    remove[1, [3]] = True
    before = _embeds(model, inputs)
    hooks = _hooks(model)
    with removed_patches(adapter, remove, fill):
        after = _embeds(model, inputs)
    assert _hooks(model) == hooks
    for b, layout in enumerate(image_layouts(adapter, inputs["input_ids"])):
        patches = layout.patch_positions
        changed = (after[b] != before[b]).any(dim=-1)  # (S,)
        expected = torch.zeros_like(changed)
        expected[patches[remove[b]]] = True
        assert torch.equal(changed, expected)
        if layout.offset:  # the CLS token kept by the "full" strategy is never touched
            assert torch.equal(after[b, layout.positions[0]], before[b, layout.positions[0]])
        fill_value = after[b, patches[remove[b]]]
        if fill == "zero":
            assert torch.count_nonzero(fill_value) == 0
        else:
            mean = before[b, patches].mean(dim=0)
            torch.testing.assert_close(fill_value, mean.expand_as(fill_value))


def test_removing_nothing_gives_the_plain_answer(tiny_llava, make_inputs):
    model, processor = tiny_llava
    adapter = get_adapter(model)
    inputs = make_inputs(processor)
    kw = greedy_kwargs(adapter, 4)
    with torch.no_grad():
        plain = model.generate(**inputs, **kw)[0, inputs["input_ids"].shape[1]:]
    remove = torch.zeros(3, 16, dtype=torch.bool)
    remove[1, :8] = True
    remove[2, :] = True
    outs = generate_without_patches(model, inputs, remove, adapter=adapter, generate_kwargs=kw, batch_size=2)
    assert len(outs) == 3
    assert torch.equal(outs[0], plain)


def test_removal_mask_shape_is_checked(tiny_llava, make_inputs):
    model, processor = tiny_llava
    adapter = get_adapter(model)
    with pytest.raises(InputError, match=r"\(B, 16\)"):  # checked when the prompt's regions are known
        with removed_patches(adapter, torch.zeros(1, 9, dtype=torch.bool)):
            _embeds(model, make_inputs(processor))
    with pytest.raises(InputError, match="unknown fill 'blur'; expected one of: zero, mean"):
        with removed_patches(adapter, torch.zeros(1, 16, dtype=torch.bool), "blur"):
            pass
    hooks = _hooks(model)
    with pytest.raises(InputError, match="1 rows for a batch of 2 prompts"):
        with removed_patches(adapter, torch.zeros(1, 16, dtype=torch.bool)):
            _embeds(model, make_inputs(processor, ("a?", "b?")))
    assert _hooks(model) == hooks
