"""The Guard's scores: signals from the one generate, observe-only mode, policies on scores, other scores' verdicts."""

import inspect

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from calibration import NoveltyGate, ScoreSpec, fit_calibration
from fastrm_core import capture
from fastrm_common.errors import PolicyError
from guardrail import Guard
from guardrail.answers.token_signals import TokenSignals
from policies import Policy

KW = dict(max_new_tokens=5, min_new_tokens=5)
Q = "What color is the circle?"


def _policy(rules):
    return Policy.model_validate({"id": "p", "version": "1", "rules": rules, "default": {"action": "allow"}})


def test_same_tokens_and_maps_with_the_signals_on(tiny_llava, tiny_proxy, calibration_uncertain, image):
    model, processor = tiny_llava
    guard = Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain)
    inputs = guard.prepare([image], [Q])
    with torch.no_grad(), capture(model, tiny_proxy) as cap:  # the signals off
        plain = model.generate(**inputs, do_sample=False, **KW)
    plain_maps = cap.maps.numpy()
    rec = TokenSignals()
    with torch.no_grad(), capture(model, tiny_proxy) as cap:  # the signals on
        out = model.generate(**inputs, do_sample=False, logits_processor=LogitsProcessorList([rec]), **KW)
    assert torch.equal(plain, out)
    np.testing.assert_array_equal(plain_maps, cap.maps.numpy())
    # the recorded signals match the logits computed in a separate forward (test only)
    sig = rec.result(out)
    assert sig.token_logprob.shape == (1, 5) and rec.num_steps == 5
    assert np.all(sig.token_logprob <= 0) and np.all((sig.margin >= 0) & (sig.margin <= 1))
    with torch.no_grad():
        logits = model(**{**inputs, "input_ids": out, "attention_mask": torch.ones_like(out)}).logits[0]
    n = inputs["input_ids"].shape[1]
    logits = logits[n - 1 : -1].double()  # (T, V): the positions predicting each token
    # the recorder sees the distribution the token is drawn from: min_new_tokens masks end-of-sequence
    eos = model.generation_config.eos_token_id
    logits[:, torch.as_tensor(eos if isinstance(eos, list) else [eos])] = -float("inf")
    logp = torch.log_softmax(logits, -1)
    chosen = logp.gather(1, out[0, n:, None])[:, 0].numpy()
    np.testing.assert_allclose(sig.token_logprob[0], chosen, atol=1e-4)
    ent = -torch.special.xlogy(logp.exp(), logp.exp()).sum(-1).numpy()
    np.testing.assert_allclose(sig.predictive_entropy[0], ent, atol=1e-4)
    # the guard itself gives the same tokens and maps as the plain capture
    r = guard.generate(image, Q, **KW)
    assert r.token_ids == out[0, n:].tolist()[: len(r.token_ids)]
    np.testing.assert_allclose(r.maps, plain_maps[0, : len(r.token_ids)], atol=1e-6)


