"""What a reload changes for one part: the resources to rebuild, and what their rebuild stops besides."""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.config.loader import LoadedConfig
from orchestrator.config.topology import ResourceRef, Topology


def affected_refs(old: LoadedConfig, new: LoadedConfig) -> set[ResourceRef]:
    """Every resource of the robot a reload rebuilds or removes: those whose configuration changed or that
    went away, and (transitively) those that depend on a changed one."""
    before = {ResourceRef(p.name, r.name): r for p in old.config.parts for r in p.resources}
    after = {ResourceRef(p.name, r.name): r for p in new.config.parts for r in p.resources}
    changed = {ref for ref, r in after.items() if before.get(ref) != r} | {ref for ref in before if ref not in after}
    return new.topology.affected_by(changed & set(after)) | changed


def changed_resources(old: LoadedConfig, new: LoadedConfig, part: str) -> set[str]:
    """Resources of ``part`` to rebuild: those whose configuration changed, and (transitively) those that
    depend on a changed one, on this part or another."""
    return {ref.name for ref in affected_refs(old, new) if ref.part == part}


def stopped_through(topology: Topology, part: str, rebuilt: set[str], affected: set[ResourceRef],
                    is_actuator: Callable[[ResourceRef], bool]) -> dict[str, list[str]]:
    """What rebuilding ``rebuilt`` (actuators of ``part``) stops without rebuilding it: an actuator's stop
    stops what it drives, so a base rebuilt because one motor changed also stops the other motor.
    ``{"PART/RESOURCE": ["PART/REBUILT", ...]}`` for every actuator reached through the dependencies of a
    rebuilt actuator that is not itself rebuilt."""
    out: dict[str, list[str]] = {}
    for name in sorted(rebuilt):
        origin = ResourceRef(part, name)
        seen: set[ResourceRef] = set()
        frontier = [d for d in topology.dependencies(origin)]
        while frontier and len(seen) < 10_000:
            dep = frontier.pop()
            if dep in seen or not is_actuator(dep):
                continue
            seen.add(dep)
            frontier.extend(topology.dependencies(dep))
            if dep not in affected:
                out.setdefault(str(dep), []).append(str(origin))
    return out
