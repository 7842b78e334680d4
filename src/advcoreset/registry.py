"""A tiny name -> factory registry (one per part: models, objectives, selectors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories so a config can name a part and nothing else changes."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}
        self._about: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **about: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a factory under ``name``; ``about``: what the part says of itself beyond
        building (e.g. an objective's ``threat_model``), read back with :meth:`about`."""
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = fn
            self._about[name] = dict(about)
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; available: {self.names()}")
        return self._items[name]

    def about(self, name: str) -> dict[str, Any]:
        """What ``name`` was registered with beyond its factory (empty if nothing)."""
        self.get(name)
        return self._about[name]

    def names(self) -> list[str]:
        return sorted(self._items)
