"""One registry for everything the project looks up by name: scores, model adapters, relevancy
methods and model presets.

    >>> r = Registry("colour")
    >>> r.add("red", (255, 0, 0))
    >>> r.get("red")
    (255, 0, 0)
    >>> r.add("red", (200, 0, 0))
    Traceback (most recent call last):
    ...
    fastrm_common.errors.RegistryError: a colour named 'red' is already registered (pass replace=True to override it)
    >>> r.add("red", (200, 0, 0), replace=True); r.names()
    ['red']

The rule is the same in every registry: a name is refused when it is taken, unless
``replace=True``; an unknown name raises the registry's error, which lists the known ones.
Both are :class:`~fastrm_common.errors.RegistryError` (or a subclass the registry names).
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from fastrm_common.errors import RegistryError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one ``kind`` (e.g. "score"), in registration order.

    Args:
        kind: what an entry is, for error messages.
        error: the error raised for an unknown or taken name (a subclass of
            :class:`RegistryError`).
        loader: called once before the first lookup, to register built-ins lazily (e.g. entry
            points or modules that are expensive to import).
    """

    def __init__(self, kind: str, *, error: type[RegistryError] = RegistryError,
                 loader: Callable[[], None] | None = None) -> None:
        if not (isinstance(error, type) and issubclass(error, RegistryError)):
            raise TypeError("a registry's error must derive from RegistryError")
        self.kind = kind
        self.error = error
        self._entries: dict[str, T] = {}
        self._loader = loader

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None
            loader()

    def add(self, name: str, entry: T, *, replace: bool = False) -> None:
        """Register ``entry`` as ``name``; a taken name is refused unless ``replace``."""
        if not isinstance(name, str) or not name:
            raise self.error(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries and not replace:
            raise self.error(f"a {self.kind} named {name!r} is already registered (pass replace=True to override it)")
        self._entries[name] = entry

    def remove(self, name: str) -> T | None:
        """Unregister ``name`` (e.g. a test's temporary entry); the entry, or None if there was none."""
        self._load()
        return self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry ``name``; the registry's error, listing the known names, when there is none."""
        self._load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.kind} {name!r}; expected one of: {', '.join(self.names())}") from None

    def find(self, name: str) -> T | None:
        """The entry ``name``, or None."""
        self._load()
        return self._entries.get(name) if isinstance(name, str) else None

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def names(self) -> list[str]:
        """The registered names, sorted."""
        self._load()
        return sorted(self._entries)

    def values(self) -> list[T]:
        """The entries, in registration order."""
        self._load()
        return list(self._entries.values())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)
