import numpy as np
import pytest

from fastrm_common.errors import InputError
from fastrm_common.tokens import content_token_mask


class Tok:  # a stand-in for a Hugging Face tokenizer that counts its decodes
    vocab = {0: "</s>", 1: "\u2581dog", 2: ".", 3: " ", 4: "\u2581+", 5: "\u00bf"}
    all_special_ids, eos_token_id, pad_token_id = [0], 0, None

    def __init__(self):
        self.decodes = 0

    def decode(self, ids, **kw):
        self.decodes += 1
        return "".join(self.vocab[i] for i in ids)


def test_given_token_texts_give_the_same_mask_without_decoding():
    ids = [1, 2, 3, 4, 5, 1, 0]
    tok = Tok()
    want = content_token_mask(ids, tok)
    assert want.tolist() == [True, False, False, True, False, True, False] and tok.decodes == 5  # one per new id
    texts = [Tok.vocab[i] for i in ids]
    fresh = Tok()
    got = content_token_mask(ids, fresh, texts=texts)
    assert np.array_equal(got, want) and fresh.decodes == 0
    with pytest.raises(InputError, match="2 token texts for 7 token ids"):
        content_token_mask(ids, fresh, texts=texts[:2])
