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


def test_a_models_own_definitions_are_moved_into_the_schema_with_every_reference_and_nothing_else() -> None:
    from orchestrator.resources.describe import _inline

    model = {
        "properties": {"gain": {"$ref": "#/$defs/Gain"},
                       "note": {"type": "string", "default": "#/$defs/Gain"},  # a value, not a reference
                       "more": {"type": "array", "items": {"$ref": "#/$defs/Axis"}}},
        "$defs": {"Gain": {"properties": {"axis": {"$ref": "#/$defs/Axis"}}}, "Axis": {"type": "string"}},
    }
    defs: dict[str, object] = {"Axis": {"type": "integer"}}  # the document's own, of the same name: untouched
    out = _inline(model, defs, "m_")
    assert out["properties"]["gain"] == {"$ref": "#/$defs/m_Gain"}
    assert out["properties"]["more"]["items"] == {"$ref": "#/$defs/m_Axis"}
    assert out["properties"]["note"]["default"] == "#/$defs/Gain"
    assert defs == {"Axis": {"type": "integer"}, "m_Gain": {"properties": {"axis": {"$ref": "#/$defs/m_Axis"}}},
                    "m_Axis": {"type": "string"}}


def test_example_config_is_valid() -> None:
    loaded = load_config(Path(__file__).parent.parent / "examples" / "rover.yaml")
    topo = loaded.topology
    assert len(topo.parts) >= 4
    assert max(topo.depth(p) for p in topo.parts) >= 2


# ---- hostile files: each is a ConfigError (exit 2) naming the file, never a traceback, in bounded time ----

def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", "validate", str(path)], capture_output=True,
                          text=True, timeout=30)


def _assert_refused(path: Path, fragment: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    joined = "\n".join(info.value.problems)
    assert str(path) in joined and fragment in joined, joined
    assert len(joined) < 5000, "the message echoes its input"
    return info.value.problems


def test_a_parent_chain_of_1000_levels_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    import yaml

    parts = [{"name": "p0"}] + [{"name": f"p{i}", "parent": f"p{i - 1}"} for i in range(1, 1000)]
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump({"robot": "r", "parts": parts}))
    _assert_refused(path, "levels below the primary")
    # a cycle through a thousand parts is found once, and named briefly
    parts[0]["parent"] = "p999"
    path.write_text(yaml.safe_dump({"robot": "r", "parts": parts}))
    found = _assert_refused(path, "parent cycle")
    assert len(found) == 2 and "more)" in found[1]  # "no primary", and the cycle
    res = _validate(path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr


def test_a_dependency_chain_of_2000_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    import yaml

    resources = [{"name": f"r{i}", "model": "orc:sim:sensor", "depends_on": [f"r{i + 1}"]} for i in range(1999)]
    resources.append({"name": "r1999", "model": "orc:sim:sensor"})
    path = tmp_path / "deps.yaml"
    path.write_text(yaml.safe_dump({"robot": "r", "parts": [{"name": "main", "resources": resources}]}))
    _assert_refused(path, "dependency chain of 2000 resources")
    resources[-1]["depends_on"] = ["r0"]  # and as a cycle
    path.write_text(yaml.safe_dump({"robot": "r", "parts": [{"name": "main", "resources": resources}]}))
    _assert_refused(path, "dependency cycle: main/r0 -> main/r1")
    res = _validate(path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr


def test_20000_nested_brackets_is_an_error(tmp_path: Path) -> None:
    for name, text in (("brackets", "robot: " + "[" * 20000 + "]" * 20000 + "\n"),
                       ("braces", "robot: " + "{a: " * 20000 + "1" + "}" * 20000 + "\n"),
                       ("blocks", "robot:\n" + "".join(" " * i + "- \n" for i in range(300)))):
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        _assert_refused(path, "nested deeper than")
    res = _validate(tmp_path / "brackets.yaml")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr


def test_yaml_anchors_cannot_blow_up_the_message(tmp_path: Path) -> None:
    import time

    bomb = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in range(1, 9):
        bomb += f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]\n"
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb + "robot: *i\nparts: [{name: main, resources: *i}]\n")
    t0 = time.monotonic()
    _assert_refused(path, "once its aliases are expanded")
    assert time.monotonic() - t0 < 5
    # an alias inside the node it names
    path.write_text("robot: r\nparts: &p [{name: main, resources: *p}]\n")
    _assert_refused(path, "alias refers to the node that contains it")
    # a few aliases that stay small are fine, and an invalid value they carry is quoted briefly
    path.write_text("robot: &n " + "x" * 5000 + "\nparts: [{name: *n}]\n")
    found = _assert_refused(path, "robot")
    assert all(len(line) <= 500 for line in found)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("robot: a\nparts: [{name: main}]\nrobot: b\n")
    found = _assert_refused(path, "duplicate key 'robot' (first at line 1)")
    assert found[0].startswith(f"{path}:3: ")
    path.write_text("robot: a\nparts:\n  - name: main\n    heartbeat_s: 1\n    heartbeat_s: 0.1\n")
    _assert_refused(path, "duplicate key 'heartbeat_s'")
    # a merge key is not a duplicate
    path.write_text("robot: a\nbase: &b {heartbeat_s: 1}\nparts: [{<<: *b, name: main}]\n")
    _assert_refused(path, "base: unknown key")


