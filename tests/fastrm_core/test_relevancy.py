"""The exact baseline against a naive reference: full N x N matrices, one forward per prefix, one backward per token."""

import pytest
import torch

from fastrm_core.adapters import get_adapter
from fastrm_common.errors import InputError, RelevancyError
from fastrm_core.relevancy import gradient_relevancy, gradient_relevancy_batch, per_step_relevancy


def naive_rows(model, input_ids, pixel_values, gen):
    """Chefer's recipe, literally: for every token, forward its prefix, backward its logit, R <- R + Ā R."""
    rows = []
    old = model.config.text_config._attn_implementation
    model.set_attn_implementation({"text_config": "eager"})
    try:
        for t in range(gen.numel()):
            prefix = torch.cat([input_ids, gen[:t]])[None]
            with torch.enable_grad():
                out = model(input_ids=prefix, pixel_values=pixel_values, output_attentions=True, use_cache=False)
                y = out.logits[0, -1, gen[t]]
                attns = out.attentions
                grads = torch.autograd.grad(y, attns)
            n = prefix.shape[1]
            r = torch.eye(n, dtype=torch.float64)
            grads = [g.detach() for g in grads]
            attns = [a.detach() for a in attns]
            for a, g in zip(attns, grads):
                a_bar = (g.double() * a.double()).clamp_min(0).mean(dim=1)[0]
                r = r + a_bar @ r
            rows.append(r[-1])
    finally:
        model.set_attn_implementation({"text_config": old})
    return rows


def snapshot(model):
    return (
        model.training,
        model.config.text_config._attn_implementation,
        [p.requires_grad for p in model.parameters()],
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
    )


def generate(model, inputs, n):
    # a random model happily emits the image placeholder; a real one never does
    image_token = get_adapter(model).image_token_id
    return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, suppress_tokens=[image_token])


@pytest.mark.parametrize("fixture,image_first", [("tiny_llava", True), ("tiny_llava_gqa", True), ("tiny_llava", False)])
def test_exact_equals_naive_reference(request, make_inputs, fixture, image_first):
    model, processor = request.getfixturevalue(fixture)
    inputs = make_inputs(processor, image_first=image_first)
    out = generate(model, inputs, 5)
    rel = gradient_relevancy(model, inputs, out)
    gen = out[0, inputs["input_ids"].shape[1]:]
    assert torch.equal(rel.token_ids, gen)
    ref = naive_rows(model, inputs["input_ids"][0], inputs["pixel_values"], gen)
    for t, r in enumerate(ref):
        got = rel.rows[t, : r.numel()].double()
        img = rel.image_positions
        tol = 1e-5 * float(r[img].abs().max().detach())
        assert float((got[img] - r[img]).abs().max()) <= tol
        assert torch.allclose(got, r, rtol=1e-5, atol=1e-6)
    assert rel.maps.shape == (5, *get_adapter(model).grid)


def test_chunked_and_unbatched_backward_agree(tiny_llava, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor)
    out = generate(model, inputs, 7)
    full = gradient_relevancy(model, inputs, out)
    for kwargs in ({"chunk_size": 1, "batched_backward": True}, {"chunk_size": 3, "batched_backward": True},
                   {"batched_backward": True}, {"batched_backward": False}):
        other = gradient_relevancy(model, inputs, out, **kwargs)
        torch.testing.assert_close(other.rows, full.rows, rtol=1e-5, atol=1e-7)


def test_per_step_method_equals_exact(tiny_llava_gqa, make_inputs):
    model, processor = tiny_llava_gqa
    inputs = make_inputs(processor)
    model.generation_config.eos_token_id, eos = None, model.generation_config.eos_token_id
    try:
        slow = per_step_relevancy(model, inputs, 4)
        out = generate(model, inputs, 4)
    finally:
        model.generation_config.eos_token_id = eos
    fast = gradient_relevancy(model, inputs, out)
    assert torch.equal(slow.token_ids, fast.token_ids)
    torch.testing.assert_close(slow.rows, fast.rows, rtol=1e-4, atol=1e-7)


def test_batch_with_padding_equals_single_rows(tiny_llava, make_inputs):
    model, processor = tiny_llava
    questions = ("What color is the circle?", "How many?")
    batch = make_inputs(processor, questions, padding_side="left")
    out = generate(model, batch, 3)
    results = gradient_relevancy_batch(model, batch, out)
    for b, q in enumerate(questions):
        single = make_inputs(processor, (q,), colors=[(200, 30, 30 + 40 * b)])
        ref = gradient_relevancy(model, single, generate(model, single, 3))
        assert torch.equal(ref.token_ids, results[b].token_ids)
        torch.testing.assert_close(results[b].maps, ref.maps, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # per-step maps of a long answer
def test_long_answers(tiny_llava, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor)
    out = generate(model, inputs, 210)
    rel = gradient_relevancy(model, inputs, out)
    assert rel.maps.shape[0] == 210 and torch.isfinite(rel.maps).all()


def test_bf16_model_accumulates_in_float32(tiny_llava, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor)
    out = generate(model, inputs, 3)
    ref = gradient_relevancy(model, inputs, out)
    half = type(model).from_pretrained(model.config._name_or_path, dtype=torch.bfloat16).eval()
    inputs_bf16 = {**inputs, "pixel_values": inputs["pixel_values"].to(torch.bfloat16)}
    rel = gradient_relevancy(half, inputs_bf16, out)
    assert rel.maps.dtype == torch.float32 and torch.isfinite(rel.maps).all()
    corr = torch.corrcoef(torch.stack([rel.maps.flatten(), ref.maps.flatten()]))[0, 1]
    assert corr > 0.9


def test_model_left_as_found(tiny_llava, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor)
    out = generate(model, inputs, 3)
    model.train()
    before = snapshot(model)
    try:
        gradient_relevancy(model, inputs, out)
        assert snapshot(model) == before
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_attention_without_weights_raises_and_restores(tiny_llava, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor)
    out = generate(model, inputs, 2)
    attn = get_adapter(model).decoder_layers[0].self_attn
    handle = attn.register_forward_hook(lambda m, a, o: (o[0], None))
    before = snapshot(model)
    try:
        with pytest.raises(RelevancyError, match="returned no attention weights"):
            gradient_relevancy(model, inputs, out)
        assert snapshot(model) == before
    finally:
        handle.remove()


def test_nan_hidden_states_raise(tiny_llava, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor)
    out = generate(model, inputs, 2)
    layer = get_adapter(model).decoder_layers[0]
    handle = layer.register_forward_hook(lambda m, a, o: o * float("nan"))
    try:
        with pytest.raises(RelevancyError, match="non-finite"):
            gradient_relevancy(model, inputs, out)
    finally:
        handle.remove()


def test_bad_inputs(tiny_llava, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor)
    with pytest.raises(InputError, match="no generated token"):
        gradient_relevancy(model, inputs, inputs["input_ids"])
    batch = make_inputs(processor, ("a?", "b?"))
    with pytest.raises(InputError, match="use gradient_relevancy_batch"):
        gradient_relevancy(model, batch, torch.zeros(2, 3, dtype=torch.long))


def test_display_normalisation_keeps_self_relevance(tiny_llava, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor)
    rel = gradient_relevancy(model, inputs, generate(model, inputs, 2))
    norm = rel.normalized_rows()
    assert torch.allclose(norm.sum(-1), torch.full((2,), 2.0))
    assert (norm[torch.arange(2), rel.positions] >= 1).all()
    assert (norm >= 0).all()
