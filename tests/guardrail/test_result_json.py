"""A GuardResult (and a TokenEvent) survives a trip through JSON: apps log and ship results."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from guardrail import GuardResult, TokenEvent


def make_result(maps) -> GuardResult:
    return GuardResult(
        question="What color is the circle?", answer="red", text="red", token_ids=[5, 2], tokens=["red", "</s>"],
        maps=maps, entropies=[0.41, 0.77], content=[True, False], score=0.41, threshold=0.6, patch_threshold=0.5,
        verdict="confident", action="allow", rule="default", reason="", policy_id="default", policy_version="1",
        tags=["demo"],
    )


def test_guard_result_round_trips_through_json_maps_included():
    maps = np.random.default_rng(0).random((2, 4, 4), dtype=np.float32)  # (T, rows, cols)
    r = make_result(maps)
    back = GuardResult.model_validate_json(r.model_dump_json())
    assert isinstance(back.maps, np.ndarray) and back.maps.dtype == np.float32 and back.maps.shape == (2, 4, 4)
    np.testing.assert_allclose(back.maps, maps, atol=5e-7)
    assert back.model_dump(exclude={"maps"}) == r.model_dump(exclude={"maps"})
    assert back.grid == (4, 4)
    np.testing.assert_allclose(back.answer_map, r.answer_map, atol=5e-7)
    assert back.model_dump_json() == GuardResult.model_validate_json(back.model_dump_json()).model_dump_json()


def test_guard_result_round_trips_without_maps_and_from_a_python_dict():
    r = make_result(None)
    assert GuardResult.model_validate_json(r.model_dump_json()) == r
    dumped = json.loads(make_result(np.zeros((2, 3, 3), np.float32)).model_dump_json())
    assert GuardResult.model_validate(dumped).maps.shape == (2, 3, 3)


def test_guard_result_rejects_maps_that_are_not_numbers():
    with pytest.raises(ValidationError, match="maps"):
        GuardResult.model_validate_json(make_result(None).model_dump_json().replace('"maps":null', '"maps":"x"'))


def test_token_event_round_trips_through_json():
    e = TokenEvent(index=0, token_id=5, token="red", map=np.full((4, 4), 0.25, np.float32), entropy=1.0)
    back = TokenEvent.model_validate_json(e.model_dump_json())
    assert back.map.shape == (4, 4) and np.array_equal(back.map, e.map) and back.entropy == 1.0
