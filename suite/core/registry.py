"""A small name -> object registry, one per kind of plug-in (backends, presets, samplers)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from suite.core.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries; an unknown name raises a UserError that lists the valid ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(self.names()) or "(none)"
            raise UserError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]

    def values(self) -> list[T]:
        return [self._entries[name] for name in self.names()]


def known(registry: Registry, name: str) -> str:
    """``name`` if ``registry`` has it; else a ValueError that lists the valid names (for settings validators)."""
    if name not in registry:
        raise ValueError(f"unknown {registry.kind} {name!r}; valid: {', '.join(registry.names()) or '(none)'}")
    return name
