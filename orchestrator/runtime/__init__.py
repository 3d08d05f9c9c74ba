"""Part processes: the part runtime, the primary, liveness tracking, resource hosting."""

from orchestrator.runtime.part import Part
from orchestrator.runtime.primary import Primary

__all__ = ["Part", "Primary"]
