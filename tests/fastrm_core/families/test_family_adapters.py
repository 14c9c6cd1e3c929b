"""Adapters of LLaVA-NeXT, LLaVA-OneVision, Gemma 3, PaliGemma, Idefics3 and Mistral3 on tiny random models:
paths resolve, the adapter is chosen by config and refuses what it does not understand, per-row replay inputs
(unpadded token types, dropped labels, sliced images), generate logits equal a replay, exact gradient maps
equal the naive reference and a padded batch equals its rows alone, capture keeps the tokens and gives one
map per token per region, and the model is left as found."""

from __future__ import annotations

import pytest
import torch

from fastrm_common.errors import InputError, UnsupportedModelError
from fastrm_core import FastRMProxy, ProxyConfig, capture, get_adapter
from fastrm_core.adapters import adapter_for_config
from fastrm_core.loading import load_vlm
from fastrm_core.testing import check_gradient_maps, check_replay_logits, greedy, model_snapshot

FAMILIES = ["llava_next", "llava_onevision", "gemma3", "paligemma", "paligemma2", "idefics3", "smolvlm", "mistral3",
            "pixtral", "internvl"]
ADAPTER = {"smolvlm": "idefics3", "paligemma2": "paligemma"}  # families that share an adapter
WHY_NO_PROCESSOR = {"smolvlm": "SmolVLM's processor needs num2words (and torchvision for video), not installed here",
                    "pixtral": "Pixtral's processor needs torchvision, not installed here",
                    "mistral3": "Pixtral's processor needs torchvision, not installed here"}


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, tiny_family, tmp_path_factory):
    """The tiny family saved with save_pretrained and loaded back (load_vlm where a processor exists)."""
    tiny = tiny_family(request.param)
    folder = tmp_path_factory.mktemp(f"tiny-{tiny.family}")
    tiny.model.save_pretrained(folder)
    if tiny.processor is None:  # see WHY_NO_PROCESSOR; the model loads through the auto class
        from transformers import AutoModelForImageTextToText

        return tiny, AutoModelForImageTextToText.from_pretrained(folder).eval(), None
    tiny.processor.save_pretrained(folder)
    model, processor = load_vlm(folder)
    return tiny, model, processor


def batch(tiny, processor=None):
    """Left-padded: row 0 one wide image, row 1 two images (square and tall); PaliGemma's labels kept on purpose."""
    return tiny.make_inputs(tiny.two_rows()) if processor is None else _via(processor, tiny)


def _via(processor, tiny):
    rows = tiny.two_rows()
    return dict(processor(images=[imgs for _, imgs in rows], text=[t for t, _ in rows], return_tensors="pt",
                          padding=True, padding_side="left"))


def test_paths_resolve_and_choice_by_config(loaded):
    tiny, model, _ = loaded
    a = get_adapter(model)
    assert a.name == ADAPTER.get(tiny.family, tiny.family) and type(a) is adapter_for_config(model.config)
    lm = model.model.text_model if tiny.family in {"idefics3", "smolvlm"} else model.model.language_model
    assert a.language_model is lm and a.final_norm is lm.norm and a.text_config is lm.config
    assert len(a.decoder_layers) == 2 and a.attention_module(a.decoder_layers[1]) is lm.layers[1].self_attn
    assert a.hidden_size == 64 and a.fixed_grid is None
    assert a.image_token_id in a.placeholder_token_ids


def test_adapters_refuse_towers_they_do_not_understand(loaded):
    tiny, model, _ = loaded
    config = type(model.config).from_dict(model.config.to_dict())
    config.vision_config.model_type = "some_other_vision"
    assert adapter_for_config(config) is None
    if tiny.family == "llava_next":  # a CLIP tower that keeps CLS: every tile would be side*side + 1 tokens
        config = type(model.config).from_dict(model.config.to_dict())
        config.vision_feature_select_strategy = "full"
        assert adapter_for_config(config) is None
        with pytest.raises(UnsupportedModelError, match="llava_next"):
            get_adapter(type(model)(config))


