"""The topology graph: parts as a tree, resources as a dependency DAG.

Lifecycle code asks this object ("who is my parent", "in which order do I start", "how long may
this subtree take to stop"); it never re-derives the answer itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from orchestrator.config.models import RobotConfig

# Extra time a parent allows per level for the stop/stopped messages to cross the broker.
MESSAGE_MARGIN_S = 0.25

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration: where (a path inside the file) and what."""

    path: Path
    message: str


@dataclass(frozen=True)
class ResourceRef:
    part: str
    name: str

    def __str__(self) -> str:
        return f"{self.part}/{self.name}"


def parse_dependency(part: str, dep: str) -> ResourceRef:
    """``"left"`` is a resource of the same part; ``"base/left"`` one of part ``base``."""
    if "/" in dep:
        p, _, r = dep.partition("/")
        return ResourceRef(p, r)
    return ResourceRef(part, dep)


@dataclass
class Topology:
    primary: str
    parent_of: dict[str, str | None]
    children_of: dict[str, list[str]]
    resources_of: dict[str, list[str]]
    deps_of: dict[ResourceRef, list[ResourceRef]]
    stop_deadline_of: dict[str, float]
    _start_parts: list[str] = field(default_factory=list)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def build(cls, config: RobotConfig) -> Topology:
        """Build the graph; raises :class:`TopologyError` listing every problem found."""
        problems = check(config)
        if problems:
            raise TopologyError(problems)
        parent_of = {p.name: p.parent for p in config.parts}
        children_of: dict[str, list[str]] = {p.name: [] for p in config.parts}
        for p in config.parts:
            if p.parent is not None:
                children_of[p.parent].append(p.name)
        deps: dict[ResourceRef, list[ResourceRef]] = {}
        for p in config.parts:
            for r in p.resources:
                deps[ResourceRef(p.name, r.name)] = [parse_dependency(p.name, d) for d in r.depends_on]
        primary = next(p.name for p in config.parts if p.parent is None)
        topo = cls(
            primary=primary,
            parent_of=parent_of,
            children_of=children_of,
            resources_of={p.name: [r.name for r in p.resources] for p in config.parts},
            deps_of=deps,
            stop_deadline_of={p.name: p.stop_deadline_s for p in config.parts},
        )
        topo._start_parts = topo._bfs()
        return topo

    def _bfs(self) -> list[str]:
        order = [self.primary]
        i = 0
        while i < len(order):
            order.extend(self.children_of[order[i]])
            i += 1
        return order

    # -- parts ----------------------------------------------------------------------------------
    @property
    def parts(self) -> list[str]:
        return list(self._start_parts)

    def parent(self, part: str) -> str | None:
        return self.parent_of[part]

    def children(self, part: str) -> list[str]:
        return list(self.children_of[part])

    def ancestors(self, part: str) -> list[str]:
        out = []
        p = self.parent_of[part]
        while p is not None:
            out.append(p)
            p = self.parent_of[p]
        return out

    def descendants(self, part: str) -> list[str]:
        out: list[str] = []
        stack = list(reversed(self.children_of[part]))
        while stack:
            c = stack.pop()
            out.append(c)
            stack.extend(reversed(self.children_of[c]))
        return out

    def depth(self, part: str) -> int:
        return len(self.ancestors(part))

    def start_order(self) -> list[str]:
        """Parents before children (breadth first, siblings in config order)."""
        return list(self._start_parts)

    def stop_order(self) -> list[str]:
        """The exact reverse of :meth:`start_order`: every part after all of its descendants."""
        return list(reversed(self._start_parts))

    def stop_budget(self, part: str) -> float:
        """Longest time the subtree under (and including) ``part`` may take to stop once asked.

        The part's own ``stop_deadline_s`` plus the slowest child's budget plus a message margin.
        """
        kids = self.children_of[part]
        below = max((self.stop_budget(c) for c in kids), default=0.0)
        return self.stop_deadline_of[part] + below + (MESSAGE_MARGIN_S if kids else 0.0)

    def shutdown_bound(self) -> float:
        """Upper bound on the whole bottom-up shutdown of the robot."""
        return self.stop_budget(self.primary) + MESSAGE_MARGIN_S

    # -- resources ------------------------------------------------------------------------------
    def resources(self, part: str) -> list[str]:
        return list(self.resources_of[part])

    def dependencies(self, ref: ResourceRef) -> list[ResourceRef]:
        return list(self.deps_of[ref])

    def dependents(self, ref: ResourceRef) -> list[ResourceRef]:
        return [r for r, ds in self.deps_of.items() if ref in ds]

    def resource_start_order(self, part: str) -> list[str]:
        """Local dependencies before dependents (remote ones are awaited, not ordered)."""
        names = self.resources_of[part]
        local = {n: [d.name for d in self.deps_of[ResourceRef(part, n)] if d.part == part] for n in names}
        return _toposort(names, local)

    def resource_stop_order(self, part: str) -> list[str]:
        return list(reversed(self.resource_start_order(part)))

    def affected_by(self, changed: Iterable[ResourceRef]) -> set[ResourceRef]:
        """The changed resources and, transitively, everything that depends on them."""
        out = set(changed)
        frontier = list(out)
        while frontier:
            r = frontier.pop()
            for d in self.dependents(r):
                if d not in out:
                    out.add(d)
                    frontier.append(d)
        return out