def test_no_host_sync_per_token(tiny_llava, tiny_proxy, image, monkeypatch):
    """The recorder never moves a tensor to the host during generation (.item / .cpu / .tolist / .numpy)."""
    model, processor = tiny_llava
    guard = Guard(model, processor, proxy=tiny_proxy)
    inputs = guard.prepare([image], [Q])
    calls = []
    rec = TokenSignals()
    for name in ("item", "cpu", "tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _name=name, _orig=original, **k):
            calls.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    with torch.no_grad():
        rec_only = LogitsProcessorList([rec])
        scores = torch.randn(1, 55)
        ids = inputs["input_ids"]
        for _ in range(4):
            rec_only(ids, scores)
    assert calls == []  # nothing leaves the device inside the loop
    rec.result(torch.cat([ids, ids[:, -1:]], 1))
    assert calls  # one transfer at the end


def test_observe_only_guard_returns_every_score_and_no_verdict(tiny_llava, tiny_proxy, image):
    model, processor = tiny_llava
    policy = _policy([{"name": "unlikely", "when": {"scores": {"token_nll": {"gt": 1e9}}}, "action": "abstain"},
                      {"name": "observe", "when": {"verdict": "unscored"}, "action": "flag"}])
    guard = Guard(model, processor, proxy=tiny_proxy, policy=policy)
    assert guard.calibration is None and guard.calibration_id == "none"
    r = guard.generate(image, Q, **KW)
    assert r.verdict is None and r.score is None and r.threshold is None
    assert set(r.scores) == {"grounding", "low_margin", "map_entropy", "map_spread", "predictive_entropy", "token_nll"}
    assert all(v is not None and np.isfinite(v) for v in r.scores.values())
    assert r.maps is not None and r.rule == "observe" and r.action == "flag"
    content = [e for e, c in zip(r.entropies, r.content) if c]
    assert r.scores["map_entropy"] == pytest.approx(np.mean(content))
    # the policy decides on a raw score
    guard = Guard(model, processor, proxy=tiny_proxy,
                  policy=_policy([{"name": "any", "when": {"scores": {"token_nll": {"gte": 0}}}, "action": "abstain"}]))
    assert guard.generate(image, Q, **KW).action == "abstain"


def test_unknown_score_in_a_policy_lists_the_available_ones(tiny_llava, tiny_proxy):
    model, processor = tiny_llava
    with pytest.raises(PolicyError, match="unknown score.*token_prob_min.*computes: grounding, low_margin, map_entropy"):
        Guard(model, processor, proxy=tiny_proxy,
              policy=_policy([{"name": "r", "when": {"scores": {"token_prob_min": {"lt": 0.4}}}, "action": "flag"}]))


def test_verdict_on_another_score_and_the_novelty_gate(tiny_llava, tiny_proxy, image):
    model, processor = tiny_llava
    rng = np.random.default_rng(0)
    s = np.r_[rng.normal(1.0, 0.1, 40), rng.normal(3.0, 0.1, 40)]
    ok = np.r_[np.ones(40, bool), np.zeros(40, bool)]
    cal = fit_calibration(s, ok, score=ScoreSpec(name="token_nll", params={"aggregation": "max"}))
    cal = cal.model_copy(update={"threshold": 1e6})  # every answer confident on the score alone
    guard = Guard(model, processor, proxy=tiny_proxy, calibration=cal)
    r = guard.generate(image, Q, **KW)
    assert r.score == r.scores["token_nll"] and r.verdict == "confident" and r.threshold == 1e6
    # a gate fitted around other inputs: this one is novel, so uncertain whatever its score
    feats = rng.normal(size=(50, 3 * 64)) * 1e-3
    from calibration.novelty import NoveltyModel

    gate = NoveltyGate(score=ScoreSpec(name="novelty", params=NoveltyModel.fit(feats, rank=4).to_params()),
                       threshold=5.0, quantile=0.99)
    guard = Guard(model, processor, proxy=tiny_proxy, calibration=cal.model_copy(update={"novelty_gate": gate}))
    r = guard.generate(image, Q, **KW)
    assert r.scores["novelty"] > 5.0 and r.verdict == "uncertain"


def test_recorder_buffer_size_does_not_change_the_signals(tiny_llava, tiny_proxy, image):
    """The recorder processes its buffered steps in chunks when the buffer is full (a big vocabulary
    and batch): a buffer of one step, of a few and of all of them give the same arrays, bit for bit,
    also when a stream reads a prefix half-way."""
    model, processor = tiny_llava
    guard = Guard(model, processor, proxy=tiny_proxy)
    inputs = guard.prepare([image, image], [Q, "Is there a square?"])
    results = []
    for steps_in_buffer in (1, 3, 1000):
        rec = TokenSignals(buffer_bytes=steps_in_buffer * 2 * model.config.text_config.vocab_size * 4)
        seen = []

        class Peek(LogitsProcessor):  # reads a prefix while generate runs, as a stream's claims do
            def __call__(self, input_ids, scores):
                seen.append(rec.prefix(rec.num_steps).token_logprob.shape[1])
                return scores

        with torch.no_grad():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=7, min_new_tokens=7,
                                 logits_processor=LogitsProcessorList([rec, Peek()]))
        r = rec.result(out)
        assert r.token_logprob.shape == (2, 7) and rec.num_steps == 7
        assert str(inspect.signature(rec.__call__)) == "(input_ids, scores)"  # what transformers inspects per step
        assert seen == list(range(7))  # every step but the latest has its chosen token
        results.append(r)
    for other in results[1:]:
        for name in ("token_logprob", "predictive_entropy", "margin"):
            np.testing.assert_array_equal(getattr(results[0], name), getattr(other, name))


