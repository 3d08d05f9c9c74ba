"""Typed identities of resources: the API (what a resource is) and the model (which implementation)."""

from __future__ import annotations

from dataclasses import dataclass


def _triplet(kind: str, text: str) -> tuple[str, str, str]:
    bits = text.split(":")
    if len(bits) != 3 or not all(bits):
        raise ValueError(f"{text!r} is not a {kind} triplet: expected three non-empty parts a:b:c")
    return bits[0], bits[1], bits[2]


@dataclass(frozen=True, slots=True)
class API:
    """``namespace:type:subtype``, e.g. ``orc:component:motor``."""

    namespace: str
    type: str
    subtype: str

    @classmethod
    def parse(cls, text: str) -> API:
        return cls(*_triplet("API", text))

    def __str__(self) -> str:
        return f"{self.namespace}:{self.type}:{self.subtype}"


@dataclass(frozen=True, slots=True)
class Model:
    """``namespace:family:name``, e.g. ``orc:sim:motor``."""

    namespace: str
    family: str
    name: str

    @classmethod
    def parse(cls, text: str) -> Model:
        return cls(*_triplet("model", text))

    def __str__(self) -> str:
        return f"{self.namespace}:{self.family}:{self.name}"
