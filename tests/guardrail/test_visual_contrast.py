"""Visual contrast (issue 28): the image-free pass and the ``visual_contrast`` score.

The pass reproduces the generation's own log-probabilities when nothing is removed (left-padded
batches, one region and several regions of a second family), is deterministic, leaves the model
as found, and the Guard runs it only when asked or when a calibration needs it."""

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from calibration import AnswerSignals, get_score
from calibration.artifact import ScoreSpec
from fastrm_common.claims import ClaimSpan
from fastrm_common.errors import CalibrationError, InputError, PolicyError
from fastrm_core import FastRMProxy, ProxyConfig, get_adapter, imageless_logprobs
from guardrail import Claim, Guard, GuardResult, TokenEvent
from guardrail.answers.token_signals import TokenSignals
from policies import Policy

from ..fastrm_core.families.test_qwen2_vl import two_image_batch
from .conftest import make_calibration


def _generate(model, inputs, n=4):
    """Greedy, with no processor that reshapes the distribution (min_new_tokens would mask the end of
    sequence), so the recorder's log-probabilities are the model's own."""
    rec = TokenSignals()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, logits_processor=LogitsProcessorList([rec]))
    return out, rec.result(out)


def _words(text):
    """A claim per word (a splitter that gives the tiny model's random text several claims)."""
    import re

    return [ClaimSpan(m.start(), m.end(), m.group(), "word") for m in re.finditer(r"\S+", text)]


def _hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_without_removal_the_pass_reproduces_the_generation_on_a_left_padded_batch(tiny_llava, make_inputs):
    model, processor = tiny_llava
    inputs = make_inputs(processor, questions=("What color is the circle?", "Is there a small red square here?"))
    assert (inputs["attention_mask"] == 0).any()  # really left-padded
    out, rec = _generate(model, inputs)
    n = out.shape[1] - inputs["input_ids"].shape[1]
    same = imageless_logprobs(model, inputs, out, remove_image=False).numpy()
    np.testing.assert_allclose(same, rec.token_logprob, atol=2e-4)
    blind = imageless_logprobs(model, inputs, out).numpy()
    assert blind.shape == (2, n) and np.isfinite(blind).all()
    assert not np.allclose(blind, same, atol=1e-3)  # the image mattered to something
    np.testing.assert_array_equal(blind, imageless_logprobs(model, inputs, out).numpy())  # deterministic


def test_the_pass_leaves_the_model_as_found_also_on_error(tiny_llava, make_inputs, monkeypatch):
    model, processor = tiny_llava
    inputs = make_inputs(processor)
    before_hooks, before = _hooks(model), _generate(model, inputs)[0]
    imageless_logprobs(model, inputs, before)
    assert _hooks(model) == before_hooks
    torch.testing.assert_close(_generate(model, inputs)[0], before, rtol=0, atol=0)  # same answer, no cache left
    with pytest.raises(InputError, match="do not continue the prompt"):
        imageless_logprobs(model, inputs, before[:, :3])

    def boom(*a, **k):
        raise RuntimeError("forward failed")

    monkeypatch.setattr(model, "forward", boom)
    with pytest.raises(RuntimeError, match="forward failed"):
        imageless_logprobs(model, inputs, before)
    assert _hooks(model) == before_hooks
    assert imageless_logprobs(model, inputs, inputs["input_ids"]).shape == (1, 0)  # nothing generated


@pytest.mark.parametrize("bad, message", [
    (lambda out, inp: out.tolist(), "must be the \\(B, S \\+ T\\) token ids"),
    (lambda out, inp: out.float(), "must be the \\(B, S \\+ T\\) token ids"),
    (lambda out, inp: out[:, inp["input_ids"].shape[1]:], "not the answer alone"),
    (lambda out, inp: torch.cat([out[:, :2] * 0 + 7, out[:, 2:]], 1), "do not continue the prompt"),
])
def test_bad_inputs_are_one_clear_input_error(tiny_llava, make_inputs, bad, message):
    model, processor = tiny_llava
    inputs = make_inputs(processor)
    out, _ = _generate(model, inputs)
    with pytest.raises(InputError, match=message):
        imageless_logprobs(model, inputs, bad(out, inputs))
    with pytest.raises(InputError, match="no pixel values"):
        imageless_logprobs(model, {k: v for k, v in inputs.items() if k != "pixel_values"}, out)
    with pytest.raises(InputError, match="with input_ids"):
        imageless_logprobs(model, {"pixel_values": inputs["pixel_values"]}, out)


