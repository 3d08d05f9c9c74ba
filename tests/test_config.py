"""Every class of invalid configuration fails with file, path and expectation; nothing starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.config import load_config, parse_config
from orchestrator.errors import ConfigError

GOOD = """\
robot: r1
broker:
  embedded: {port: 0}
parts:
  - name: main
    resources:
      - {name: m, model: "orc:sim:motor"}
  - name: child
    parent: main
    resources:
      - {name: s, model: "orc:sim:sensor", depends_on: [t]}
      - {name: t, model: "orc:sim:sensor"}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "robot.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.problems


def test_good_config_loads(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, GOOD))
    assert loaded.topology.primary == "main"
    assert loaded.topology.resource_start_order("child") == ["t", "s"]


CASES = [
    # (what, YAML, expected fragments of the one message: path and expectation)
    ("no primary", GOOD.replace("  - name: main\n", "  - name: main\n    parent: child\n"),
     ["parts", "no primary"]),
    ("two primaries", GOOD.replace("    parent: main\n", ""), ["parts[1].parent", "two primaries"]),
    ("unknown parent", GOOD.replace("parent: main", "parent: nobody"), ["parts[1].parent", "unknown parent 'nobody'"]),
    ("parent cycle",
     GOOD + "  - {name: a, parent: b}\n  - {name: b, parent: a}\n", ["parent cycle", "a -> b -> a"]),
    ("duplicate part", GOOD + "  - {name: child, parent: main}\n", ["parts[2].name", "duplicate part name 'child'"]),
    ("duplicate resource",
     GOOD.replace("{name: t, model", "{name: s, model"), ["parts[1].resources[1].name", "duplicate resource name"]),
    ("unknown model", GOOD.replace("orc:sim:motor", "acme:arm:ur5"),
     ["parts[0].resources[0].model", "unknown model 'acme:arm:ur5'"]),
    ("bad model triplet", GOOD.replace("orc:sim:motor", "motor"), ["parts[0].resources[0].model", "triplet"]),
    ("missing dependency", GOOD.replace("depends_on: [t]", "depends_on: [nope]"),
     ["parts[1].resources[0].depends_on[0]", "'nope', which no part hosts"]),
    ("dependency cycle", GOOD.replace('{name: t, model: "orc:sim:sensor"}', '{name: t, model: "orc:sim:sensor", '
                                      "depends_on: [s]}"), ["dependency cycle", "child/s -> child/t -> child/s"]),
    ("heartbeat out of range", GOOD.replace("  - name: child\n", "  - name: child\n    heartbeat_s: 0\n"),
     ["parts[1].heartbeat_s", "greater than or equal to 0.01"]),
    ("port out of range", GOOD.replace("port: 0", "port: 70000"), ["broker.embedded.port", "less than or equal"]),
    ("unknown key", GOOD.replace("robot: r1", "robot: r1\nrobtos: 3"), ["robtos", "unknown key"]),
    ("missing robot", GOOD.replace("robot: r1\n", ""), ["robot", "required key is missing"]),
    ("bad name", GOOD.replace("name: child", "name: 'a/b'"), ["parts[1].name", "pattern"]),
    ("bad attribute", GOOD.replace('{name: m, model: "orc:sim:motor"}',
                                   '{name: m, model: "orc:sim:motor", attributes: {max_rpm: -1}}'),
     ["parts[0].resources[0].attributes.max_rpm", "greater than 0"]),
    ("not yaml", "robot: [unclosed\n", ["invalid YAML"]),
    ("not a mapping", "- just\n- a list\n", ["expected a mapping"]),
]


@pytest.mark.parametrize(("what", "text", "fragments"), CASES, ids=[c[0] for c in CASES])
def test_invalid_config_names_file_path_and_expectation(
    tmp_path: Path, what: str, text: str, fragments: list[str]
) -> None:
    found = problems(tmp_path, text)
    joined = "\n".join(found)
    assert str(tmp_path / "robot.yaml") in joined
    for frag in fragments:
        assert frag in joined, f"{what}: {frag!r} not in {joined!r}"


def test_error_carries_the_line_number(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD.replace("parent: main", "parent: nobody"))
    line = GOOD.splitlines().index("    parent: main") + 1
    assert found[0].startswith(f"{tmp_path / 'robot.yaml'}:{line}: ")


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("parent: main", "parent: nobody").replace("orc:sim:motor", "x:y:z")
    assert len(problems(tmp_path, text)) == 2


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config("/nonexistent/robot.yaml")


def test_parse_config_without_models_check() -> None:
    loaded = parse_config(GOOD.replace("orc:sim:motor", "x:y:z"), "inline.yaml")
    assert loaded.config.robot == "r1"


@pytest.mark.parametrize("command", ["validate", "up", "part"])
def test_cli_exit_code_2_and_nothing_started(tmp_path: Path, command: str) -> None:
    bad = write(tmp_path, GOOD.replace("parent: main", "parent: nobody"))
    argv = [sys.executable, "-m", "orchestrator", command, str(bad)]
    if command == "part":
        argv += ["--name", "main"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res
    assert "unknown parent 'nobody'" in res.stderr
    assert "parts[1].parent" in res.stderr
    assert "running" not in res.stdout and "broker listening" not in res.stdout


def test_cli_validate_ok_and_schema(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD)
    res = subprocess.run([sys.executable, "-m", "orchestrator", "validate", str(good)], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0 and "ok" in res.stdout
    res = subprocess.run([sys.executable, "-m", "orchestrator", "schema"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0
    assert '"parts"' in res.stdout


def test_example_config_is_valid() -> None:
    loaded = load_config(Path(__file__).parent.parent / "examples" / "rover.yaml")
    topo = loaded.topology
    assert len(topo.parts) >= 4
    assert max(topo.depth(p) for p in topo.parts) >= 2
