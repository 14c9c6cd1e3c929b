"""split_generated / stop_token_ids: where an explained sequence ends."""

from types import SimpleNamespace

import pytest
import torch

from fastrm_common.errors import InputError
from fastrm_core.sequences import split_generated, stop_token_ids


def _model(eos):
    return SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=eos))


def test_stop_token_ids_takes_every_generation_eos_id():
    assert stop_token_ids(_model(2)) == {2}
    assert stop_token_ids(_model([2, 32007])) == {2, 32007}
    assert stop_token_ids(_model(None)) == frozenset()
    assert stop_token_ids(SimpleNamespace()) == frozenset()


def test_split_generated_strips_the_prompt_and_cuts_after_the_first_stop_id():
    prompt = torch.tensor([5, 6, 7])
    full = torch.tensor([5, 6, 7, 11, 32007, 0, 0])  # padded after a chat stop token
    assert split_generated(prompt, full, {2, 32007}).tolist() == [11, 32007]
    # the second stop id counts as well as the first; with only the first, padding would leak in
    assert split_generated(prompt, full, {2}).tolist() == [11, 32007, 0, 0]
    # new tokens alone are accepted too
    assert split_generated(prompt, torch.tensor([11, 2, 0]), {2, 32007}).tolist() == [11, 2]
    assert split_generated(prompt, torch.tensor([11, 12]), ()).tolist() == [11, 12]


def test_split_generated_rejects_an_empty_generation():
    with pytest.raises(InputError, match="no generated token"):
        split_generated(torch.tensor([5, 6]), torch.tensor([5, 6]), {2})