def test_several_regions_of_a_second_family(tiny_qwen2_vl):
    model, processor = tiny_qwen2_vl
    inputs = two_image_batch(model, processor)  # row 0: two pictures, row 1: one; left-padded
    out, rec = _generate(model, inputs, n=3)
    same = imageless_logprobs(model, inputs, out, adapter=get_adapter(model), remove_image=False).numpy()
    np.testing.assert_allclose(same, rec.token_logprob, atol=2e-4)
    blind = imageless_logprobs(model, inputs, out).numpy()
    assert blind.shape == same.shape and np.isfinite(blind).all() and not np.allclose(blind, same, atol=1e-4)


def test_the_score_is_minus_the_contrast_over_the_content_tokens():
    sig = AnswerSignals(content=np.array([True, False, True]), token_logprob=np.log([0.9, 0.5, 0.8]),
                        imageless_logprob=np.log([0.1, 0.5, 0.7]))
    mean, worst = get_score("visual_contrast"), get_score("visual_contrast", aggregation="max")
    assert mean(sig) == pytest.approx(np.mean([np.log(0.1 / 0.9), np.log(0.7 / 0.8)]))
    assert worst(sig) == pytest.approx(np.log(0.7 / 0.8))
    with pytest.raises(CalibrationError, match="needs the signal"):
        mean(AnswerSignals(content=np.array([True]), token_logprob=np.zeros(1)))
    with pytest.raises(CalibrationError, match="image-free log-probabilities for"):
        mean(AnswerSignals(content=np.array([True, True]), token_logprob=np.zeros(2), imageless_logprob=np.zeros(1)))
    back = AnswerSignals.from_json(sig.to_json())
    np.testing.assert_allclose(back.imageless_logprob, sig.imageless_logprob, atol=1e-6)
    assert "imageless_logprob" not in AnswerSignals(content=np.array([True])).to_json()


def test_the_guard_runs_the_pass_only_when_asked_or_needed(tiny_llava, tiny_proxy, calibration_uncertain, image):
    model, processor = tiny_llava
    plain = Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain)
    r = plain.generate(image, "What color?", max_new_tokens=4, min_new_tokens=4)
    assert not plain.visual_contrast and "visual_contrast" not in r.scores  # absent, not None
    asked = Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain, visual_contrast=True)
    a = asked.generate(image, "What color?", max_new_tokens=4, min_new_tokens=4)
    assert a.error is None and np.isfinite(a.scores["visual_contrast"])
    assert a.token_ids == r.token_ids and a.scores["low_margin"] == r.scores["low_margin"]
    policy = Policy.model_validate({"id": "p", "version": "1", "default": {"action": "allow"}, "rules": [
        {"name": "blind", "when": {"scores": {"visual_contrast": {"gt": 0}}}, "action": "flag"}]})
    with pytest.raises(PolicyError, match=r"visual_contrast needs an optional pass: Guard\(visual_contrast=True\)"):
        Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain, policy=policy)
    with pytest.raises(InputError, match="visual_contrast must be True, False or None"):
        Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain, visual_contrast="false")
    Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain, policy=policy, visual_contrast=True)

    needs = make_calibration(0.0).model_copy(update={"score": ScoreSpec(name="visual_contrast",
                                                                        params={"aggregation": "mean"})})
    assert Guard(model, processor, proxy=tiny_proxy, calibration=needs).visual_contrast
    with pytest.raises(InputError, match=r"the calibration's score visual_contrast\(mean\) needs the image-free pass"):
        Guard(model, processor, proxy=tiny_proxy, calibration=needs, visual_contrast=False)


def test_a_stream_with_the_pass_gives_its_claims_with_the_final_result(tiny_llava, tiny_proxy, calibration_uncertain,
                                                                      image):
    model, processor = tiny_llava
    guard = Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain, visual_contrast=True,
                  claims=_words)
    events = list(guard.stream(image, "What color?", max_new_tokens=6, min_new_tokens=6))
    final = events[-1]
    assert isinstance(final, GuardResult) and final.error is None and len(final.claims) > 1
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    streamed = [e for e in events if isinstance(e, Claim)]
    assert events[: len(tokens)] == tokens  # every token first: no claim before the answer is whole
    assert [c.text for c in streamed] == [c.text for c in final.claims]
    assert all("visual_contrast" in c.scores for c in streamed)


def test_the_pass_on_the_guard_of_a_second_family(tiny_qwen2_vl):
    from fastrm_core.testing import blank_image

    model, processor = tiny_qwen2_vl
    torch.manual_seed(0)
    guard = Guard(model, processor, proxy=FastRMProxy(ProxyConfig(hidden_size=64)).eval(), visual_contrast=True)
    r = guard.generate(blank_image(64, (200, 40, 40)), "what color?", max_new_tokens=3, min_new_tokens=3)
    assert r.error is None and np.isfinite(r.scores["visual_contrast"])
