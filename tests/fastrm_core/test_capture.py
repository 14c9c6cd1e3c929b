import threading

import pytest
import torch

from fastrm_core.adapters import get_adapter
from fastrm_core.capturing import capture
from fastrm_common.errors import CaptureError, ConfigMismatchError, InputError
from fastrm_core.proxy import FastRMProxy, ProxyConfig
from .legacy_layout import image_layout, image_layouts  # noqa: F401


@pytest.fixture
def proxy(tiny_llava):
    torch.manual_seed(0)
    return FastRMProxy(ProxyConfig(hidden_size=64, n_image_tokens=16, grid=(4, 4))).eval()


def hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def gen_kwargs(model, n, **kw):
    return dict(max_new_tokens=n, min_new_tokens=n, suppress_tokens=[get_adapter(model).image_token_id], **kw)


@pytest.mark.parametrize("sample", [False, True])
def test_tokens_identical_with_and_without_capture(tiny_llava, proxy, make_inputs, sample):
    model, processor = tiny_llava
    inputs = make_inputs(processor, ("What color is the circle?", "How many?"))
    kw = gen_kwargs(model, 8, do_sample=sample, top_k=0, temperature=1.5) if sample else gen_kwargs(model, 8, do_sample=False)
    torch.manual_seed(3)
    plain = model.generate(**inputs, **kw)
    torch.manual_seed(3)
    with capture(model, proxy) as cap:
        guarded = model.generate(**inputs, **kw)
    assert torch.equal(plain, guarded)
    assert cap.maps.shape == (2, 8, 4, 4)


def test_maps_equal_proxy_on_output_hidden_states(tiny_llava, proxy, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor, ("What color is the circle?", "How many?"))
    with capture(model, proxy, keep_states=True) as cap:
        out = model.generate(**inputs, **gen_kwargs(model, 6, do_sample=False),
                             output_hidden_states=True, return_dict_in_generate=True)
    hs = out.hidden_states  # per step: tuple over layers; the last is after the final norm
    last = torch.cat([step[-1][:, -1:] for step in hs], dim=1)  # (B, T, D)
    layouts = image_layouts(get_adapter(model), inputs["input_ids"])
    img = torch.stack([hs[0][-1][b, lay.patch_positions] for b, lay in enumerate(layouts)])  # (B, N, D)
    torch.testing.assert_close(cap.maps, proxy.predict(last, img), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cap.queries, last)
    torch.testing.assert_close(cap.image_states, img)


def test_streamer_sees_map_before_its_token(tiny_llava, proxy, make_inputs):
    from transformers import TextIteratorStreamer

    model, processor = tiny_llava
    inputs = make_inputs(processor)
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True)
    seen = []

    class CountingStreamer(TextIteratorStreamer):
        def put(self, value):
            if value.dim() == 1 or value.shape[-1] == 1:  # a generated token, not the prompt
                seen.append(cap.num_steps)
            super().put(value)

    streamer = CountingStreamer(processor.tokenizer, skip_prompt=True)
    with capture(model, proxy) as cap:
        thread = threading.Thread(target=model.generate, kwargs={**inputs, **gen_kwargs(model, 5, do_sample=False), "streamer": streamer})
        thread.start()
        text = "".join(streamer)
        thread.join()
    assert seen == [1, 2, 3, 4, 5]  # token k is streamed after its map (k maps exist)
    assert isinstance(text, str)


def test_on_token_callback_and_long_generation(tiny_llava, proxy, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor)
    calls = []
    with capture(model, proxy, on_token=lambda step, probs: calls.append((step, tuple(probs.shape)))) as cap:
        model.generate(**inputs, **gen_kwargs(model, 300, do_sample=False))
    assert cap.num_steps == 300 and calls[0] == (0, (1, 16)) and calls[-1][0] == 299  # (B, N_img) flat


