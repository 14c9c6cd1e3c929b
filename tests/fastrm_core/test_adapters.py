import pytest
import torch
from torch import nn

from fastrm_core.adapters import get_adapter, list_adapters
from fastrm_common.errors import InputError, UnsupportedModelError
from fastrm_core.loading import load_vlm
from .legacy_layout import image_layout, image_layouts  # noqa: F401


def test_registry_lists_llava_and_qwen():
    assert {"llava", "qwen2_vl"} <= set(list_adapters()) and list_adapters() == sorted(list_adapters())


def test_unsupported_model_names_the_supported_ones():
    with pytest.raises(UnsupportedModelError, match="supported adapters: .*llava, llava_next"):
        get_adapter(nn.Linear(2, 2))
    with pytest.raises(UnsupportedModelError, match="expected one of: .*llava, llava_next"):
        get_adapter(nn.Linear(2, 2), name="qwen")


def test_structure_read_from_config(tiny_llava, tiny_llava_gqa):
    model, _ = tiny_llava
    a = get_adapter(model)
    assert a.grid == (4, 4) and a.n_image_tokens == 16 and a.image_token_offset == 0
    assert a.hidden_size == 64 and len(a.decoder_layers) == 2
    assert a.final_norm is model.model.language_model.norm
    g = get_adapter(tiny_llava_gqa[0])
    assert g.image_token_offset == 1 and g.n_image_tokens == 17  # CLS kept by the "full" strategy


@pytest.mark.parametrize("side", ["left", "right"])
def test_image_positions_with_padding(tiny_llava, make_inputs, side):
    model, processor = tiny_llava
    inputs = make_inputs(processor, ("What color is the circle?", "What?"), padding_side=side)
    a = get_adapter(model)
    layouts = image_layouts(a, inputs["input_ids"])
    pad = int(inputs["attention_mask"][1].eq(0).sum())
    assert pad > 0
    start0 = int(layouts[0].positions[0])
    start1 = int(layouts[1].positions[0])
    assert start1 - start0 == (pad if side == "left" else 0)
    for lay, row in zip(layouts, inputs["input_ids"]):
        assert bool((row[lay.positions] == a.image_token_id).all())
        assert torch.equal(lay.positions, torch.arange(lay.positions[0], lay.positions[0] + 16))


def test_image_token_count_mismatch(tiny_llava):
    a = get_adapter(tiny_llava[0])
    with pytest.raises(InputError, match="expected exactly one image of 16 image tokens"):
        image_layout(a, torch.full((10,), a.image_token_id))
    with pytest.raises(InputError, match="exactly one image region"):
        image_layout(a, torch.full((32,), a.image_token_id))


def test_load_vlm_rejects_other_architectures(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="model_type .llama.*supported adapters: .*llava"):
        load_vlm(tmp_path)


def test_choice_by_config_refuses_a_pixtral_tower():
    from transformers import LlavaConfig

    from fastrm_core.adapters import adapter_for_config
    from fastrm_core.families.llava import LlavaAdapter

    assert adapter_for_config(LlavaConfig()).name == "llava"  # CLIP tower
    pixtral = LlavaConfig(vision_config={"model_type": "pixtral", "image_size": 96, "patch_size": 8})
    assert not LlavaAdapter.supports(pixtral)  # not a fixed LLaVA-1.5 grid ...
    assert adapter_for_config(pixtral).name == "pixtral"  # ... but Pixtral-12B's [IMG]/[IMG_BREAK] layout
    model = nn.Module()
    model.config = LlavaConfig(vision_config={"model_type": "siglip_vision_model"}, vision_feature_select_strategy="default")
    with pytest.raises(UnsupportedModelError, match="'siglip_vision_model' vision tower"):
        get_adapter(model)  # SigLIP has no CLS: "default" would drop a real patch
    model.config = pixtral
    with pytest.raises(UnsupportedModelError, match="as 'llava'"):
        get_adapter(model, name="llava")


def test_several_images_in_one_llava_prompt(tiny_llava):
    model, _ = tiny_llava
    a = get_adapter(model)
    img = a.image_token_id
    ids = torch.tensor([1, img, *[img] * 15, 7, 8, *[img] * 16, 9])
    regions = a.regions(ids)
    assert [(r.image, r.kind, r.grid) for r in regions] == [(0, "full", (4, 4)), (1, "full", (4, 4))]
    assert regions[1].positions.tolist() == list(range(19, 35))
    with pytest.raises(InputError, match="contiguous"):
        a.regions(torch.tensor([img] * 8 + [5] + [img] * 8))