def test_regions_of_the_loaded_model(loaded):
    tiny, model, processor = loaded
    a = get_adapter(model)
    inputs = batch(tiny, processor)
    regions = a.batch_regions(inputs)
    assert [len({r.image for r in row}) for row in regions] == [1, 2]
    for b, row in enumerate(regions):
        ids = inputs["input_ids"][b]
        for r in row:
            assert bool((ids[r.positions] == a.image_token_id).all()) and r.size == r.positions.numel()
        seps = a.separators(inputs, b)
        covered = torch.cat([torch.cat([r.positions for r in row]), seps[ids[seps] == a.image_token_id]])
        assert covered.sort().values.tolist() == (ids == a.image_token_id).nonzero(as_tuple=True)[0].tolist()
    with pytest.raises(InputError):  # bare ids say too little for some families, and a mangled row too little for all
        bad = inputs["input_ids"].clone()
        first = int((bad[1] == a.image_token_id).nonzero()[0])
        bad[1, first + 1] = tiny.model.generation_config.pad_token_id
        a.batch_regions({**inputs, "input_ids": bad})


def test_row_inputs(loaded):
    tiny, model, processor = loaded
    a = get_adapter(model)
    inputs = batch(tiny, processor)
    padded = int(inputs["attention_mask"].sum(-1).argmin())  # the shorter row
    keep = inputs["attention_mask"][padded].bool()
    assert not keep.all()
    r0, r1 = a.row_inputs(inputs, 0), a.row_inputs(inputs, 1)
    rp = (r0, r1)[padded]
    assert "labels" not in r0 and "labels" not in r1
    assert torch.equal(rp["input_ids"][0], inputs["input_ids"][padded][keep])
    if "token_type_ids" in inputs:  # unpadded with the row (Gemma 3's maps were off when they were not)
        assert torch.equal(rp["token_type_ids"][0], inputs["token_type_ids"][padded][keep])
        ext = a.extend_inputs(rp, torch.tensor([5, 6]))
        fill = 1 if tiny.family.startswith("paligemma") else 0  # PaliGemma's generated tokens are the causal suffix
        assert ext["token_type_ids"][0, -2:].tolist() == [fill, fill]
    if tiny.family in {"llava_next", "llava_onevision", "mistral3", "pixtral", "gemma3", "paligemma", "paligemma2",
                       "internvl"}:
        per_block = tiny.family in {"gemma3", "internvl"}  # one pixel_values entry per block (tile, crop), not per picture
        n0 = len(a.regions(inputs, 0)) if per_block else len({r.image for r in a.regions(inputs, 0)})
        assert torch.equal(r0["pixel_values"], inputs["pixel_values"][:n0])
        assert torch.equal(r1["pixel_values"], inputs["pixel_values"][n0:])
    if tiny.family in {"idefics3", "smolvlm"}:
        assert torch.equal(r1["pixel_values"], inputs["pixel_values"][1:2])
    if tiny.family == "llava_onevision":
        assert r1["batch_num_images"].tolist() == [2]
    # one row's inputs give the same regions as the row had in the batch, shifted by its padding
    pad = int((~keep).sum())
    assert [r.positions.tolist() for r in a.regions(rp)] == [(r.positions - pad).tolist()
                                                             for r in a.regions(inputs, padded)]


def test_generate_logits_equal_replay(loaded):
    tiny, model, processor = loaded
    check_replay_logits(model, batch(tiny, processor), n=4)


def test_gradient_maps_equal_naive_reference_and_single_rows(loaded):
    tiny, model, processor = loaded
    check_gradient_maps(model, batch(tiny, processor), n=3)


