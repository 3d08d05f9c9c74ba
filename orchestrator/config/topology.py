"""The topology graph: parts as a tree, resources as a dependency DAG.

Lifecycle code asks this object ("who is my parent", "in which order do I start", "how long may
this subtree take to stop"); it never re-derives the answer itself.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from orchestrator.config.models import RobotConfig

# Extra time a parent allows per level for the stop/stopped messages to cross the broker.
MESSAGE_MARGIN_S = 0.25

# Bounds on the graphs a configuration may describe: a robot is a few levels deep, and every algorithm
# below is iterative, so a hostile file costs a clear problem, never a recursion or quadratic time.
MAX_TREE_DEPTH = 32  # levels of parts below the primary
MAX_DEPENDENCY_DEPTH = 64  # resources in one dependency chain
SHOWN = 8  # names quoted in one message (cycles, expected values)

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
    _budgets: dict[str, float] = field(default_factory=dict)

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
        if not self._budgets:  # every part's, children before parents (no recursion)
            for p in reversed(self._start_parts):
                kids = self.children_of[p]
                below = max((self._budgets[c] for c in kids), default=0.0)
                self._budgets[p] = self.stop_deadline_of[p] + below + (MESSAGE_MARGIN_S if kids else 0.0)
        return self._budgets[part]

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


N = TypeVar("N", bound=Hashable)


def _toposort(names: Sequence[N], deps: Mapping[N, Sequence[N]]) -> list[N]:
    """Stable topological sort (config order among independent nodes). Assumes no cycle."""
    done: set[N] = set()
    out: list[N] = []
    for root in names:
        if root in done:
            continue
        done.add(root)
        stack = [(root, iter(deps.get(root, [])))]  # depth first, explicitly: no recursion limit
        while stack:
            node, pending = stack[-1]
            nxt = next((d for d in pending if d not in done), None)
            if nxt is None:
                stack.pop()
                out.append(node)
            else:
                done.add(nxt)
                stack.append((nxt, iter(deps.get(nxt, []))))
    return out


def shown(names: Sequence[object], limit: int = SHOWN) -> str:
    """``'a', 'b', 'c'`` for a message: at most ``limit`` names, each bounded, and how many were left out."""
    bits = [repr(str(n)[:64]) for n in names[:limit]]
    more = len(names) - limit
    return ", ".join(bits) + (f", ... ({more} more)" if more > 0 else "")


def _close(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a close name (difflib), else ``""``."""
    close = difflib.get_close_matches(word[:100], sorted(set(choices))[:10_000], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _chain(nodes: Sequence[object]) -> str:
    """``a -> b -> a`` for a cycle, bounded: the first and last few names of a long one."""
    names = [str(n)[:64] for n in nodes]
    if len(names) > 2 * SHOWN:
        names = [*names[:SHOWN], f"... ({len(names) - 2 * SHOWN} more)", *names[-SHOWN:]]
    return " -> ".join(names)


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
            problems.append(Problem(("parts", i, "parent"),
                                    f"unknown parent {p.parent[:64]!r}{_close(p.parent, index)}: expected one of "
                                    f"[{shown(sorted(index))}]"))
        if p.parent == p.name:
            problems.append(Problem(("parts", i, "parent"), f"part {p.name!r} is its own parent"))
    # cycles in the parent relation (only meaningful once parents are known): each part is walked up once
    parent = {p.name: p.parent for p in config.parts}
    state: dict[str, int] = {}  # 1: on the walk being made, 2: leads to the primary or to a known cycle
    first_at = {p.name: i for i, p in reversed(list(enumerate(config.parts)))}
    for i, p in enumerate(config.parts):
        walk: list[str] = []
        cur: str | None = p.name
        while cur is not None and cur in parent and state.get(cur) is None:
            state[cur] = 1
            walk.append(cur)
            cur = parent[cur]
        if cur is not None and state.get(cur) == 1:
            cycle = walk[walk.index(cur):]
            if len(cycle) > 1:
                problems.append(Problem(("parts", i, "parent"), "parent cycle: " + _chain([*cycle, cur])))
        for w in walk:
            state[w] = 2
    if not problems:  # a tree: how deep is it
        depth: dict[str, int] = {}
        for p in config.parts:
            walk = []
            cur = p.name
            while cur is not None and cur not in depth:
                walk.append(cur)
                cur = parent[cur]
            level = depth[cur] if cur is not None else -1
            for w in reversed(walk):
                level += 1
                depth[w] = level
        deepest = max(depth, key=lambda n: depth[n])
        if depth[deepest] > MAX_TREE_DEPTH:
            problems.append(Problem(("parts", first_at[deepest], "parent"),
                                    f"part {deepest!r} is {depth[deepest]} levels below the primary: a robot "
                                    f"may be at most {MAX_TREE_DEPTH} levels deep"))
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
                            f"resource {p.name}/{r.name} depends on {d!r}, which no part hosts"
                            + _close(d, [x.name if x.part == p.name else str(x) for x in all_refs]
                                     + [str(x) for x in all_refs]),
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
        problems.append(Problem(where[dep_cycle[0]], "dependency cycle: " + _chain(dep_cycle)))
    else:
        longest = _longest_chain(graph)
        if longest is not None and longest[1] > MAX_DEPENDENCY_DEPTH:
            ref, n = longest
            problems.append(Problem(where[ref], f"resource {ref} starts a dependency chain of {n} resources: at "
                                                f"most {MAX_DEPENDENCY_DEPTH}"))
    return problems


def _longest_chain(graph: dict[ResourceRef, list[ResourceRef]]) -> tuple[ResourceRef, int] | None:
    """The resource that starts the longest dependency chain, and its length (the graph has no cycle)."""
    length: dict[ResourceRef, int] = {}
    for n in _toposort(list(graph), graph):  # dependencies come first
        length[n] = 1 + max((length[d] for d in graph[n]), default=0)
    if not length:
        return None
    top = max(length, key=lambda n: length[n])
    return top, length[top]


def _find_cycle(graph: dict[ResourceRef, list[ResourceRef]]) -> list[ResourceRef] | None:
    """A dependency cycle (its nodes, the first repeated at the end), or None.  Iterative depth-first."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    for root in graph:
        if color[root] != white:
            continue
        color[root] = grey
        path = [root]
        stack = [iter(graph.get(root, []))]
        while stack:
            d = next(stack[-1], None)
            if d is None:
                stack.pop()
                color[path.pop()] = black
            elif color.get(d, black) == grey:
                return [*path[path.index(d):], d]
            elif color.get(d) == white:
                color[d] = grey
                path.append(d)
                stack.append(iter(graph.get(d, [])))
    return None
