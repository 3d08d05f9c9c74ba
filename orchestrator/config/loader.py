"""Load a robot configuration file and validate everything before anything starts.

Every problem is reported as ``FILE:LINE: PATH: what was expected`` and collected into one
:class:`~orchestrator.errors.ConfigError`, so a user fixes the whole file in one pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.config.models import RobotConfig
from orchestrator.config.topology import Problem, Topology, check
from orchestrator.errors import ConfigError

ModelCheck = Callable[[RobotConfig], list[Problem]]
Enrich = Callable[[RobotConfig], RobotConfig]


@dataclass(frozen=True)
class LoadedConfig:
    path: Path
    config: RobotConfig
    topology: Topology
    origin: str = "file"  # or "upstream serial N": the fleet's signed configuration, cached next to the file


def format_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            out += ("." if out else "") + str(seg)
    return out or "(top level)"


def _line_of(root: yaml.Node | None, path: tuple[str | int, ...]) -> int | None:
    """Line (1-based) of the deepest node along ``path`` in a composed YAML tree."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for seg in path:
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(seg):
                    nxt = v
                    line = k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(seg, int) and 0 <= seg < len(node.value):
            nxt = node.value[seg]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node = nxt
    return line


def _pydantic_problems(exc: ValidationError) -> list[Problem]:
    out = []
    for err in exc.errors():
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the robot configuration schema)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("model_type",):
            msg = f"{msg} (got {err['input']!r})"
        out.append(Problem(tuple(loc), msg))
    return out


def parse_config(
    text: str, source: str = "<string>", *, model_check: ModelCheck | None = None, enrich: Enrich | None = None
) -> LoadedConfig:
    try:
        root = yaml.compose(text)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}", source=source) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping with 'robot', 'broker' and 'parts' at the top level, "
            f"got {type(data).__name__}",
            source=source,
        )

    def fail(problems: list[Problem]) -> ConfigError:
        lines = []
        for p in problems:
            line = _line_of(root, p.path)
            where = f"{source}:{line}" if line else source
            lines.append(f"{where}: {format_path(p.path)}: {p.message}")
        return ConfigError(lines[0], lines, source=source)

    try:
        config = RobotConfig.model_validate(data)
    except ValidationError as exc:
        raise fail(_pydantic_problems(exc)) from None
    problems: list[Problem] = []
    if model_check is not None:
        problems += model_check(config)
        if not problems and enrich is not None:
            config = enrich(config)  # plugins add the dependencies their attributes name
    problems = check(config) + problems
    if problems:
        raise fail(problems)
    return LoadedConfig(Path(source), config, Topology.build(config))


def load_config(path: str | Path, *, check_models: bool = True) -> LoadedConfig:
    """Read, parse and validate ``path``; raise :class:`ConfigError` naming the file and path."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such configuration file", source=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}", source=str(p)) from None
    model_check: ModelCheck | None = None
    enrich: Enrich | None = None
    if check_models:
        from orchestrator.resources.registry import check_models as _check
        from orchestrator.resources.registry import with_plugin_dependencies

        model_check, enrich = _check, with_plugin_dependencies
    return parse_config(text, str(p), model_check=model_check, enrich=enrich)
