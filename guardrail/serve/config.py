"""The server's settings: one frozen dataclass, filled by ``guardrail serve`` or by the caller."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["API_KEY_ENV", "ServeConfig"]

API_KEY_ENV = "GUARDRAIL_API_KEY"


@dataclass(frozen=True)
class ServeConfig:
    """How the guarded endpoint batches, limits and authenticates.

    Batching: concurrent requests with the same generation settings are answered by one
    ``Guard.generate_batch`` call of at most ``max_batch_size`` requests; the first request of
    a batch waits at most ``max_wait_ms`` for others. ``max_queue`` requests may wait (streams
    included); one more is answered 429 with ``Retry-After``.

    Limits (checked before any model work; a request over one is answered 400 or 413):
    ``max_body_bytes`` of JSON, ``max_image_pixels`` (width x height) per image,
    ``max_tokens`` generated tokens per request, ``max_question_chars`` of text,
    ``max_json_depth`` levels of nesting in the body (checked before it is parsed). A connection
    that has not sent a request's headers within ``header_timeout_s`` seconds is closed.

    Security: ``api_key`` (default: the ``GUARDRAIL_API_KEY`` variable; None: no auth) is compared
    in constant time with the ``Authorization: Bearer`` header (an empty key is refused: it is a
    mistake, not a way to turn auth off); ``image_dir`` is the only folder
    ``file://`` image URLs may point into (None: no file URLs); remote URLs are never fetched.
    ``cors_origins`` empty: no CORS headers.
    """

    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_body_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_tokens: int = 256
    max_question_chars: int = 4096
    api_key: Optional[str] = None
    image_dir: Optional[Path] = None
    cors_origins: tuple[str, ...] = ()
    model_name: Optional[str] = None
    shutdown_timeout_s: float = 30.0
    max_json_depth: int = 32
    header_timeout_s: float = 10.0

    def __post_init__(self):
        for name in ("max_batch_size", "max_queue", "max_body_bytes", "max_image_pixels", "max_tokens",
                     "max_question_chars", "max_json_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if not self.header_timeout_s > 0:
            raise ValueError(f"header_timeout_s must be > 0, got {self.header_timeout_s}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty; give a non-empty key, or leave it out to serve without auth "
                             "(loopback only)")
        if self.image_dir is not None:
            object.__setattr__(self, "image_dir", Path(self.image_dir).resolve())

    @staticmethod
    def api_key_from_env() -> Optional[str]:
        """The key in ``GUARDRAIL_API_KEY``, or None when unset or empty."""
        return os.environ.get(API_KEY_ENV) or None
