"""Which methods of a resource can be called over the wire, and the pydantic model of their arguments."""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from orchestrator.errors import InvalidArgument
from orchestrator.resources.base import LIFECYCLE, Resource, is_actuating


@dataclass(frozen=True)
class MethodSpec:
    name: str
    actuating: bool
    signature: inspect.Signature
    params: type[BaseModel]
    returns: TypeAdapter[Any] | None

    def check_local(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Check the arguments of a call made inside a part (a base driving its motors) like one from the
        wire: wrong types and non-finite numbers are an :class:`InvalidArgument`, not a driver's problem."""
        from orchestrator.protocol.codec import validation_summary

        try:
            bound = self.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise InvalidArgument(f"{self.name}: {exc}") from None
        values = dict(list(bound.arguments.items())[1:])
        try:
            self.params.model_validate(values)
        except ValidationError as exc:
            raise InvalidArgument(f"{self.name}: {validation_summary(exc)}") from None


def _is_actuating(cls: type, name: str) -> bool:
    return any(is_actuating(klass.__dict__.get(name)) for klass in cls.__mro__)


@functools.cache
def api_methods(cls: type[Resource]) -> dict[str, MethodSpec]:
    """Public coroutine methods of ``cls`` (lifecycle hooks excluded), keyed by name."""
    out: dict[str, MethodSpec] = {}
    for name, fn in inspect.getmembers(cls, inspect.iscoroutinefunction):
        if name.startswith("_") or name in LIFECYCLE:
            continue
        sig = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            hints = {}
        fields: dict[str, Any] = {}
        for pname, p in list(sig.parameters.items())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            ann = hints.get(pname, Any)
            fields[pname] = (ann, ... if p.default is p.empty else p.default)
        model = create_model(
            f"{cls.__name__}.{name}",
            __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False),
            **fields,
        )
        ret = hints.get("return")
        adapter = TypeAdapter(ret) if ret not in (None, type(None), Any) else None
        out[name] = MethodSpec(name, _is_actuating(cls, name), sig, model, adapter)
    return out