def test_prompt_features_are_the_documented_blocks(tiny_llava, proxy, make_inputs):
    """(B, 5 D) in PROMPT_FEATURE_BLOCKS' order, against a plain forward with output_hidden_states."""
    from fastrm_common.prompt_features import PROMPT_FEATURE_BLOCKS, feature_columns

    model, processor = tiny_llava
    inputs = make_inputs(processor, ("What color is the circle?", "How many red squares are there?"))
    with capture(model, proxy) as cap:
        model.generate(**inputs, **gen_kwargs(model, 2, do_sample=False))
    feats = cap.features  # (B, 5 D)
    D = get_adapter(model).hidden_size
    assert feats.shape == (2, len(PROMPT_FEATURE_BLOCKS) * D)
    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states  # embeddings, ..., last (after the norm)
    ad = get_adapter(model)
    for b in range(2):
        pos = image_layout(ad, inputs["input_ids"][b]).patch_positions
        text = inputs["attention_mask"][b].bool().clone()
        text[pos] = False
        img = hs[-1][b, pos].double()  # (N_img, D)
        want = {"image_mean": img.mean(0), "image_std": img.std(0, correction=0), "last": hs[-1][b, -1].double(),
                "text_mean": hs[-1][b, text].double().mean(0), "text_input_mean": hs[0][b, text].double().mean(0)}
        for name, value in want.items():
            got = torch.from_numpy(feats[b, feature_columns(feats.shape[1], [name])])
            assert torch.allclose(got, value, atol=1e-4), name


def test_hooks_removed_also_on_error(tiny_llava, proxy, make_inputs):
    model, processor = tiny_llava
    before = hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, proxy):
            assert hooks(model) == before + 2  # the model's and the first layer's pre-hooks; the norm is tapped
            assert "forward" in vars(get_adapter(model).final_norm)
            raise RuntimeError("boom")
    assert hooks(model) == before
    assert "forward" not in vars(get_adapter(model).final_norm)


def test_a_second_prompt_in_one_block_is_refused(tiny_llava, proxy, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor, ("What color is the circle?",))
    before = hooks(model)
    with pytest.raises(CaptureError, match="second prompt"):
        with capture(model, proxy):
            model.generate(**inputs, **gen_kwargs(model, 3, do_sample=False))
            model.generate(**inputs, **gen_kwargs(model, 3, do_sample=False))
    assert hooks(model) == before


def test_nan_states_raise_capture_error(tiny_llava, proxy, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor)
    before = hooks(model)
    layer = get_adapter(model).decoder_layers[-1]
    handle = layer.register_forward_hook(lambda m, a, o: o * float("nan"))
    try:
        with pytest.raises(CaptureError, match="non-finite hidden states on the image tokens at prefill"):
            with capture(model, proxy):
                model.generate(**inputs, max_new_tokens=2)
    finally:
        handle.remove()
    assert hooks(model) == before


def test_nan_during_decoding_is_reported_by_maps(tiny_llava, proxy, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor)
    layer = get_adapter(model).decoder_layers[-1]
    calls = []

    def poison_after_prefill(module, args, output):
        calls.append(1)
        return output * float("nan") if len(calls) == 3 else output  # the 2nd decoding step

    handle = layer.register_forward_hook(poison_after_prefill)
    try:
        with capture(model, proxy) as cap:
            model.generate(**inputs, **gen_kwargs(model, 4, do_sample=False))
    finally:
        handle.remove()
    with pytest.raises(CaptureError, match="non-finite last hidden state at generation step 2"):
        cap.maps


def test_mismatched_proxy_and_bad_arguments(tiny_llava):
    model, _ = tiny_llava
    wrong = FastRMProxy(ProxyConfig(hidden_size=32, n_image_tokens=16, grid=(4, 4)))
    before = hooks(model)
    with pytest.raises(ConfigMismatchError, match="hidden size 32"):
        with capture(model, wrong):
            pass
    with pytest.raises(InputError, match="keep_states"):
        with capture(model, None):
            pass
    assert hooks(model) == before


def test_other_threads_are_ignored_when_asked(tiny_llava, proxy, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor)
    with capture(model, proxy, thread="current") as cap:
        other = threading.Thread(target=model.generate, kwargs={**inputs, **gen_kwargs(model, 4, do_sample=False)})
        other.start()
        other.join()
        assert cap.num_steps == 0
        model.generate(**inputs, **gen_kwargs(model, 3, do_sample=False))
    assert cap.num_steps == 3


def test_empty_capture_says_so(tiny_llava, proxy):
    with capture(tiny_llava[0], proxy) as cap:
        pass
    with pytest.raises(CaptureError, match="no generation step"):
        cap.maps


