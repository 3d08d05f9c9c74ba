"""Remote proxies: a subclass of the resource's own abstract base whose methods are calls."""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from orchestrator.resources.base import Resource
from orchestrator.rpc.client import RpcClient
from orchestrator.rpc.methods import MethodSpec, api_methods

R = TypeVar("R", bound=Resource)


class RemoteResource(Resource):
    """Mixin state of every proxy: where the resource lives and how to reach it."""

    _rpc: RpcClient
    part: str
    timeout: float | None

    async def call(self, method: str, **args: Any) -> Any:
        """Call any method by name (plugins may add methods the abstract base does not declare)."""
        return await self._rpc.call(self.part, self.name, method, args, timeout=self.timeout)


def _remote_method(spec: MethodSpec) -> Any:
    async def method(self: RemoteResource, *args: Any, **kwargs: Any) -> Any:
        bound = spec.signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        call_args = {k: v for k, v in list(bound.arguments.items())[1:]}
        result = await self._rpc.call(self.part, self.name, spec.name, call_args, timeout=self.timeout)
        return spec.returns.validate_python(result) if spec.returns is not None else result

    method.__name__ = spec.name
    method.__qualname__ = f"Remote.{spec.name}"
    if spec.actuating:
        from orchestrator.resources.base import actuating

        actuating(method)
    return method


@functools.cache
def proxy_class(base: type[R]) -> type[R]:
    """``RemoteMotor`` for ``Motor``: every API method of the base becomes a call."""
    ns: dict[str, Any] = {name: _remote_method(spec) for name, spec in api_methods(base).items()}
    ns["__module__"] = __name__  # else "abc": ABCMeta.__new__ is the frame type() would take it from
    cls: type[R] = type(f"Remote{base.__name__}", (RemoteResource, base), ns)
    return cls


def make_proxy(base: type[R], rpc: RpcClient, part: str, name: str, timeout: float | None = None) -> R:
    cls = proxy_class(base)
    obj: Any = object.__new__(cls)
    Resource.__init__(obj, name)
    obj._rpc = rpc
    obj.part = part
    obj.timeout = timeout
    result: R = obj
    return result



class ListedResource(RemoteResource):
    """A proxy built from a part's listing of the resource's methods, for an API this process has no
    class of: ``await lamp.switch_on()`` or ``await lamp.call("switch_on")``; positional arguments
    are matched to the listed argument names.  It is an :class:`Actuator` when the resource listed
    ``stop`` and ``is_moving`` (so :func:`moves.complete` and ``isinstance`` work)."""

    api: str
    methods: dict[str, list[str]]  # method -> argument names, in order


def _listed_method(method: str, names: list[str]) -> Any:
    async def call(self: ListedResource, *args: Any, **kwargs: Any) -> Any:
        if len(args) > len(names):
            raise TypeError(f"{method}() takes {len(names)} arguments, got {len(args)}")
        return await self.call(method, **dict(zip(names, args, strict=False)), **kwargs)

    call.__name__ = method
    call.__qualname__ = f"Listed.{method}"
    return call


def listed_proxy(methods: list[dict[str, Any]], rpc: RpcClient, part: str, name: str, timeout: float | None,
                 api: str) -> ListedResource:
    from orchestrator.protocol.topics import valid_level
    from orchestrator.resources.base import Actuator

    listed: dict[str, list[str]] = {}
    for m in methods[:500]:
        if isinstance(m, dict) and isinstance(m.get("name"), str) and valid_level(m["name"]) \
                and not m["name"].startswith("_") and m["name"] not in {"call", "name", "part", "timeout"}:
            listed[m["name"]] = [str(a.get("name")) for a in m.get("args", []) if isinstance(a, dict)]
    bases: tuple[type, ...] = (ListedResource, Actuator) if {"stop", "is_moving"} <= set(listed) \
        else (ListedResource,)
    ns: dict[str, Any] = {m: _listed_method(m, names) for m, names in listed.items()}
    cls = type(f"Listed_{api.replace(':', '_') or 'resource'}", bases, ns)
    cls.__abstractmethods__ = frozenset()  # type: ignore[attr-defined]  # every method is a call
    obj: Any = object.__new__(cls)
    Resource.__init__(obj, name)
    obj._rpc = rpc
    obj.part = part
    obj.timeout = timeout
    obj.api = api
    obj.methods = listed
    result: ListedResource = obj
    return result
