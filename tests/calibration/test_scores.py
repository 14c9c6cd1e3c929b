import numpy as np
import pytest

from calibration import answer_score, content_token_mask
from fastrm_common.errors import CalibrationError

H = [0.5, 0.9, 0.1, 0.3]


def test_aggregations_over_content_tokens():
    mask = [False, True, True, False]
    assert answer_score(H, mask) == pytest.approx(0.5)
    assert answer_score(H, mask, aggregate="max") == pytest.approx(0.9)
    assert answer_score(H, mask, aggregate="first") == pytest.approx(0.9)
    assert answer_score(H) == pytest.approx(np.mean(H))
    assert answer_score(np.array(H), np.array(mask)) == pytest.approx(0.5)


def test_answer_score_errors():
    with pytest.raises(CalibrationError, match="expected one of: mean, max, first"):
        answer_score(H, aggregate="median")
    with pytest.raises(CalibrationError, match="3 entries but there are 4"):
        answer_score(H, [True, True, True])
    with pytest.raises(CalibrationError, match="no content tokens"):
        answer_score(H, [False] * 4)
    with pytest.raises(CalibrationError, match="boolean"):
        answer_score(H, [1, 0, 1, 0])
    with pytest.raises(CalibrationError, match="NaN"):
        answer_score([0.1, float("nan")], [True, True])
    # a NaN on a masked-out token does not matter
    assert answer_score([0.1, float("nan")], [True, False]) == pytest.approx(0.1)


class FakeTokenizer:
    """Decodes like a SentencePiece tokenizer: word pieces carry '▁'."""

    vocab = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "▁two", 4: "▁red", 5: ".", 6: "▁", 7: "?!", 8: "cub", 9: "es",
             10: "<pad>", 11: "5", 12: "+", 13: "<0x0A>", 14: "<|im_end|>", 15: "\u2019"}

    all_special_ids = [0, 1, 2, 10]
    eos_token_id = 2
    pad_token_id = 10

    def decode(self, ids, skip_special_tokens=False):
        text = "".join(self.vocab[i] for i in ids)
        return text.replace("<0x0A>", "\n").replace("▁", " ")


def test_content_token_mask_excludes_special_punctuation_and_blank():
    ids = [3, 4, 8, 9, 5, 7, 6, 11, 12, 13, 15, 2, 10, 14]
    mask = content_token_mask(ids, FakeTokenizer(), extra_excluded_ids=[14])
    expected = [True, True, True, True, False, False, False, True, True, False, False, False, False, False]
    assert mask.tolist() == expected
    assert mask.dtype == bool
    # numpy input, list-valued eos ids
    tok = FakeTokenizer()
    tok.eos_token_id = [2, 14]
    assert content_token_mask(np.array([3, 14]), tok).tolist() == [True, False]


def test_content_token_mask_with_a_real_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"[UNK]": 0, "</s>": 1, "<pad>": 2, "two": 3, "cubes": 4, ".": 5, ",": 6, "3": 7}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>", pad_token="<pad>"
    )
    ids = tok("two cubes , 3 .")["input_ids"] + [tok.eos_token_id, tok.pad_token_id]
    assert content_token_mask(ids, tok).tolist() == [True, True, False, True, False, False, False]


def test_answer_score_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    h = torch.tensor([0.5, 0.9, 0.1])
    mask = torch.tensor([True, False, True])
    assert answer_score(h, mask) == pytest.approx(0.3)
    assert content_token_mask(torch.tensor([3, 5, 2]), FakeTokenizer()).tolist() == [True, False, False]
