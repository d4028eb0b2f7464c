"""A strict, case-insensitive name -> builder registry shared by model.py and loss.py.

from maskcls.registry import Registry
MODELS = Registry("model")

@MODELS.register("ResNet18")
def resnet18(**kwargs): ...

MODELS.get("resnet18")      # -> the builder
MODELS.names()              # -> ["ResNet18", ...] in registration order
"""

from __future__ import annotations

from collections.abc import Callable, Iterator


class UnknownNameError(ValueError):
    """Raised for a name that is not registered; the message lists every valid name."""


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, tuple[str, Callable]] = {}  # lower-case key -> (display name, fn)
        self._aliases: dict[str, str] = {}  # lower-case alias -> lower-case key

    def register(self, name: str, *aliases: str) -> Callable[[Callable], Callable]:
        """Decorator registering ``fn`` under ``name`` (and ``aliases``); duplicates raise."""

        def decorator(fn: Callable) -> Callable:
            for n in (name, *aliases):
                if n.lower() in self._entries or n.lower() in self._aliases:
                    raise ValueError(f"{self.kind} {n!r} is already registered")
            self._entries[name.lower()] = (name, fn)
            for alias in aliases:
                self._aliases[alias.lower()] = name.lower()
            return fn

        return decorator

    def _key(self, name: str) -> str | None:
        key = name.lower()
        key = self._aliases.get(key, key)
        return key if key in self._entries else None

    def __contains__(self, name: str) -> bool:
        return self._key(name) is not None

    def get(self, name: str) -> Callable:
        key = self._key(name)
        if key is None:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}")
        return self._entries[key][1]

    def canonical(self, name: str) -> str:
        """The display name a (case-insensitive) name or alias resolves to."""
        self.get(name)
        return self._entries[self._key(name)][0]

    def names(self, with_aliases: bool = False) -> list[str]:
        names = [display for display, _ in self._entries.values()]
        if with_aliases:
            names += sorted(self._aliases)
        return names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