def test_regions_given_by_the_caller_give_the_same_maps(tiny_llava, proxy, make_inputs):
    """The Guard hands capture the regions it found when it checked the input: the same maps as
    capture finding them itself; regions that cannot be the prompt's are refused."""
    model, processor = tiny_llava
    inputs = make_inputs(processor, ("What color is the circle?", "How many?"))
    kw = gen_kwargs(model, 4, do_sample=False)
    regions = get_adapter(model).batch_regions(inputs)
    with capture(model, proxy, keep_states=True) as found:
        model.generate(**inputs, **kw)
    with capture(model, proxy, keep_states=True, regions=regions) as given:
        model.generate(**inputs, **kw)
    assert torch.equal(found.maps, given.maps) and given.regions == regions
    assert torch.equal(found.prompt_features, given.prompt_features)
    with pytest.raises(CaptureError, match="do not fit the prompt"):
        with capture(model, proxy, regions=regions[:1]):
            model.generate(**inputs, **kw)


def test_after_the_prefill_only_the_final_norm_is_tapped(tiny_llava, proxy, make_inputs):
    """The model's and the first layer's hooks are needed at prefill only: a decode step runs no hook,
    only the tap on the final norm's forward."""
    model, processor = tiny_llava
    inputs = make_inputs(processor, ("What color is the circle?",))
    before = hooks(model)
    seen = []
    with capture(model, proxy, on_token=lambda step, probs: seen.append(hooks(model) - before)) as cap:
        model.generate(**inputs, **gen_kwargs(model, 3, do_sample=False))
    assert seen == [0, 0, 0] and cap.maps.shape[1] == 3
    assert hooks(model) == before
    assert len(cap.times) == 3 and cap.times == sorted(cap.times)  # when each step's state was produced


def test_a_hook_on_the_norm_is_seen_by_the_capture(tiny_llava, proxy, make_inputs):
    """With a forward hook already on the final norm the capture hooks after it, so it maps what that
    hook made of the output; without one it wraps forward; the two give the same maps for a hook
    that only observes."""
    model, processor = tiny_llava
    inputs = make_inputs(processor, ("What color is the circle?", "How many?"))
    kw = gen_kwargs(model, 4, do_sample=False)
    norm = get_adapter(model).final_norm
    with capture(model, proxy) as wrapped:
        model.generate(**inputs, **kw)
    handle = norm.register_forward_hook(lambda m, a, o: None)
    try:
        with capture(model, proxy) as hooked:
            assert "forward" not in vars(norm) and len(norm._forward_hooks) == 2
            model.generate(**inputs, **kw)
    finally:
        handle.remove()
    assert torch.equal(wrapped.maps, hooked.maps)
    handle = norm.register_forward_hook(lambda m, a, o: o * 0.5)  # a hook that changes the output
    try:
        with capture(model, proxy, keep_states=True) as scaled:
            model.generate(**inputs, **kw)
    finally:
        handle.remove()
    torch.testing.assert_close(scaled.queries, hooked_queries(model, proxy, inputs, kw) * 0.5)
    assert not norm._forward_hooks and "forward" not in vars(norm)


def hooked_queries(model, proxy, inputs, kw):
    with capture(model, proxy, keep_states=True) as cap:
        model.generate(**inputs, **kw)
    return cap.queries


def test_output_tap_nests_and_restores_forward():
    """Taps on one module share one wrapper whatever order they are removed in; the module's own
    instance-level forward (as accelerate installs) comes back when the last one goes."""
    from fastrm_core import OutputTap

    lin = torch.nn.Linear(3, 2)
    x = torch.ones(1, 3)
    want = lin(x)
    seen_a, seen_b = [], []
    a = OutputTap(lin, lambda m, args, out: seen_a.append(out))
    b = OutputTap(lin, lambda m, args, out: seen_b.append((m, args[0])))
    assert torch.equal(lin(x), want) and len(seen_a) == 1 and seen_b[0][0] is lin and seen_b[0][1] is x
    a.remove()
    a.remove()  # idempotent
    lin(x)
    assert len(seen_a) == 1 and len(seen_b) == 2 and "forward" in vars(lin)
    b.remove()
    assert "forward" not in vars(lin) and torch.equal(lin(x), want) and len(seen_b) == 2

    calls = []
    inner = lin.forward

    def own_forward(*args, **kwargs):  # an instance-level forward of someone else's
        calls.append(1)
        return inner(*args, **kwargs)

    lin.forward = own_forward
    tap = OutputTap(lin, lambda m, args, out: seen_a.append(out))
    lin(x)
    assert calls == [1] and len(seen_a) == 2
    tap.remove()
    assert vars(lin)["forward"] is own_forward
