"""Load a robot configuration file and validate everything before anything starts.

Every problem is reported as ``FILE:LINE: PATH: what was expected`` and collected into one
:class:`~orchestrator.errors.ConfigError`, so a user fixes the whole file in one pass.

A configuration file is input like any other: it is read up to :data:`MAX_CONFIG_BYTES`, its YAML
nesting, the expansion of its aliases and its keys are checked before anything is built from it
(duplicate keys are refused, not silently overwritten), and messages quote at most a short
excerpt of what was found, never the input itself.
"""

from __future__ import annotations

import copy
import difflib
import reprlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.config.models import RobotConfig
from orchestrator.config.topology import Problem, Topology, check
from orchestrator.errors import ConfigError

ModelCheck = Callable[[RobotConfig], list[Problem]]
Enrich = Callable[[RobotConfig], RobotConfig]

MAX_CONFIG_BYTES = 256 * 1024  # a robot's configuration is a few kilobytes
MAX_YAML_DEPTH = 64  # nested mappings and sequences
MAX_YAML_NODES = 100_000  # nodes once every alias is expanded (a "billion laughs" file is refused)
MAX_PROBLEMS = 50  # problems listed; the rest are counted
MAX_LINE = 500  # characters of one problem line

_short = reprlib.Repr()
_short.maxlevel, _short.maxdict, _short.maxlist, _short.maxtuple, _short.maxset = 2, 4, 4, 4, 4
_short.maxstring, _short.maxother, _short.maxlong = 60, 60, 40


def excerpt(value: Any) -> str:
    """What a message may quote of an input: a bounded ``repr``."""
    return _short.repr(value)