def test_validate_reads_a_bounded_amount_of_dev_urandom(tmp_path: Path) -> None:
    import resource
    import time

    t0 = time.monotonic()
    _assert_refused(Path("/dev/urandom"), "larger than a robot configuration may be")
    _assert_refused(Path("/dev/zero"), "larger than a robot configuration may be")
    big = tmp_path / "big.yaml"
    big.write_text("robot: r\n# " + "x" * (1024 * 1024) + "\n")
    _assert_refused(big, "larger than a robot configuration may be")
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(256)) * 8)
    _assert_refused(garbage, "not UTF-8")
    assert time.monotonic() - t0 < 5
    res = subprocess.run([sys.executable, "-c", "import resource, subprocess, sys; "
                          "r = subprocess.run([sys.executable, '-m', 'orchestrator', 'validate', '/dev/urandom'], "
                          "capture_output=True, text=True, timeout=30); "
                          "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
                          "print(r.stderr, file=sys.stderr)"], capture_output=True, text=True, timeout=60)
    code, rss_kb = res.stdout.split()
    assert code == "2" and "/dev/urandom" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert int(rss_kb) < 200_000, f"validate /dev/urandom used {rss_kb} KB"
    assert resource  # the module is used in the child


def test_key_env_a_equals_b_and_key_env_path_are_refused_before_anything_starts(tmp_path: Path) -> None:
    """On main, ``sessions.key_env: 'A=B'`` crashed `up` after its broker had started, and ``key_env: PATH``
    made the session key the value of $PATH.  The session key now comes only from the credentials
    directory: the key is unknown, and `up` exits 2 before it starts a broker."""
    for value in ("'A=B'", "PATH"):
        path = write(tmp_path, GOOD + f"sessions: {{key_env: {value}}}\n")
        found = _assert_refused(path, "sessions.key_env: unknown key")
        assert len(found) == 1
        for command in ("validate", "up"):
            res = subprocess.run([sys.executable, "-m", "orchestrator", command, str(path)], capture_output=True,
                                 text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "A": "B"})
            assert res.returncode == 2 and "sessions.key_env: unknown key" in res.stderr, res
            assert "Traceback" not in res.stderr and "broker listening" not in res.stdout + res.stderr


def test_up_refuses_a_parent_chain_of_330_levels_before_anything_starts(tmp_path: Path) -> None:
    """On main a 330-level chain was a RecursionError inside `up`, which then SIGKILLed every part at Ctrl-C."""
    import yaml

    parts = [{"name": "p0"}] + [{"name": f"p{i}", "parent": f"p{i - 1}"} for i in range(1, 331)]
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump({"robot": "r", "broker": {"embedded": {"port": 0}}, "parts": parts}))
    res = subprocess.run([sys.executable, "-m", "orchestrator", "up", str(path)], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2 and "330 levels below the primary" in res.stderr, res
    assert "Traceback" not in res.stderr and "broker listening" not in res.stdout + res.stderr


@pytest.mark.parametrize("missing", ["session.key", "part.child.secret"])
def test_up_without_the_session_key_or_a_part_secret_exits_2_before_starting_a_broker(
        tmp_path: Path, missing: str) -> None:
    """Every part refuses to start without the session key (no guessable default) or its own secret; `up`
    once started its broker anyway, restarted the failing primary, then ran on with no robot."""
    from typer.testing import CliRunner

    from orchestrator.cli import app

    path = write(tmp_path, GOOD)
    made = CliRunner().invoke(app, ["credentials", str(path)])
    assert made.exit_code == 0, made.output
    creds = tmp_path / ".orchestrator" / "r1" / "credentials"
    (creds / missing).unlink()
    res = subprocess.run([sys.executable, "-m", "orchestrator", "up", str(path)], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2 and str(creds / missing) in res.stderr, res
    assert "Traceback" not in res.stderr and "broker listening" not in res.stdout + res.stderr


def test_credentials_are_one_owner_only_secret_per_identity_kept_until_rotated(tmp_path: Path) -> None:
    """Defect 1 of the security issue: one shared username/password for everyone.  `orchestrator
    credentials` makes a secret per identity (0600, in a 0700 directory), the password file (mosquitto's
    `$7$` hashes, one line per identity), and keeps them until --rotate; `orchestrator acl` gives nothing
    to anonymous clients."""
    import stat

    from typer.testing import CliRunner

    from orchestrator.cli import app

    path = write(tmp_path, GOOD + "clients: [{name: operator}, {name: screen, role: viewer}]\n")
    runner = CliRunner()
    assert runner.invoke(app, ["credentials", str(path)]).exit_code == 0
    creds = tmp_path / ".orchestrator" / "r1" / "credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    files = {p.name: p for p in creds.iterdir()}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files.values()), files
    identities = {"part/main", "part/child", "client/operator", "client/screen", "client/up"}
    for ident in identities:
        assert ident.replace("/", ".") + ".secret" in files
    users = [line.split(":")[0] for line in files["passwd"].read_text().splitlines()]
    assert {f"r1/{i}" for i in identities} <= set(users) and len(users) == len(set(users))
    assert all(":$7$" in line for line in files["passwd"].read_text().splitlines())
    secrets = {n: p.read_text() for n, p in files.items() if n.endswith((".secret", ".key"))}
    assert len(set(secrets.values())) == len(secrets), "two identities share a secret"
    assert runner.invoke(app, ["credentials", str(path)]).exit_code == 0
    assert {n: (creds / n).read_text() for n in secrets} == secrets  # kept
    assert runner.invoke(app, ["credentials", str(path), "--rotate"]).exit_code == 0
    assert all((creds / n).read_text() != v for n, v in secrets.items())  # every one replaced
    acl = runner.invoke(app, ["acl", str(path)]).output
    rules = [line for line in acl.splitlines() if line and not line.startswith("#")]
    assert rules[0].startswith("user "), "a rule for anonymous clients"
    assert "topic write orc/v1/r1/robot/#" in acl.split("user r1/part/child")[0]  # only the primary's block
    assert acl.count("topic write orc/v1/r1/robot/#") == 1
