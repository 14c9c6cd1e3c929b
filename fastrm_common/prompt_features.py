"""The layout of the pooled prompt features that input-novelty scores read.

At prefill the capture (:mod:`fastrm_core.capturing`) pools the prompt's hidden states into
one vector per input, ``F = len(PROMPT_FEATURE_BLOCKS) * D`` floats for a language model of
width ``D``: one block of ``D`` per name below, in this order.

``image_mean``
    mean over the image tokens of the last hidden state (after the final norm);
``text_mean``
    mean over the other non-padding prompt tokens of the last hidden state;
``last``
    last hidden state of the position that predicts the first answer token;
``image_std``
    standard deviation over the image tokens of the last hidden state, per dimension:
    how much the patches differ from one another (colour, edges, texture), which a mean
    over 576 patches washes out;
``text_input_mean``
    mean over the non-image prompt tokens of the states entering the first decoder layer
    (the token embeddings): which words were asked, before the model mixes them with the image.

The first three blocks are the layout of calibrations fitted before ``image_std`` and
``text_input_mean`` existed, so their novelty models still read the first ``3 D`` features.
Torch-free, so that :mod:`calibration` can name blocks without importing the capture.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastrm_common.errors import CalibrationError

__all__ = ["PROMPT_FEATURE_BLOCKS", "feature_columns"]

#: block names of the pooled prompt features, in their order along the feature vector
PROMPT_FEATURE_BLOCKS: tuple[str, ...] = ("image_mean", "text_mean", "last", "image_std", "text_input_mean")


def feature_columns(n_features: int, blocks: Sequence[str]) -> list[int]:
    """Column indices of ``blocks`` (names from :data:`PROMPT_FEATURE_BLOCKS`) in a feature vector of ``n_features``.

    >>> feature_columns(10, ["image_mean", "image_std"])
    [0, 1, 6, 7]

    Raises:
        CalibrationError: an unknown block name, or ``n_features`` does not split into the blocks.
    """
    unknown = [b for b in blocks if b not in PROMPT_FEATURE_BLOCKS]
    if unknown:
        raise CalibrationError(f"unknown prompt feature block(s) {', '.join(map(repr, unknown))}; "
                               f"expected some of: {', '.join(PROMPT_FEATURE_BLOCKS)}")
    n_blocks = len(PROMPT_FEATURE_BLOCKS)
    if n_features <= 0 or n_features % n_blocks:
        raise CalibrationError(f"prompt features of size {n_features} do not split into the {n_blocks} blocks "
                               f"{', '.join(PROMPT_FEATURE_BLOCKS)} (were they gathered by an older version?)")
    width = n_features // n_blocks
    cols: list[int] = []
    for b in blocks:
        start = PROMPT_FEATURE_BLOCKS.index(b) * width
        cols.extend(range(start, start + width))
    return cols
