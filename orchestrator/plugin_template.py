"""``orchestrator plugin new NAME``: a plugin package to start from (an actuator and a sensor, their
tests on a real part, the pyproject with the entry point, an example robot).

The files are ``orchestrator/templates/plugin/**.tmpl``, filled with :class:`string.Template` (the
standard library: ``$name`` placeholders, nothing to install); a path segment ``$module`` becomes the
import package's name.
"""

from __future__ import annotations

import keyword
import re
import string
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["PluginNames", "new_plugin"]

DIST = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
SEGMENT = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class PluginNames:
    dist: str  # acme-fans
    module: str  # acme_fans
    namespace: str  # acme   (models are namespace:family:motor and namespace:family:sensor)
    family: str  # fans
    classprefix: str  # AcmeFans
    title: str  # Acme Fans

    @classmethod
    def of(cls, name: str, namespace: str | None = None, family: str | None = None) -> PluginNames:
        if not DIST.match(name) or len(name) > 64:
            raise ValueError(f"{name!r} is not a package name of the form 'acme-fans' (lower case letters and "
                             "digits, words separated by '-', starting with a letter, at most 64 characters)")
        module = name.replace("-", "_")
        if keyword.iskeyword(module) or module in {"orchestrator", "test", "tests"}:
            raise ValueError(f"{name!r} cannot be a package name: {module!r} is taken")
        words = name.split("-")
        namespace = namespace or words[0]
        family = family or ("_".join(words[1:]) if len(words) > 1 else words[0])
        for what, value in (("namespace", namespace), ("family", family)):
            if not SEGMENT.match(value) or len(value) > 40:
                raise ValueError(f"{what} {value!r}: expected lower case letters, digits and '_', "
                                 "starting with a letter")
        if namespace == "orc":
            raise ValueError("the namespace 'orc' is the framework's own: choose yours (--namespace)")
        return cls(name, module, namespace, family, "".join(w.capitalize() for w in words),
                   " ".join(w.capitalize() for w in words))


def _walk(node: Traversable, rel: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Traversable]]:
    out = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            out += _walk(child, (*rel, child.name))
        elif child.name.endswith(".tmpl"):
            out.append(((*rel, child.name), child))
    return out


def new_plugin(names: PluginNames, directory: Path, core_version: str) -> list[Path]:
    """Write the package into ``directory`` (which must not exist or be empty); the files written."""
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty: choose another directory")
    values = {**vars(names), "core_version": core_version}
    written = []
    for rel, source in _walk(files("orchestrator") / "templates" / "plugin"):
        parts = [string.Template(p).substitute(values) for p in rel]
        parts[-1] = parts[-1].removesuffix(".tmpl")
        target = directory.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(string.Template(source.read_text()).substitute(values))
        written.append(target)
    return written
