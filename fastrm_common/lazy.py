"""Lazy package exports (PEP 562): a package names its public objects up front and imports the
module behind each one on first use, so ``import guardrail`` or ``import fastrm_core`` costs no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, table: Mapping[str, str], namespace: dict[str, Any],
                 public: list[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose names ``table`` maps to their modules.

    Args:
        package: the package's name, for the error message.
        table: public name -> the module that defines it.
        namespace: the package's ``globals()``; a loaded name is cached there, so later lookups
            skip ``__getattr__``.
        public: the package's ``__all__``.

    Example (in a package's ``__init__.py``):
        >>> __getattr__, __dir__ = lazy_exports(__name__, {"Guard": "guardrail.guard"}, globals(), __all__)  # doctest: +SKIP
    """

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
