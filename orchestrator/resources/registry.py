"""The model registry, fed by Python entry points of plugin packages.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."orchestrator.models"]
    sim = "orchestrator_sim:register"

where ``register(registry)`` calls :meth:`Registry.register` for each model it provides.  Entry
points are loaded at one defined moment (:func:`default_registry` on first use: config validation
or part start), never by import side effects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator.config.models import RobotConfig
from orchestrator.config.topology import Problem
from orchestrator.errors import UnknownModel
from orchestrator.resources.base import KINDS, Resource
from orchestrator.resources.types import Model

log = logging.getLogger("orchestrator.resources")

ENTRY_POINT_GROUP = "orchestrator.models"

__all__ = ["ENTRY_POINT_GROUP", "Registration", "Registry", "check_models", "default_registry"]


class NoAttributes(BaseModel):
    model_config = ConfigDict(extra="forbid")


# factory(name, validated attributes, dependencies keyed as written in depends_on) -> resource
Factory = Callable[[str, Any, dict[str, Resource]], Resource]
# dependencies(validated attributes) -> resource names ("name" or "part/name") the model needs
Dependencies = Callable[[Any], list[str]]


def kind_of(cls: type[Resource]) -> type[Resource]:
    """The abstract base (Motor, Base, Sensor, ...) a class implements; remote proxies subclass it."""
    for klass in cls.__mro__:
        if klass in KINDS.values():
            return klass
    return Resource


@dataclass(frozen=True)
class Registration:
    model: Model
    cls: type[Resource]
    attributes: type[BaseModel] = NoAttributes
    factory: Factory | None = None
    dependencies: Dependencies | None = None
    plugin: str = ""
    package: str = ""  # the distribution whose entry point registered it, and its version
    version: str = ""

    @property
    def kind(self) -> type[Resource]:
        return kind_of(self.cls)

    def validate(self, attributes: dict[str, Any]) -> BaseModel:
        return self.attributes.model_validate(attributes)

    def implicit_dependencies(self, attributes: dict[str, Any]) -> list[str]:
        if self.dependencies is None:
            return []
        return list(self.dependencies(self.validate(attributes)))

    def build(self, name: str, attributes: dict[str, Any], deps: dict[str, Resource]) -> Resource:
        attrs = self.validate(attributes)
        if self.factory is not None:
            return self.factory(name, attrs, deps)
        return self.cls(name, attrs, deps)  # type: ignore[call-arg]


class Registry:
    def __init__(self) -> None:
        self._models: dict[str, Registration] = {}
        self.load_errors: list[str] = []
        self._loading = ""
        self._loading_dist: tuple[str, str] = ("", "")

    def register(
        self,
        model: str | Model,
        cls: type[Resource],
        attributes: type[BaseModel] = NoAttributes,
        *,
        factory: Factory | None = None,
        dependencies: Dependencies | None = None,
    ) -> None:
        """Register ``cls`` for ``model``; refuses a model registered twice."""
        m = model if isinstance(model, Model) else Model.parse(model)
        key = str(m)
        if key in self._models:
            prev = self._models[key].plugin or "another plugin"
            raise ValueError(f"model {key} is registered twice ({prev} and {self._loading or 'another plugin'})")
        package, version = self._loading_dist
        self._models[key] = Registration(m, cls, attributes, factory, dependencies, self._loading, package, version)

    def get(self, model: str) -> Registration:
        try:
            return self._models[model]
        except KeyError:
            raise UnknownModel(
                f"unknown model {model!r}: no installed plugin package provides it "
                f"(installed models: {', '.join(sorted(self._models)) or 'none'})",
                model=model,
            ) from None

    def __contains__(self, model: str) -> bool:
        return model in self._models

    def models(self) -> list[str]:
        return sorted(self._models)

    def registrations(self) -> list[Registration]:
        return [self._models[m] for m in sorted(self._models)]

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        for ep in entry_points(group=group):
            self._loading = f"plugin {ep.name!r} ({ep.value})"
            dist = ep.dist
            self._loading_dist = (dist.name, dist.version) if dist is not None else ("", "")
            try:
                ep.load()(self)
            except Exception as exc:
                msg = f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {exc}"
                log.error(msg)
                self.load_errors.append(msg)
            finally:
                self._loading = ""
                self._loading_dist = ("", "")


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _default
    if _default is None:
        reg = Registry()
        reg.load_entry_points()
        _default = reg
    return _default


def check_models(config: RobotConfig, registry: Registry | None = None) -> list[Problem]:
    """Unknown models and invalid attributes, as config problems with their paths."""
    from orchestrator.config.loader import did_you_mean

    reg = registry or default_registry()
    out: list[Problem] = []
    for i, p in enumerate(config.parts):
        for j, r in enumerate(p.resources):
            path = ("parts", i, "resources", j)
            if r.model not in reg:
                out.append(
                    Problem(
                        (*path, "model"),
                        f"unknown model {r.model!r}{did_you_mean(r.model, reg.models())}: no installed plugin "
                        f"package provides it (installed: {', '.join(reg.models()) or 'none'})",
                    )
                )
                continue
            try:
                reg.get(r.model).validate(r.attributes)
            except ValidationError as exc:
                for e in exc.errors():
                    out.append(Problem((*path, "attributes", *e["loc"]), f"{e['msg']} (model {r.model})"))
    return out


def with_plugin_dependencies(config: RobotConfig, registry: Registry | None = None) -> RobotConfig:
    """Add the dependencies each plugin derives from its attributes to ``depends_on``."""
    reg = registry or default_registry()
    parts = []
    changed = False
    for p in config.parts:
        res = []
        for r in p.resources:
            extra: list[str] = []
            if r.model in reg:
                try:
                    extra = [d for d in reg.get(r.model).implicit_dependencies(r.attributes) if d not in r.depends_on]
                except ValidationError:
                    extra = []
            if extra:
                changed = True
                r = r.model_copy(update={"depends_on": [*r.depends_on, *extra]})
            res.append(r)
        parts.append(p.model_copy(update={"resources": res}))
    return config.model_copy(update={"parts": parts}) if changed else config
