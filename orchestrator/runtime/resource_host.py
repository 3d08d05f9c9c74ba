"""The resources of one part: built in dependency order, stopped actuators-first, closed in reverse.

A resource that fails to build is reported (``degraded`` with the reason) and retried in the
background; the rest of the part runs.  Every stop and close is bounded in time; a failure while
stopping one resource is recorded and never prevents stopping the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.config.models import PartConfig, RobotConfig
from orchestrator.config.topology import ResourceRef, Topology
from orchestrator.resources.base import Actuator, Resource
from orchestrator.resources.registry import Registry, default_registry

if TYPE_CHECKING:
    from orchestrator.rpc.client import RpcClient

log = logging.getLogger("orchestrator.part")


@dataclass
class ResourceState:
    name: str
    model: str
    status: str = "pending"  # pending | ready | degraded | closed
    reason: str | None = None
    attempts: int = 0
    waiting_for: str | None = None  # the part this degraded resource waits for, until it runs
    error: Exception | None = field(default=None, repr=False)  # what the plugin raised (for its tests)


@dataclass
class StopResult:
    stopped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class ResourceHost:
    def __init__(
        self,
        part: PartConfig,
        topology: Topology,
        registry: Registry | None = None,
        *,
        robot: RobotConfig | None = None,
        rpc: RpcClient | None = None,
        retry_s: float = 1.0,
    ) -> None:
        self.part = part
        self.robot = robot
        self.rpc = rpc
        self.topology = topology
        self.registry = registry or default_registry()
        self.retry_s = retry_s
        self.first_retry_s = 0.02  # the back-off of the retries starts here and doubles up to retry_s
        self.resources: dict[str, Resource] = {}
        self.on_built: Callable[[str, Resource], None] | None = None
        self.states: dict[str, ResourceState] = {
            r.name: ResourceState(r.name, r.model) for r in part.resources
        }
        self._configs = {r.name: r for r in part.resources}
        self._retry_task: asyncio.Task[None] | None = None
        self._closed = False
        # a part that a degraded resource waits for began to run: retry at once, not at the next back-off
        self._wake = asyncio.Event()
        if rpc is not None:
            rpc.on_state_change.append(self._on_part_state)

    def _on_part_state(self, part: str, state: Any) -> None:
        if getattr(state, "value", state) == "running" and any(
                s.status == "degraded" and s.waiting_for == part for s in self.states.values()):
            self._wake.set()

    @property
    def order(self) -> list[str]:
        return self.topology.resource_start_order(self.part.name)

    async def start(self) -> None:
        for name in self.order:
            await self._build(name)
        if any(s.status == "degraded" for s in self.states.values()):
            self._retry_task = asyncio.create_task(self._retry_loop(), name=f"part[{self.part.name}].resource-retry")

    async def _build(self, name: str) -> bool:
        cfg = self._configs[name]
        st = self.states[name]
        st.attempts += 1
        st.waiting_for = None
        deps: dict[str, Resource] = {}
        for written in cfg.depends_on:
            d = ResourceRef(written.partition("/")[0], written.partition("/")[2]) if "/" in written \
                else ResourceRef(self.part.name, written)
            if d.part != self.part.name:
                remote = await self._remote(d)
                if remote is None:
                    st.status, st.reason = "degraded", f"waiting for part {d.part} to run (needs {d})"
                    st.waiting_for = d.part
                    return False
                deps[written] = remote
                continue
            dep = self.resources.get(d.name)
            if dep is None:
                st.status, st.reason = "degraded", f"dependency {d.name} is not ready"
                return False
            deps[written] = dep
        try:
            res = self.registry.get(cfg.model).build(name, dict(cfg.attributes), deps)
            await asyncio.wait_for(res.start(), timeout=max(self.part.stop_deadline_s, 5.0))
        except Exception as exc:  # a plugin may raise anything: report, retry, keep the part running
            st.status, st.reason, st.error = "degraded", f"{type(exc).__name__}: {exc}", exc
            log.warning("part %s: resource %s failed to build: %s", self.part.name, name, st.reason)
            return False
        if self.on_built is not None:
            self.on_built(name, res)
        self.resources[name] = res
        st.status, st.reason, st.error = "ready", None, None
        return True

    async def _remote(self, ref: ResourceRef) -> Resource | None:
        """A proxy for a resource of another part, once that part runs; None (retried) until then."""
        if self.rpc is None or self.robot is None:
            return None
        from orchestrator.client.proxy import make_proxy
        from orchestrator.protocol.messages import PartStateName

        st = self.rpc.part_states.get(ref.part)
        if st is None or st[1] != PartStateName.RUNNING:
            return None
        model = next(r.model for r in self.robot.part(ref.part).resources if r.name == ref.name)
        return make_proxy(self.registry.get(model).kind, self.rpc, ref.part, ref.name)

    async def _retry_loop(self) -> None:
        """Retry degraded resources: quickly at first (a remote part coming up), then every ``retry_s``."""
        delay = self.first_retry_s
        while not self._closed and any(s.status == "degraded" for s in self.states.values()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            delay = min(self.retry_s, delay * 2)
            for name in self.order:
                if self.states[name].status == "degraded" and not self._closed:
                    await self._build(name)

    async def reload(
        self, part: PartConfig, topology: Topology, robot: RobotConfig, affected: set[str]
    ) -> tuple[list[str], list[str]]:
        """Rebuild ``affected`` resources (changed, or depending on a change), drop removed ones, build
        new ones; untouched resources keep running.  Returns (rebuilt or added, removed)."""
        new_names = [r.name for r in part.resources]
        added = {r.name for r in part.resources} - {r.name for r in self.part.resources}
        bound = max(0.05, part.stop_deadline_s / max(1, len(affected)))
        closing = [n for n in reversed(self.order) if n in affected or n not in new_names]
        removed = [n for n in closing if n not in new_names]
        for name in closing:
            res = self.resources.pop(name, None)
            if res is None:
                continue
            try:
                if isinstance(res, Actuator):
                    await asyncio.wait_for(res.stop(), bound)
                await asyncio.wait_for(res.close(), bound)
            except Exception as exc:  # includes timeouts: a stuck close must not block the reload
                log.warning("part %s: closing %s for reload: %s: %s", part.name, name, type(exc).__name__, exc)
        self.part, self.topology, self.robot = part, topology, robot
        self._configs = {r.name: r for r in part.resources}
        self.states = {
            r.name: (self.states[r.name] if r.name in self.resources else ResourceState(r.name, r.model))
            for r in part.resources
        }
        built = []
        for name in self.order:
            if name not in self.resources and (name in affected or name in added):
                await self._build(name)
                built.append(name)
        if any(s.status == "degraded" for s in self.states.values()) and (
            self._retry_task is None or self._retry_task.done()
        ):
            self._retry_task = asyncio.create_task(self._retry_loop(), name=f"part[{part.name}].resource-retry")
        return built, removed

    def actuators(self) -> list[tuple[str, Actuator]]:
        """Actuators in stop order (dependents first)."""
        out = []
        for name in reversed(self.order):
            r = self.resources.get(name)
            if isinstance(r, Actuator):
                out.append((name, r))
        return out

    async def stop_actuators(self, bound_s: float) -> StopResult:
        """``stop()`` on every actuator, dependents first, each bounded; never raises."""
        result = StopResult()
        for name, act in self.actuators():
            try:
                await asyncio.wait_for(act.stop(), timeout=bound_s)
                result.stopped.append(name)
            except TimeoutError:
                result.errors.append(f"{name}: stop() did not return within {bound_s:g} s")
            except Exception as exc:
                result.errors.append(f"{name}: stop() raised {type(exc).__name__}: {exc}")
        return result

    async def close(self, deadline_s: float) -> StopResult:
        """Stop actuators, then close every resource in reverse dependency order, all within ``deadline_s``."""
        self._closed = True
        if self._retry_task is not None:
            self._retry_task.cancel()
        end = time.monotonic() + deadline_s
        n = max(1, len(self.resources))
        result = await self.stop_actuators(max(0.05, deadline_s / (2 * n)))
        for name in reversed(self.order):
            res = self.resources.pop(name, None)
            if res is None:
                continue
            remaining = max(0.01, end - time.monotonic())
            try:
                await asyncio.wait_for(res.close(), timeout=remaining)
            except TimeoutError:
                result.errors.append(f"{name}: close() did not return in time")
            except Exception as exc:
                result.errors.append(f"{name}: close() raised {type(exc).__name__}: {exc}")
            self.states[name].status = "closed"
        return result

    def describe(self) -> list[dict[str, Any]]:
        """Each resource as the part lists it (retained): status, and its API and methods, so a client
        without the plugin installed knows what it can call."""
        from orchestrator.resources.describe import describe_methods

        out = []
        for s in self.states.values():
            entry: dict[str, Any] = {"name": s.name, "model": s.model, "status": s.status, "reason": s.reason}
            res = self.resources.get(s.name)
            cls = type(res) if res is not None else (
                self.registry.get(s.model).cls if s.model in self.registry else None)
            if cls is not None:
                entry["api"] = str(cls.API)
                entry["methods"] = describe_methods(cls, compact=True)
            out.append(entry)
        return out