def test_capture_maps_equal_the_proxy_on_the_kept_states(tiny_llava, tiny_proxy, image):
    """The capture runs the proxy batched when the maps are read: they equal the proxy applied to
    each step's kept state (to float32 rounding), and an on_token callback gets each step's map
    during generation, the same as read afterwards."""
    model, processor = tiny_llava
    guard = Guard(model, processor, proxy=tiny_proxy)
    inputs = guard.prepare([image], [Q])
    got = []
    with torch.no_grad(), capture(model, tiny_proxy, keep_states=True,
                                  on_token=lambda step, probs: got.append((step, probs.clone()))) as cap:
        model.generate(**inputs, do_sample=False, **KW)
    assert [s for s, _ in got] == list(range(5)) and cap.num_steps == 5
    per_step = torch.stack([tiny_proxy.predict(cap.queries[:, t: t + 1], cap.image_states)[:, 0].reshape(1, -1)
                            for t in range(5)], 1)  # (1, T, N)
    torch.testing.assert_close(cap.flat_maps, per_step, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.stack([p for _, p in got], 1), cap.flat_maps, rtol=0, atol=0)
    with torch.no_grad(), capture(model, tiny_proxy) as lazy:  # no callback: mapped when read
        model.generate(**inputs, do_sample=False, **KW)
    assert lazy.num_steps == 5
    torch.testing.assert_close(lazy.flat_maps, cap.flat_maps, rtol=0, atol=1e-5)


def test_recording_output_scores_after_generate_equals_the_processor(tiny_llava, tiny_proxy, image):
    """A greedy call takes its signals from ``output_scores`` after generate (no processor per step):
    bit-identical to the recorder called in the loop, for a padded batch and any chunk size."""
    from guardrail.generation import scores_after_generate

    model, processor = tiny_llava
    guard = Guard(model, processor, proxy=tiny_proxy)
    inputs = guard.prepare([image, image], [Q, "Is there a square in the picture?"])
    kw = dict(do_sample=False, max_new_tokens=7, min_new_tokens=7)
    rec = TokenSignals()
    with torch.no_grad():
        out = model.generate(**inputs, **kw, logits_processor=LogitsProcessorList([rec]))
        res = model.generate(**inputs, **kw, output_scores=True, return_dict_in_generate=True)
    assert torch.equal(out, res.sequences)
    want = rec.result(out)
    vocab = model.config.text_config.vocab_size
    for steps_per_chunk in (1, 3, 1000):
        other = TokenSignals(buffer_bytes=steps_per_chunk * 2 * vocab * 4)
        other.record(res.scores, res.sequences)
        got = other.result(res.sequences)
        assert other.num_steps == 7
        for name in ("token_logprob", "predictive_entropy", "margin"):
            np.testing.assert_array_equal(getattr(want, name), getattr(got, name))
        stacked = other.stacked(res.sequences)  # what the Guard reads: the same three, in one array
        assert stacked.shape == (3, 2, 7)
        np.testing.assert_array_equal(stacked, np.stack([want.token_logprob, want.predictive_entropy, want.margin]))
    rec_grad = TokenSignals()  # called with grad enabled, it records under no_grad itself
    rec_grad.record(res.scores, res.sequences)
    np.testing.assert_array_equal(rec_grad.result(res.sequences).margin, want.margin)
    # only greedy calls within the memory budget take this path (sampling warpers run after the recorder)
    assert scores_after_generate(model, inputs, {"do_sample": False, "max_new_tokens": 7})
    assert not scores_after_generate(model, inputs, {"do_sample": True, "max_new_tokens": 7})
    assert not scores_after_generate(model, inputs, {"do_sample": False, "max_new_tokens": 10 ** 9})


def test_guarded_call_and_stream_give_the_same_signals(tiny_llava, tiny_proxy, calibration_uncertain, image):
    """``generate`` (signals from output_scores) and ``stream`` (the recorder in the loop) agree exactly."""
    model, processor = tiny_llava
    guard = Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain)
    r = guard.generate(image, Q, **KW)
    s = list(guard.stream(image, Q, **KW))[-1]
    assert r.token_ids == s.token_ids and r.answer == s.answer and r.verdict == s.verdict
    for name in ("token_nll", "low_margin", "predictive_entropy"):  # the token signals: bit for bit
        assert r.scores[name] == s.scores[name]
    # the map scores: a stream maps its steps in other batches, equal to float32 rounding (test_llava_unchanged)
    assert r.scores.keys() == s.scores.keys()
    for name in r.scores:
        assert r.scores[name] == pytest.approx(s.scores[name], rel=1e-6, abs=1e-9)


def test_a_guarded_call_finds_the_image_regions_once(tiny_llava, tiny_proxy, image, monkeypatch):
    """The input check finds each row's image regions; the capture reuses them instead of looking again."""
    model, processor = tiny_llava
    guard = Guard(model, processor, proxy=tiny_proxy)
    calls = []
    original = type(guard.adapter).batch_regions
    monkeypatch.setattr(type(guard.adapter), "batch_regions",
                        lambda self, inputs: calls.append(1) or original(self, inputs))
    r = guard.generate(image, Q, **KW)
    assert len(calls) == 1 and r.regions and r.maps is not None