class TopologyError(Exception):
    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = list(problems)


def _toposort(names: Sequence[str], deps: dict[str, list[str]]) -> list[str]:
    """Stable topological sort (config order among independent nodes). Assumes no cycle."""
    done: set[str] = set()
    out: list[str] = []

    def visit(n: str) -> None:
        if n in done:
            return
        done.add(n)
        for d in deps.get(n, []):
            visit(d)
        out.append(n)

    for n in names:
        visit(n)
    return out


def check(config: RobotConfig) -> list[Problem]:
    """Every semantic problem in ``config`` (the pydantic models already checked types and ranges)."""
    problems: list[Problem] = []
    index: dict[str, int] = {}
    for i, p in enumerate(config.parts):
        if p.name in index:
            problems.append(
                Problem(("parts", i, "name"), f"duplicate part name {p.name!r} (first at parts[{index[p.name]}])")
            )
        else:
            index[p.name] = i
    primaries = [i for i, p in enumerate(config.parts) if p.parent is None]
    if not primaries:
        problems.append(Problem(("parts",), "no primary part: exactly one part must have no 'parent'"))
    elif len(primaries) > 1:
        names = ", ".join(config.parts[i].name for i in primaries)
        problems.append(
            Problem(
                ("parts", primaries[1], "parent"),
                f"two primaries ({names}): exactly one part may have no 'parent'",
            )
        )
    for i, p in enumerate(config.parts):
        if p.parent is not None and p.parent not in index:
            problems.append(
                Problem(("parts", i, "parent"), f"unknown parent {p.parent!r}: expected one of {sorted(index)}")
            )
        if p.parent == p.name:
            problems.append(Problem(("parts", i, "parent"), f"part {p.name!r} is its own parent"))
    # cycles in the parent relation (only meaningful once parents are known)
    parent = {p.name: p.parent for p in config.parts}
    reported: set[str] = set()
    for i, p in enumerate(config.parts):
        seen: list[str] = []
        cur: str | None = p.name
        while cur is not None and cur in parent and cur not in seen:
            seen.append(cur)
            cur = parent[cur]
        if cur is not None and cur in seen:
            cycle = seen[seen.index(cur) :]
            key = min(cycle)
            if key not in reported and len(cycle) > 1:
                reported.add(key)
                problems.append(
                    Problem(("parts", i, "parent"), "parent cycle: " + " -> ".join([*cycle, cur]))
                )
    # resources: duplicates, dependencies, cycles
    all_refs: set[ResourceRef] = set()
    for i, p in enumerate(config.parts):
        seen_r: dict[str, int] = {}
        for j, r in enumerate(p.resources):
            if r.name in seen_r:
                problems.append(
                    Problem(
                        ("parts", i, "resources", j, "name"),
                        f"duplicate resource name {r.name!r} in part {p.name!r}",
                    )
                )
            seen_r[r.name] = j
            all_refs.add(ResourceRef(p.name, r.name))
    graph: dict[ResourceRef, list[ResourceRef]] = {}
    where: dict[ResourceRef, Path] = {}
    for i, p in enumerate(config.parts):
        for j, r in enumerate(p.resources):
            ref = ResourceRef(p.name, r.name)
            where[ref] = ("parts", i, "resources", j, "depends_on")
            graph[ref] = []
            for k, d in enumerate(r.depends_on):
                dep = parse_dependency(p.name, d)
                if dep not in all_refs:
                    problems.append(
                        Problem(
                            ("parts", i, "resources", j, "depends_on", k),
                            f"resource {p.name}/{r.name} depends on {d!r}, which no part hosts",
                        )
                    )
                elif dep == ref:
                    problems.append(
                        Problem(("parts", i, "resources", j, "depends_on", k), f"resource {ref} depends on itself")
                    )
                else:
                    graph[ref].append(dep)
    dep_cycle = _find_cycle(graph)
    if dep_cycle:
        problems.append(Problem(where[dep_cycle[0]], "dependency cycle: " + " -> ".join(str(c) for c in dep_cycle)))
    return problems


def _find_cycle(graph: dict[ResourceRef, list[ResourceRef]]) -> list[ResourceRef] | None:
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    stack: list[ResourceRef] = []

    def dfs(n: ResourceRef) -> list[ResourceRef] | None:
        color[n] = grey
        stack.append(n)
        for d in graph.get(n, []):
            if color.get(d, black) == grey:
                return [*stack[stack.index(d) :], d]
            if color.get(d) == white:
                found = dfs(d)
                if found:
                    return found
        stack.pop()
        color[n] = black
        return None

    for n in graph:
        if color[n] == white:
            found = dfs(n)
            if found:
                return found
    return None
