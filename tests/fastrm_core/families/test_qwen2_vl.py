"""Qwen2-VL and Qwen2.5-VL: regions from image_grid_thw, M-RoPE order, replay, exact maps, batches, capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fastrm_common.errors import InputError
from fastrm_core import FastRMProxy, ProxyConfig, capture, get_adapter, per_step_relevancy
from fastrm_core.distill.gradcam import gradcam_maps
from fastrm_core.inputs import prepare_inputs
from fastrm_core.testing import check_gradient_maps, check_replay_logits, greedy, model_snapshot

FAMILIES = ["tiny_qwen2_vl", "tiny_qwen2_5_vl"]


def picture(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def two_image_batch(model, processor):
    """Row 0: two pictures (48x32 and 32x64 pixels: grids 2x3 and 4x2); row 1: one 64x48 picture (3x4). Left-padded."""
    a = get_adapter(model)
    p2 = a.build_prompt(processor, "what color is the circle?", n_images=2)[0]
    p1 = a.build_prompt(processor, "how many objects?", n_images=1)[0]
    with_two = processor(images=[picture(48, 32, 1), picture(32, 64, 2), picture(64, 48, 3)], text=[p2, p1],
                         return_tensors="pt", padding=True, padding_side="left")
    return dict(with_two)


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.getfixturevalue(request.param)


def test_paths_resolve(family):
    model, _ = family
    a = get_adapter(model)
    assert a.name == "qwen2_vl" and a.fixed_grid is None
    assert a.final_norm is model.model.language_model.norm
    assert len(a.decoder_layers) == 2 and a.hidden_size == 64
    assert a.attention_module(a.decoder_layers[0]) is model.model.language_model.layers[0].self_attn


def test_regions_account_for_every_image_token(family):
    model, processor = family
    a = get_adapter(model)
    inputs = two_image_batch(model, processor)
    regions = a.batch_regions(inputs)
    assert [[(r.image, r.kind, r.grid) for r in row] for row in regions] == [
        [(0, "full", (2, 3)), (1, "full", (4, 2))],
        [(0, "full", (3, 4))],
    ]
    cfg = model.config
    for b, row in enumerate(regions):
        ids = inputs["input_ids"][b]
        image_pos = (ids == a.image_token_id).nonzero(as_tuple=True)[0]
        flat = torch.cat([r.positions for r in row])
        assert torch.equal(flat, image_pos)  # every image token in exactly one region, in order
        for r in row:  # each region sits between a vision start and a vision end token
            assert int(ids[r.positions[0] - 1]) == cfg.vision_start_token_id
            assert int(ids[r.positions[-1] + 1]) == cfg.vision_end_token_id
            assert r.grid[0] * r.grid[1] == r.positions.numel()


def test_row_major_order_follows_mrope_positions(family):
    model, processor = family
    a = get_adapter(model)
    inputs = two_image_batch(model, processor)
    pos, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                        image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])
    for b, row in enumerate(a.batch_regions(inputs)):
        for r in row:
            h = pos[1, b, r.positions].reshape(r.grid)  # (rows, cols) M-RoPE height ids
            w = pos[2, b, r.positions].reshape(r.grid)
            rows, cols = r.grid
            assert torch.equal(h - h.min(), torch.arange(rows)[:, None].expand(rows, cols))
            assert torch.equal(w - w.min(), torch.arange(cols)[None, :].expand(rows, cols))


def test_row_inputs_slice_flattened_pixels_and_drop_labels(family):
    model, processor = family
    a = get_adapter(model)
    inputs = two_image_batch(model, processor)
    inputs["labels"] = inputs["input_ids"].clone()
    thw = inputs["image_grid_thw"]
    patches = thw.prod(-1).tolist()
    r0, r1 = a.row_inputs(inputs, 0), a.row_inputs(inputs, 1)
    assert "labels" not in r0
    assert torch.equal(r0["pixel_values"], inputs["pixel_values"][: patches[0] + patches[1]])
    assert torch.equal(r1["pixel_values"], inputs["pixel_values"][patches[0] + patches[1] :])
    assert torch.equal(r1["image_grid_thw"], thw[2:])
    keep = inputs["attention_mask"][1].bool()
    assert torch.equal(r1["input_ids"][0], inputs["input_ids"][1][keep])
    assert torch.equal(r1["mm_token_type_ids"][0], inputs["mm_token_type_ids"][1][keep])
    ext = a.extend_inputs(r1, torch.tensor([20, 21]))
    assert ext["mm_token_type_ids"][0, -2:].tolist() == [0, 0] and ext["input_ids"].shape[1] == r1["input_ids"].shape[1] + 2
    with pytest.raises(InputError, match="placeholder"):
        a.extend_inputs(r1, torch.tensor([a.image_token_id]))


def test_generate_logits_equal_replay(family):
    model, processor = family
    check_replay_logits(model, two_image_batch(model, processor), n=4)


def test_gradient_maps_equal_naive_reference_and_single_rows(family):
    model, processor = family
    check_gradient_maps(model, two_image_batch(model, processor), n=3)


def test_per_step_and_gradcam_on_several_regions(family):
    model, processor = family
    a = get_adapter(model)
    inputs = two_image_batch(model, processor)
    one = a.row_inputs(inputs, 0)
    from fastrm_core import gradient_relevancy

    out = greedy(model, one, 3)
    exact = gradient_relevancy(model, one, out)
    step = per_step_relevancy(model, one, 3, suppress_tokens=sorted(a.placeholder_token_ids), stop_at_eos=False)
    assert torch.equal(step.token_ids, exact.token_ids)
    torch.testing.assert_close(step.flat_maps, exact.flat_maps, rtol=1e-4, atol=1e-6)
    assert [m.shape for m in exact.region_maps()] == [(3, 2, 3), (3, 4, 2)]
    with pytest.raises(InputError, match="2 image regions"):
        exact.maps  # noqa: B018
    cam = gradcam_maps(model, one, out)
    assert cam.shape == (3, 14) and torch.isfinite(cam).all()


def test_capture_tokens_identical_and_one_map_per_token_per_region(family):
    model, processor = family
    a = get_adapter(model)
    inputs = two_image_batch(model, processor)
    torch.manual_seed(0)
    proxy = FastRMProxy(ProxyConfig(hidden_size=64)).eval()
    plain = greedy(model, inputs, 4)
    before = model_snapshot(model)
    with capture(model, proxy, keep_states=True) as cap:
        out = greedy(model, inputs, 4)
    assert model_snapshot(model) == before
    assert torch.equal(plain, out)
    assert cap.lengths == [14, 12]
    assert cap.row_maps(0).shape == (4, 14) and cap.row_maps(1).shape == (4, 12)
    assert [m.shape for m in cap.region_maps(0)] == [(4, 2, 3), (4, 4, 2)]
    # each row's maps equal the proxy run on that row alone (padding and the other row change nothing)
    for b in range(2):
        with capture(model, proxy) as alone:
            greedy(model, a.row_inputs(inputs, b), 4)
        torch.testing.assert_close(alone.row_maps(0), cap.row_maps(b), rtol=1e-4, atol=1e-5)
        # so do its pooled prompt features (image mean and spread over the row's own tokens, #14)
        torch.testing.assert_close(torch.from_numpy(alone.features[0]), torch.from_numpy(cap.features[b]),
                                   rtol=1e-4, atol=1e-5)
        states = cap.row_image_states(b)
        torch.testing.assert_close(torch.sigmoid(proxy(cap.queries[b:b + 1], states[None]))[0].float(), cap.row_maps(b),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match="row_maps"):
        cap.maps  # noqa: B018


def test_prepare_inputs_batches_images_of_different_sizes(family):
    model, processor = family
    a = get_adapter(model)
    prompts = [a.build_prompt(processor, "what color?")[0]] * 2
    inputs = prepare_inputs(model, processor, [picture(48, 32), picture(32, 64)], prompts)
    assert [r[0].grid for r in a.batch_regions(inputs)] == [(2, 3), (4, 2)]


def test_stop_tokens_and_placeholders(family):
    model, processor = family
    a = get_adapter(model)
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<|im_end|>") in a.stop_token_ids(tok)
    assert tok.convert_tokens_to_ids("<|endoftext|>") in a.stop_token_ids(tok)
    assert {a.image_token_id, model.config.video_token_id} <= a.placeholder_token_ids
