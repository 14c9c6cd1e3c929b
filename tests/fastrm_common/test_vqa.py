import pytest

from calibration import is_correct, normalize_answer, vqa_accuracy
from fastrm_common.errors import DataError


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two", "2"),
        ("a dog.", "dog"),
        ("The Cat", "cat"),
        ("an apple", "apple"),
        ("  Yes!\n", "yes"),
        ("ten", "10"),
        ("none", "0"),
        ("3.5", "3.5"),
        ("1,000", "1000"),
        ("black-and-white", "black and white"),
        ("red, blue", "red blue"),
        ("dont know", "don't know"),
        ("Isnt it", "isn't it"),
        ("left (mostly)", "left mostly"),
        ("two red cubes", "2 red cubes"),
        ("theater", "theater"),  # article removal is per word, not per prefix
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_soft_accuracy_with_ten_references():
    refs = ["2", "two", "2", "3", "3", "three", "3", "3", "4", "2 "]
    assert vqa_accuracy("Two", refs) == 1.0  # 4 matches -> capped at 1
    assert vqa_accuracy("4", refs) == pytest.approx(1 / 3)
    assert vqa_accuracy("5", refs) == 0.0
    two_of_ten = ["yes", "yes"] + ["no"] * 8
    assert vqa_accuracy("Yes.", two_of_ten) == pytest.approx(2 / 3)
    assert is_correct("yes", two_of_ten)
    assert not is_correct("yes", ["yes"] + ["no"] * 9)
    assert is_correct("yes", ["yes"] + ["no"] * 9, threshold=0.3)


def test_single_reference_is_exact_match_after_normalisation():
    assert vqa_accuracy("A Cube.", ["cube"]) == 1.0
    assert vqa_accuracy("cubes", ["cube"]) == 0.0
    assert vqa_accuracy("three", "3") == 1.0  # a bare string is one reference
    assert is_correct("three", ["3"])


def test_errors():
    with pytest.raises(DataError, match="without reference"):
        vqa_accuracy("x", [])
    with pytest.raises(DataError, match="must be a string"):
        vqa_accuracy(3, ["3"])
