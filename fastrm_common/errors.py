"""The one exception hierarchy of fastrm-guard.

Every error the SDK raises on purpose derives from :class:`GuardrailError`, so an
application can catch them all with one ``except`` clause::

    GuardrailError
    ├── UnsupportedModelError   the model is not one a registered adapter knows
    ├── ConfigMismatchError     a proxy / calibration / policy does not match the model
    ├── InputError              bad user input (image, question, generation arguments)
    ├── RelevancyError          a relevancy map cannot be computed (no attention weights, NaNs, ...)
    ├── CaptureError            per-token capture failed during generation
    ├── DataError               a dataset record or file is malformed
    ├── CalibrationError        calibration cannot be fitted or applied
    └── PolicyError             a policy file is invalid or cannot be applied

``InputError`` also derives from :class:`ValueError` and ``DataError`` from
:class:`ValueError`, so code that already catches ``ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "CalibrationError",
    "CaptureError",
    "ConfigMismatchError",
    "DataError",
    "GuardrailError",
    "InputError",
    "PolicyError",
    "RegistryError",
    "RelevancyError",
    "UnsupportedModelError",
]


class GuardrailError(Exception):
    """Base class of every error raised on purpose by fastrm-guard."""


class UnsupportedModelError(GuardrailError, TypeError):
    """The model has no registered adapter; the message lists the supported ones."""


class ConfigMismatchError(GuardrailError, ValueError):
    """An artifact (proxy, calibration, policy) does not match the model it is used with."""


class InputError(GuardrailError, ValueError):
    """Bad user input: unreadable image, empty question, invalid generation arguments."""


class RelevancyError(GuardrailError, RuntimeError):
    """A relevancy map cannot be computed (attention weights unavailable, NaN states, ...)."""


class CaptureError(GuardrailError, RuntimeError):
    """Per-token capture failed during generation."""


class DataError(GuardrailError, ValueError):
    """A dataset file or record is malformed."""


class CalibrationError(GuardrailError, ValueError):
    """A calibration cannot be fitted (too few samples, constant scores, NaNs) or applied."""


class PolicyError(GuardrailError, ValueError):
    """A policy is invalid (schema, YAML) or cannot be applied."""


class RegistryError(InputError):
    """A registry refused a name: unknown, or already taken (pass ``replace=True`` to override).

    Every registry of the project (scores, adapters, relevancy methods, presets) raises it;
    a registry may raise a subclass that also derives from its domain's error (the score
    registry's also is a :class:`CalibrationError`)."""
