"""VQA answer normalisation and soft accuracy.

The normalisation follows the official VQA evaluation script (Antol et al. 2015,
``vqaEval.py``), so scores are comparable with published numbers:

1. newlines/tabs become spaces, text is lower-cased and stripped;
2. punctuation: ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is removed when it
   touches a space (or the answer has a digit-comma-digit number such as ``1,000``)
   and replaced by a space otherwise; periods are removed unless they sit before a
   digit (so ``3.5`` stays, ``dog.`` loses its period);
3. number words ``zero`` .. ``ten`` (and ``none``) become digits, the articles
   ``a``, ``an``, ``the`` are dropped;
4. a few common contractions written without an apostrophe are fixed (``dont`` ->
   ``don't``); the official list is longer, only the frequent ones are kept here.

Accuracy: with several reference answers ``min(#references equal to the prediction / 3, 1)``
(3 of 10 annotators agreeing counts as fully right); with a single reference, exact
match after normalisation. The official script averages this over the 10 subsets of 9
annotators, which gives slightly different values for 1 or 3 matches (0.3 vs 0.33, 0.9
vs 1.0); the simple form is the common re-implementation, and the one used here.
An answer counts as correct when its accuracy is at least 0.5 (:func:`is_correct`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from fastrm_common.errors import DataError

__all__ = ["is_correct", "normalize_answer", "vqa_accuracy"]

_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# a period not followed by a digit (the official pattern's look-behind is a no-op; kept equivalent)
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_CONTRACTIONS = {
    "arent": "aren't",
    "cant": "can't",
    "couldnt": "couldn't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "isnt": "isn't",
    "its": "it's",
    "shouldnt": "shouldn't",
    "thats": "that's",
    "theres": "there's",
    "wasnt": "wasn't",
    "werent": "weren't",
    "whats": "what's",
    "wont": "won't",
    "wouldnt": "wouldn't",
}


def _process_punctuation(text: str) -> str:
    out = text
    has_number_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or has_number_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def normalize_answer(answer: str) -> str:
    """Normalise an answer the way the VQA evaluation does.

    Example:
        >>> normalize_answer("Two")
        '2'
        >>> normalize_answer("a dog.")
        'dog'
        >>> normalize_answer("  The RED-ish ball! ")
        'red ish ball'
    """
    if not isinstance(answer, str):
        raise DataError(f"an answer must be a string, got {type(answer).__name__}")
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _process_punctuation(text)
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, references: Sequence[str]) -> float:
    """Soft VQA accuracy of ``prediction`` against the reference answers, in ``[0, 1]``.

    Several references: ``min(#matching / 3, 1)``. One reference: 1.0 on an exact
    match after normalisation, else 0.0.

    Raises:
        DataError: no reference answer, or a non-string answer.

    Example:
        >>> vqa_accuracy("Two", ["2", "2", "two", "3", "3", "3", "3", "3", "3", "3"])
        1.0
        >>> vqa_accuracy("yes", ["yes", "no", "no", "no", "no", "no", "no", "no", "no", "no"])
        0.3333333333333333
    """
    if isinstance(references, str):
        references = [references]
    refs = [normalize_answer(r) for r in references]
    if not refs:
        raise DataError("cannot score an answer without reference answers")
    pred = normalize_answer(prediction)
    matches = sum(1 for r in refs if r == pred)
    if len(refs) == 1:
        return float(matches)
    return min(matches / 3.0, 1.0)


def is_correct(prediction: str, references: Sequence[str], threshold: float = 0.5) -> bool:
    """Whether ``prediction`` counts as correct: ``vqa_accuracy >= threshold`` (0.5 by default).

    Example:
        >>> is_correct("cube", ["cube", "cube", "box"])
        True
    """
    return vqa_accuracy(prediction, references) >= threshold
