"""What a model or a resource offers, as data: its API, its plugin package, its attributes' JSON
Schema and its methods (actuating or not, arguments with types and defaults, the return type).

One description serves ``orchestrator models``, the ``methods`` a part lists with each resource
(``orchestrator resources --methods``), and ``orchestrator schema`` (every installed model's attributes
as one branch of a union keyed on ``model``).
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from typing import Any

from orchestrator.resources.base import Resource
from orchestrator.resources.registry import Registration, Registry, kind_of

__all__ = ["config_schema", "describe_methods", "describe_model"]


def _annotation(ann: Any) -> str:
    if ann is inspect.Parameter.empty:
        return "Any"
    if isinstance(ann, type):
        return ann.__name__
    return inspect.formatannotation(ann).replace("typing.", "")


_ROLE = re.compile(r":[a-z]+:`~?(?:[\w.]+\.)?([^`]+)`")  # :class:`~orchestrator.errors.UnknownMethod`
_LITERAL = re.compile(r"``([^`]+)``")


def _doc(obj: Any) -> str:
    """The first paragraph of a docstring, on one line, as plain text (``models`` and the web panel
    show it to people: ``:class:`~a.B``` reads ``B``, ````x```` reads ``x``)."""
    doc = (inspect.getdoc(obj) or "").strip()
    if not doc:
        return ""
    text = " ".join(doc.split("\n\n")[0].split())
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text))


@functools.cache
def describe_methods(cls: type[Resource], compact: bool = False) -> list[dict[str, Any]]:
    """Every method a caller may invoke on ``cls`` over the wire, sorted by name (``compact``: without
    the JSON Schema of each argument and the docstring, as a part lists them on the wire).  Cached per
    class: do not modify the result."""
    from orchestrator.rpc.methods import api_methods

    out = []
    for name, spec in sorted(api_methods(cls).items()):
        fn = getattr(cls, name)
        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            hints = {}
        try:
            props = spec.params.model_json_schema().get("properties", {})
        except Exception:  # an argument type pydantic cannot describe: names and annotations only
            props = {}
        args = []
        for pname, p in list(spec.signature.parameters.items())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            arg: dict[str, Any] = {"name": pname, "type": _annotation(hints.get(pname, p.annotation)),
                                   "required": p.default is p.empty}
            if p.default is not p.empty:
                arg["default"] = p.default if isinstance(p.default, (int, float, str, bool, type(None))) \
                    else repr(p.default)
            schema = {k: v for k, v in props.get(pname, {}).items() if k != "title"}
            if schema and not compact:
                arg["schema"] = schema
            args.append(arg)
        ret = hints.get("return", inspect.Signature.empty)
        entry = {"name": name, "actuating": spec.actuating, "args": args,
                 "returns": "None" if ret is type(None) else _annotation(ret)}
        if not compact:
            entry["doc"] = _doc(fn)
        out.append(entry)
    return out


def describe_model(reg: Registration) -> dict[str, Any]:
    kind = kind_of(reg.cls)
    schema = reg.attributes.model_json_schema()
    return {
        "model": str(reg.model),
        "api": str(reg.cls.API),
        "kind": kind.__name__,
        "class": f"{reg.cls.__module__}.{reg.cls.__qualname__}",
        "package": reg.package,
        "version": reg.version,
        "doc": _doc(reg.cls),
        "attributes": schema,
        "methods": describe_methods(reg.cls),
    }


def _inline(schema: dict[str, Any], defs: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Move a model schema's own ``$defs`` into the document's, renamed under ``prefix``: every ``$ref`` to
    one of them, wherever it is (the schema or the definitions themselves), is rewritten; nothing else is."""
    own = schema.pop("$defs", {})

    def renamed(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: renamed(v) for k, v in node.items()}
            ref = out.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[len("#/$defs/"):] in own:
                out["$ref"] = f"#/$defs/{prefix}{ref[len('#/$defs/'):]}"
            return out
        if isinstance(node, list):
            return [renamed(v) for v in node]
        return node

    for name, body in own.items():
        defs[f"{prefix}{name}"] = renamed(body)
    result: dict[str, Any] = renamed(schema)
    return result


def config_schema(registry: Registry) -> dict[str, Any]:
    """The configuration's JSON Schema with each installed model's attributes: a resource whose
    ``model`` is M has ``attributes`` checked (and completed by editors) against M's schema."""
    from orchestrator.config.models import RobotConfig

    doc = RobotConfig.model_json_schema()
    defs = doc.setdefault("$defs", {})
    resource = defs.get("ResourceConfig")
    if resource is None:  # the configuration's layout changed: nothing to attach to
        return doc
    branches = []
    models = []
    for reg in registry.registrations():
        key = str(reg.model)
        prefix = "attr_" + key.replace(":", "_") + "_"
        schema = _inline(reg.attributes.model_json_schema(), defs, prefix)
        schema.pop("title", None)
        defs[f"{prefix}Attributes"] = schema
        models.append(key)
        branches.append({
            "if": {"properties": {"model": {"const": key}}, "required": ["model"]},
            "then": {"properties": {"attributes": {"$ref": f"#/$defs/{prefix}Attributes"}}},
        })
    if branches:
        resource["allOf"] = branches
        model = resource.setdefault("properties", {}).setdefault("model", {})
        model["examples"] = models
        model["description"] = (model.get("description", "") + f" (installed: {', '.join(models)})").strip()
    return doc
