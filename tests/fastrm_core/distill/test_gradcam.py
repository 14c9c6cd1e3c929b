"""Grad-CAM on the language model's image tokens, checked against a direct autograd computation."""

import pytest
import torch

from fastrm_core.adapters import get_adapter
from fastrm_core.distill.generation import greedy_kwargs
from fastrm_core.distill.gradcam import default_gradcam_layer, gradcam_maps
from fastrm_common.errors import InputError
from ..legacy_layout import image_layout, image_layouts  # noqa: F401


def _generate(model, inputs, n=4):
    with torch.no_grad():
        return model.generate(**inputs, **greedy_kwargs(get_adapter(model), n), min_new_tokens=n)


def _reference(model, inputs, out, layer):
    """Grad-CAM through output_hidden_states: hidden_states[layer + 1] is decoder layer `layer`'s output."""
    adapter = get_adapter(model)
    prompt_len = inputs["input_ids"].shape[1]
    gen = out[0, prompt_len:]
    seq = out[:, :-1]
    patch = image_layout(adapter, inputs["input_ids"][0]).patch_positions
    maps = []
    for t in range(gen.numel()):
        res = model(input_ids=seq, attention_mask=torch.ones_like(seq), pixel_values=inputs["pixel_values"],
                    output_hidden_states=True, use_cache=False)
        h = res.hidden_states[layer + 1]
        y = res.logits[0, prompt_len - 1 + t, gen[t]]
        (g,) = torch.autograd.grad(y, h)
        alpha = g[0, patch].mean(0)
        maps.append(torch.relu(h[0, patch].detach() @ alpha))
    return torch.stack(maps).reshape(gen.numel(), *adapter.grid)


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_llava_gqa"])
def test_gradcam_matches_direct_autograd(request, make_inputs, fixture):
    model, processor = request.getfixturevalue(fixture)
    inputs = make_inputs(processor)
    out = _generate(model, inputs)
    layer = default_gradcam_layer(len(get_adapter(model).decoder_layers))
    flags = [p.requires_grad for p in model.parameters()]
    maps = gradcam_maps(model, inputs, out, layer=layer).reshape(4, *get_adapter(model).grid)  # flat (T, N_img)
    assert (maps >= 0).all()
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(maps, _reference(model, inputs, out, layer), rtol=1e-4, atol=1e-6)


def test_gradcam_selected_tokens_and_layer_checks(tiny_llava, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor)
    out = _generate(model, inputs)
    full = gradcam_maps(model, inputs, out)
    some = gradcam_maps(model, inputs, out, tokens=torch.tensor([1]))
    torch.testing.assert_close(some[1], full[1])
    assert torch.count_nonzero(some[0]) == 0
    assert default_gradcam_layer(2) == 0 and default_gradcam_layer(32) == 15
    with pytest.raises(InputError, match=r"not the last layer"):
        gradcam_maps(model, inputs, out, layer=-1)
