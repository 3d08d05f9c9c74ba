"""Ordering invariants of the topology graph, on random trees (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.config.models import PartConfig, ResourceConfig, RobotConfig
from orchestrator.config.topology import ResourceRef, Topology


@st.composite
def robots(draw: st.DrawFn) -> RobotConfig:
    n = draw(st.integers(min_value=1, max_value=40))
    parents = [None] + [draw(st.integers(min_value=0, max_value=i - 1)) for i in range(1, n)]
    order = draw(st.permutations(range(n)))  # config order is not tree order
    parts = []
    for i in order:
        k = draw(st.integers(min_value=0, max_value=5))
        res = []
        for j in range(k):
            deps = sorted(draw(st.sets(st.integers(min_value=0, max_value=j - 1), max_size=3))) if j else []
            res.append(ResourceConfig(name=f"r{j}", model="orc:sim:sensor", depends_on=[f"r{d}" for d in deps]))
        draw(st.randoms()).shuffle(res)
        p = parents[i]
        parts.append(PartConfig(name=f"p{i}", parent=None if p is None else f"p{p}", resources=res,
                                stop_deadline_s=draw(st.floats(min_value=0.1, max_value=5))))
    return RobotConfig(robot="r", parts=parts)


@settings(max_examples=150, deadline=None)
@given(robots())
def test_start_and_stop_orders(cfg: RobotConfig) -> None:
    topo = Topology.build(cfg)
    start = topo.start_order()
    stop = topo.stop_order()
    assert sorted(start) == sorted(p.name for p in cfg.parts)
    assert stop == list(reversed(start))
    pos_start = {p: i for i, p in enumerate(start)}
    pos_stop = {p: i for i, p in enumerate(stop)}
    for p in start:
        parent = topo.parent(p)
        if parent is not None:
            assert pos_start[parent] < pos_start[p]  # parents start first
        for d in topo.descendants(p):
            assert pos_stop[d] < pos_stop[p]  # no part stops before all its descendants
    for p in start:
        order = topo.resource_start_order(p)
        assert sorted(order) == sorted(topo.resources(p))
        pos = {r: i for i, r in enumerate(order)}
        for r in order:
            for dep in topo.dependencies(ResourceRef(p, r)):
                assert pos[dep.name] < pos[r]  # dependencies first
        assert topo.resource_stop_order(p) == list(reversed(order))


@settings(max_examples=100, deadline=None)
@given(robots())
def test_stop_budget_covers_every_subtree(cfg: RobotConfig) -> None:
    topo = Topology.build(cfg)
    for p in topo.parts:
        for c in topo.children(p):
            assert topo.stop_budget(p) > topo.stop_budget(c)
    assert topo.shutdown_bound() >= topo.stop_budget(topo.primary)


@settings(max_examples=50, deadline=None)
@given(robots())
def test_parent_children_descendants_agree(cfg: RobotConfig) -> None:
    topo = Topology.build(cfg)
    for p in topo.parts:
        for c in topo.children(p):
            assert topo.parent(c) == p
        assert set(topo.descendants(p)) == {q for q in topo.parts if p in topo.ancestors(q)}


def test_affected_by_follows_dependents() -> None:
    cfg = RobotConfig(robot="r", parts=[
        PartConfig(name="a", resources=[
            ResourceConfig(name="m1", model="orc:sim:motor"),
            ResourceConfig(name="m2", model="orc:sim:motor"),
            ResourceConfig(name="base", model="orc:sim:motor", depends_on=["m1", "m2"]),
        ]),
        PartConfig(name="b", parent="a", resources=[
            ResourceConfig(name="nav", model="orc:sim:motor", depends_on=["a/base"]),
        ]),
    ])
    topo = Topology.build(cfg)
    got = topo.affected_by([ResourceRef("a", "m1")])
    assert got == {ResourceRef("a", "m1"), ResourceRef("a", "base"), ResourceRef("b", "nav")}
