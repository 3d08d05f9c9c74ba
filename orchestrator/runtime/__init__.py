"""Part processes: the part runtime, the primary, liveness tracking, resource hosting.

``Part`` and ``Primary`` are imported when first asked for: a sub-part's process never loads the
primary's machinery (its metrics endpoint and the Prometheus client, its supervision)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.runtime.part import Part
    from orchestrator.runtime.primary import Primary

__all__ = ["Part", "Primary"]


def __getattr__(name: str) -> Any:
    if name == "Part":
        from orchestrator.runtime.part import Part

        return Part
    if name == "Primary":
        from orchestrator.runtime.primary import Primary

        return Primary
    raise AttributeError(f"module 'orchestrator.runtime' has no attribute {name!r}")
