"""What a reload changes for one part: the resources to rebuild."""

from __future__ import annotations

from orchestrator.config.loader import LoadedConfig
from orchestrator.config.topology import ResourceRef


def changed_resources(old: LoadedConfig, new: LoadedConfig, part: str) -> set[str]:
    """Resources of ``part`` to rebuild: those whose configuration changed, and (transitively) those that
    depend on a changed one, on this part or another."""
    before = {ResourceRef(p.name, r.name): r for p in old.config.parts for r in p.resources}
    after = {ResourceRef(p.name, r.name): r for p in new.config.parts for r in p.resources}
    changed = {ref for ref, r in after.items() if before.get(ref) != r} | {ref for ref in before if ref not in after}
    affected = {ref.name for ref in new.topology.affected_by(changed & set(after)) if ref.part == part}
    affected |= {ref.name for ref in changed if ref.part == part}
    return affected
