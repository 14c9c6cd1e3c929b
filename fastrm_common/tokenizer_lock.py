"""One lock per tokenizer, for every call that tokenises.

A fast tokenizer keeps its padding and truncation settings in shared (Rust-side) state that each
call rewrites before encoding. Two threads tokenising through one tokenizer can therefore each run
with the other's setting: a padded batch then fails with "Unable to create tensor ... activate
padding". Every tokenising call of this project on a shared tokenizer (input preparation, the
question-length check) takes :func:`tokenizer_lock` first, so such calls take turns.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

__all__ = ["tokenizer_lock"]

_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_table_lock = threading.Lock()  # guards the table; also the lock of tokenizers that take no weak reference


def tokenizer_lock(tokenizer_or_processor: Any) -> threading.Lock:
    """The lock of a tokenizer (given itself, or a processor that holds it as ``.tokenizer``)."""
    key = getattr(tokenizer_or_processor, "tokenizer", None) or tokenizer_or_processor
    with _table_lock:
        try:
            lock = _locks.get(key)
            if lock is None:
                lock = _locks[key] = threading.Lock()
        except TypeError:  # not weak-referenceable: share one lock
            return _table_lock
    return lock