def test_per_step_method_and_gradcam_on_every_region(loaded):
    """The slow per-step method (KV cache, one backward per step) gives the exact maps; Grad-CAM covers every region."""
    from fastrm_core import gradient_relevancy, per_step_relevancy
    from fastrm_core.distill.gradcam import gradcam_maps

    tiny, model, processor = loaded
    a = get_adapter(model)
    two = a.row_inputs(batch(tiny, processor), 1)  # the row with two pictures, alone
    out = greedy(model, two, 3)
    exact = gradient_relevancy(model, two, out)
    step = per_step_relevancy(model, two, 3, suppress_tokens=sorted(a.placeholder_token_ids), stop_at_eos=False)
    assert torch.equal(step.token_ids, exact.token_ids)
    torch.testing.assert_close(step.flat_maps, exact.flat_maps, rtol=1e-4, atol=1e-6)
    assert [tuple(m.shape) for m in exact.region_maps()] == [(3, *r.grid) for r in a.regions(two)]
    cam = gradcam_maps(model, two, out)
    assert cam.shape == (3, sum(r.size for r in a.regions(two))) and torch.isfinite(cam).all()


def test_capture_tokens_identical_and_one_map_per_token_per_region(loaded):
    tiny, model, processor = loaded
    a = get_adapter(model)
    inputs = batch(tiny, processor)
    torch.manual_seed(0)
    proxy = FastRMProxy(ProxyConfig(hidden_size=64)).eval()
    plain = greedy(model, inputs, 4)
    before = model_snapshot(model)
    with capture(model, proxy) as cap:
        out = greedy(model, inputs, 4)
    assert model_snapshot(model) == before
    assert torch.equal(plain, out)
    for b in range(2):
        regions = a.regions(inputs, b)
        assert cap.lengths[b] == sum(r.size for r in regions)
        assert [tuple(m.shape) for m in cap.region_maps(b)] == [(4, *r.grid) for r in regions]
        with capture(model, proxy) as alone:  # padding and the other row change nothing
            greedy(model, a.row_inputs(inputs, b), 4)
        torch.testing.assert_close(alone.row_maps(0), cap.row_maps(b), rtol=1e-4, atol=1e-5)


def test_guard_generate_runs(loaded):
    """The Guard (observe-only, a random proxy) on each family: its prompt, regions and one map per token per region."""
    from guardrail import Guard

    tiny, model, processor = loaded
    if processor is None:
        pytest.skip(WHY_NO_PROCESSOR[tiny.family])
    a = get_adapter(model)
    torch.manual_seed(0)
    guard = Guard(model, processor, proxy=FastRMProxy(ProxyConfig(hidden_size=64)).eval())
    image = tiny.image((2 * tiny.tile, tiny.tile))
    result = guard.generate(image, "what color is the circle ?", max_new_tokens=3)
    prompt = a.build_prompt(processor, "what color is the circle ?")[0]
    want = a.regions(dict(processor(images=[[image]], text=[prompt], return_tensors="pt")))
    assert [(r.image, r.kind, tuple(r.grid)) for r in result.regions] == [(r.image, r.kind, r.grid) for r in want]
    assert 1 <= len(result.token_ids) <= 3
    assert [m.shape for m in result.region_maps()] == [(len(result.token_ids), *r.grid) for r in want]


def test_stop_tokens(loaded):
    tiny, model, processor = loaded
    a = get_adapter(model)
    tok = tiny.tokenizer
    stops = a.stop_token_ids(tok)
    assert tok.eos_token_id in stops
    for token in a.chat_end_tokens:
        tid = tok.convert_tokens_to_ids(token)
        if tid != tok.unk_token_id:
            assert tid in stops


def test_prompts_from_the_processor(loaded):
    tiny, model, processor = loaded
    if processor is None:
        pytest.skip(WHY_NO_PROCESSOR[tiny.family])
    a = get_adapter(model)
    prompt, kind = a.build_prompt(processor, "what color ?", n_images=2)
    image = tiny.image((tiny.tile, tiny.tile))
    inputs = dict(processor(images=[[image, image]], text=[prompt], return_tensors="pt"))
    assert len({r.image for r in a.regions(inputs)}) == 2
    assert kind == ("plain" if tiny.family.startswith("paligemma") else "chat")