class _YamlError(yaml.MarkedYAMLError):
    pass


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, composing no deeper than :data:`MAX_YAML_DEPTH` (its composer recurses)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _YamlError(problem=f"nested deeper than {MAX_YAML_DEPTH} levels",
                                 problem_mark=self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_nodes(root: yaml.Node) -> None:
    """Refuse aliases that expand past :data:`MAX_YAML_NODES` (or into themselves) and duplicate keys.

    Iterative; each distinct node is visited once, however many aliases point at it."""
    size: dict[int, int] = {}
    state: dict[int, int] = {}  # 1: being expanded (on the current path), 2: done
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if finished:
            total = 1 + sum(size[id(c)] for c in children)
            if total > MAX_YAML_NODES:
                raise _YamlError(problem=f"more than {MAX_YAML_NODES} values once its aliases are expanded",
                                 problem_mark=node.start_mark)
            size[key], state[key] = total, 2
            continue
        seen = state.get(key)
        if seen == 2:
            continue
        if seen == 1:
            raise _YamlError(problem="an alias refers to the node that contains it", problem_mark=node.start_mark)
        state[key] = 1
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, _ in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if k.value in first:
                        raise _YamlError(problem=f"duplicate key {excerpt(k.value)} (first at line {first[k.value]})",
                                         problem_mark=k.start_mark)
                    first[k.value] = k.start_mark.line + 1
        stack.append((node, True))
        stack.extend((c, False) for c in children)


def load_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """(composed tree, data) of one YAML document, within the bounds above; raises ``yaml.YAMLError``."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_nodes(root)
        return root, loader.construct_document(root)
    finally:
        loader.dispose()


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


def _model_at(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``path`` of a configuration, if one does."""
    tp: Any = RobotConfig
    for seg in path:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(seg, str):
            field = tp.model_fields.get(seg)
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) in (list, tuple) and isinstance(seg, int):
            tp = get_args(tp)[0] if get_args(tp) else None
        elif get_origin(tp) is dict and isinstance(seg, str):
            tp = get_args(tp)[1] if len(get_args(tp)) == 2 else None
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """``X | None``, ``Annotated[X, ...]``: X (the first model of a union)."""
    for _ in range(8):
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            tp = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), args[0] if args else tp)
        else:
            break
    return tp


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a close match among ``choices`` (difflib), else ``""``."""
    close = difflib.get_close_matches(str(word)[:100], list(choices)[:10_000], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _pydantic_problems(exc: ValidationError) -> list[Problem]:
    out = []
    for err in exc.errors():
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            hint = did_you_mean(loc[-1], model.model_fields) if model is not None and loc else ""
            msg = f"unknown key (not part of the robot configuration schema){hint}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("model_type",):
            msg = f"{msg[:300]} (got {excerpt(err['input'])})"
        out.append(Problem(tuple(loc), msg))
    return out


def parse_config(
    text: str, source: str = "<string>", *, model_check: ModelCheck | None = None, enrich: Enrich | None = None
) -> LoadedConfig:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {len(text)} characters: larger than a robot configuration may be "
                          f"({MAX_CONFIG_BYTES} bytes)", source=source)
    try:
        root, data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {str(problem)[:300]}", source=source) from None
    except RecursionError:  # not reachable through the bounds above; never a traceback if it were
        raise ConfigError(f"{source}: invalid YAML: nested too deeply", source=source) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping with 'robot', 'broker' and 'parts' at the top level, "
            f"got {type(data).__name__}",
            source=source,
        )

    def fail(problems: list[Problem]) -> ConfigError:
        lines = []
        for p in problems[:MAX_PROBLEMS]:
            line = _line_of(root, p.path)
            where = f"{source}:{line}" if line else source
            text = f"{where}: {format_path(p.path)[:200]}: {p.message}"
            lines.append(text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "...")
        if len(problems) > MAX_PROBLEMS:
            lines.append(f"{source}: ... and {len(problems) - MAX_PROBLEMS} more problem(s)")
        return ConfigError(lines[0], lines, source=source)

    try:
        config = RobotConfig.model_validate(data)
    except ValidationError as exc:
        schema = _pydantic_problems(exc)
        # every problem at once: the rest of the file is still checked (topology, dependencies, models)
        # with the keys in error taken out, where that leaves a configuration that validates
        raise fail(schema + _beyond_schema(data, schema, model_check)) from None
    problems: list[Problem] = []
    if model_check is not None:
        problems += model_check(config)
        if not problems and enrich is not None:
            config = enrich(config)  # plugins add the dependencies their attributes name
    problems = check(config) + problems
    if problems:
        raise fail(problems)
    return LoadedConfig(Path(source), config, Topology.build(config))


def _beyond_schema(data: dict[str, Any], schema: list[Problem], model_check: ModelCheck | None) -> list[Problem]:
    """The semantic problems of a file that failed its schema: the keys in error are removed (each at its
    nearest mapping key, so no list index moves) and, if what is left validates, it is checked like a valid
    file; problems under a removed key are left out (they would only echo the schema error)."""
    removed: list[tuple[str | int, ...]] = []
    for p in schema:
        keys = [i for i, seg in enumerate(p.path) if isinstance(seg, str)]
        if not keys or p.path[: keys[-1] + 1] in (("parts",), ("robot",)):
            return []  # nothing sensible to check without it
        removed.append(p.path[: keys[-1] + 1])
    trimmed = copy.deepcopy(data)
    for path in removed:
        node: Any = trimmed
        for seg in path[:-1]:
            try:
                node = node[seg]
            except (KeyError, IndexError, TypeError):
                node = None
                break
        if isinstance(node, dict):
            node.pop(path[-1], None)
    try:
        config = RobotConfig.model_validate(trimmed)
    except ValidationError:
        return []
    more = check(config) + (model_check(config) if model_check is not None else [])
    return [p for p in more if not any(p.path[: len(r)] == r for r in removed)]


def load_config(path: str | Path, *, check_models: bool = True) -> LoadedConfig:
    """Read, parse and validate ``path``; raise :class:`ConfigError` naming the file and path."""
    p = Path(path)
    try:
        with p.open("rb") as f:  # bounded: a device or a huge file is never read whole
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: larger than a robot configuration may be ({MAX_CONFIG_BYTES} bytes)",
                              source=str(p))
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such configuration file", source=str(p)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}): not a robot configuration",
                          source=str(p)) from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {type(exc).__name__}: {exc.strerror or exc}", source=str(p)) from None
    model_check: ModelCheck | None = None
    enrich: Enrich | None = None
    if check_models:
        from orchestrator.resources.registry import check_models as _check
        from orchestrator.resources.registry import with_plugin_dependencies

        model_check, enrich = _check, with_plugin_dependencies
    return parse_config(text, str(p), model_check=model_check, enrich=enrich)
