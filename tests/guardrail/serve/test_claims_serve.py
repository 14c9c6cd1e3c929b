"""Claims through `guardrail serve` with the official openai client (issue 27): listed in the response's
``guardrail`` object, redacted by a policy, and streamed as each claim closes."""

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from fastrm_core.testing import blank_image
from guardrail import Guard
from guardrail.serve import LoopbackServer, ServeConfig, create_app
from policies import Policy

from ..conftest import claim_calibration_between, word_claims
from .conftest import user_message

KW = {"max_tokens": 8}


@pytest.fixture(scope="module")
def claim_guard(tiny_llava, tiny_proxy):
    model, processor = tiny_llava
    image = blank_image(32, (200, 40, 40))
    observe = Guard(model, processor, proxy=tiny_proxy, claims=word_claims)
    r0 = observe.generate(image, "What color?", max_new_tokens=8, min_new_tokens=8)
    cal = claim_calibration_between([c.scores["map_entropy"] for c in r0.claims])
    policy = Policy.model_validate({"id": "p", "version": "1", "default": {"action": "allow"}, "rules": [
        {"name": "cut", "when": {"claims": {"any_uncertain": True}}, "action": "redact"}]})
    guard = Guard(model, processor, proxy=tiny_proxy, claims=word_claims, claim_calibration=cal, policy=policy)
    return guard, image


@pytest.fixture(scope="module")
def client(claim_guard):
    with LoopbackServer(create_app(claim_guard[0], config=ServeConfig(api_key="k", model_name="tiny"))) as s:
        yield openai.OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0, timeout=60)


def test_claims_in_the_response_and_the_redacted_text(client, claim_guard):
    guard, image = claim_guard
    direct = guard.generate(image, "What color?", max_new_tokens=8)
    r = client.chat.completions.create(model="tiny", messages=user_message(image, "What color?"), **KW)
    g = r.model_extra["guardrail"]
    assert [c["text"] for c in g["claims"]] == [c.text for c in direct.claims]
    assert [c["redacted"] for c in g["claims"]] == [c.redacted for c in direct.claims]
    assert g["action"] == "redact" and any(c["redacted"] for c in g["claims"])
    assert r.choices[0].message.content == direct.text != direct.answer


def test_streamed_claims_arrive_before_the_final_chunk_and_equal_it(client, claim_guard):
    guard, image = claim_guard
    chunks = list(client.chat.completions.create(model="tiny", messages=user_message(image, "What color?"),
                                                 stream=True, **KW))
    streamed = [c.model_extra["guardrail"]["claim"] for c in chunks
                if "claim" in (c.model_extra.get("guardrail") or {})]
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1].model_extra["guardrail"]
    assert len(streamed) == len(final["claims"]) > 1
    assert streamed == final["claims"][: len(streamed)] or \
        [{k: v for k, v in s.items() if k != "redacted"} for s in streamed] == \
        [{k: v for k, v in f.items() if k != "redacted"} for f in final["claims"]]
    first_claim = next(i for i, c in enumerate(chunks) if "claim" in (c.model_extra.get("guardrail") or {}))
    last_token = max(i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content)
    assert first_claim < last_token  # the first claim's verdict came while text was still streaming
