"""A whole robot on a real network: the broker, the primary, a sub-part and a client each on a host of
their own (network namespaces of a :class:`netlab.NetLab`), every one a real process, so a test (or
``bench/disconnection.py``) can cut, blackhole, degrade or restore any host's link and see what the
robot does.

- The broker (mosquitto, or the embedded broker in a process of its own) runs on host ``broker`` and
  enforces the robot's identities and topic rights, as deployed.
- Each part is ``python -m orchestrator.runtime CONFIG --name NAME`` on its own host; the primary
  may instead run ``tests/net_part.py``, which also drives its own resources on command (an
  autonomous behaviour of the primary, as a navigation stack would be).
- The sub-part's motors carry a probe (``trace_file``): every change of power is written, with the
  time, to a file. That is what the motor did, whatever the network let anyone hear.
- The test process reaches every host through the lab's gateway: its checker client and watcher
  are on no faulty link.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brokers import make_credentials, mosquitto_path, render_mosquitto_conf, wait_for_port
from netlab import FaultProxy, Host, NetLab
from robot import CLIENTS, Watcher, unique_robot, write_config

from orchestrator.client import RobotClient
from orchestrator.config import LoadedConfig, load_config

HERE = Path(__file__).resolve().parent
PORT = 1883  # each namespace has its own ports: nothing else listens in the broker's
HOSTS = ("broker", "primary", "sub", "client")

EMBEDDED_BROKER = """
import asyncio, signal, sys
from orchestrator.broker import EmbeddedBroker
from orchestrator.config import load_config
from orchestrator.security.access import store_for
from orchestrator.security.acl import AclChecker, rights

loaded = load_config(sys.argv[1])
store = store_for(loaded.config, loaded.path)

async def main():
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with EmbeddedBroker("0.0.0.0", int(sys.argv[2]), passwords=store.password_file(),
                              acl=AclChecker(rights(loaded.config, loaded.topology))):
        await stop.wait()

asyncio.run(main())
"""


def net_parts(trace_dir: Path) -> list[dict[str, Any]]:
    """main (a base driving the sub-part's m3 and m4) -> drive (m1, m2, m3, m4, each with a probe).
    Everything else is the configuration's defaults: those are the bounds the tests check."""
    return [
        {"name": "main", "resources": [
            {"name": "chassis", "model": "orc:sim:base", "attributes": {"left": "drive/m3", "right": "drive/m4"}}]},
        {"name": "drive", "parent": "main", "resources": [
            {"name": m, "model": "orc:sim:motor", "attributes": {"trace_file": str(trace_dir / f"{m}.trace")}}
            for m in ("m1", "m2", "m3", "m4")]},
    ]


def read_trace(path: Path) -> list[tuple[float, float]]:
    """(time, power) lines a sim motor's ``trace_file`` holds; none if it wrote nothing yet."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        t, p = line.split()
        out.append((float(t), float(p)))
    return out


@dataclass
class NetRobot:
    lab: NetLab
    kind: str
    loaded: LoadedConfig
    tmp: Path
    procs: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    broker_proc: subprocess.Popen[Any] | None = None
    proxy: FaultProxy | None = None
    mosquitto_dir: Path | None = None

    # -- where things are ------------------------------------------------------------------------
    @property
    def cfg(self) -> Path:
        return Path(self.loaded.path)

    @property
    def robot(self) -> str:
        return self.loaded.config.robot

    def host(self, name: str) -> Host:
        return self.lab.hosts[name]

    @property
    def where(self) -> tuple[str, int]:
        return (self.host("broker").ip, PORT)

    @property
    def url(self) -> str:
        return f"mqtt://{self.where[0]}:{PORT}"

    def trace_path(self, motor: str) -> Path:
        return self.tmp / "traces" / f"{motor}.trace"

    # -- the broker --------------------------------------------------------------------------------
    def start_broker(self) -> None:
        host = self.host("broker")
        out = (self.tmp / "broker.log").open("ab")
        if self.kind == "mosquitto":
            assert self.mosquitto_dir is not None
            conf = self.mosquitto_dir / "mosquitto.conf"
            self.broker_proc = host.popen([mosquitto_path(), "-c", str(conf)], stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT)
        else:
            self.broker_proc = host.popen([sys.executable, "-c", EMBEDDED_BROKER, str(self.cfg), str(PORT)],
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        wait_for_port(self.where[0], PORT, 15, self.broker_proc)

    def _mosquitto_files(self) -> None:
        store = make_credentials(self.loaded)
        # mosquitto drops to its own user: it must reach, read and write its directory (pytest's tmp_path is
        # owner-only, so a directory of its own, removed with the robot)
        d = Path(tempfile.mkdtemp(prefix="netrobot-mosquitto-"))
        d.chmod(0o755)
        self.mosquitto_dir = d
        for name in ("passwd", "acl"):
            (d / name).write_text(store.path(name).read_text())
            (d / name).chmod(0o644)
        from orchestrator.protocol.codec import MAX_PAYLOAD

        extra = f"password_file {d}/passwd\nacl_file {d}/acl\nmessage_size_limit {MAX_PAYLOAD}\n"
        text = render_mosquitto_conf(PORT, d, extra, anonymous=False)
        text = text.replace(f"listener {PORT} 127.0.0.1", f"listener {PORT} 0.0.0.0")
        (d / "mosquitto.conf").write_text(text)
        (d / "mosquitto.conf").chmod(0o644)
        (d / "mosquitto.log").touch()
        (d / "mosquitto.log").chmod(0o666)

    def kill_broker(self) -> float:
        """SIGKILL the broker (no goodbye to anyone); returns when it was sent."""
        assert self.broker_proc is not None
        t = time.time()
        self.broker_proc.kill()
        self.broker_proc.wait(10)
        return t

    # -- parts and clients ---------------------------------------------------------------------------
    def start_part(self, name: str, host: str, *, broker_url: str | None = None, driver: bool = False
                   ) -> subprocess.Popen[Any]:
        argv = ([sys.executable, str(HERE / "net_part.py"), str(self.cfg), name] if driver else
                [sys.executable, "-m", "orchestrator.runtime", str(self.cfg), "--name", name])
        if broker_url is not None:
            argv += ["--broker", broker_url]
        log = (self.tmp / f"{name}.log").open("ab")
        proc = self.host(host).popen(argv, stdout=subprocess.PIPE if driver else subprocess.DEVNULL,
                                     stdin=subprocess.PIPE if driver else subprocess.DEVNULL, stderr=log,
                                     text=True, env={"PYTHONUNBUFFERED": "1"})
        log.close()
        self.procs[name] = proc
        return proc

    def drive_from_part(self, name: str, resource: str, *args: float, timeout: float = 15.0) -> None:
        """Make part ``name`` (started with ``driver=True``) drive its own ``resource`` by itself."""
        proc = self.procs[name]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"set_power {resource} {' '.join(map(str, args))}\n")
        proc.stdin.flush()
        line = proc.stdout.readline()  # net_part answers at once (the call's own deadline bounds it)
        assert line.strip() == "ok", f"{name} said {line!r}"

    def client_process(self, target: str, method: str, args: str) -> tuple[subprocess.Popen[str], str]:
        """A client on host ``client`` that makes one call in a session of its own and keeps it alive
        (heartbeats) until killed; returns it and its session id."""
        argv = [sys.executable, str(HERE / "session_client.py"), str(self.cfg), self.url, target, method, args,
                "wait"]
        err = (self.tmp / "client.log").open("ab")
        p = self.host("client").popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=err, text=True)
        err.close()
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.startswith("ready "), f"the client said {line!r}: {self.logs()}"
        return p, line.split()[1]

    def checker(self, **kw: Any) -> RobotClient:
        """An operator in the test process (on no faulty link), outside any session unless told."""
        kw.setdefault("sessions", False)
        kw.setdefault("identity", "other")
        return RobotClient.from_config(self.loaded, urls=[self.where], connect_timeout=15, **kw)

    def watcher(self) -> Watcher:
        return Watcher(self.robot, self.where, self.loaded)

    # -- what the motors did -------------------------------------------------------------------------
    def trace(self, motor: str) -> list[tuple[float, float]]:
        return read_trace(self.trace_path(motor))

    def power(self, motor: str) -> float:
        tr = self.trace(motor)
        return tr[-1][1] if tr else 0.0

    def stopped_after(self, motor: str, t0: float) -> float | None:
        """When the motor was last set to 0 after ``t0`` (unix time), if it is stopped now."""
        tr = [e for e in self.trace(motor) if e[0] >= t0]
        if not tr or tr[-1][1] != 0.0:
            return None
        return next(t for t, p in tr if p == 0.0)

    def changes_between(self, motor: str, t0: float, t1: float) -> list[tuple[float, float]]:
        return [e for e in self.trace(motor) if t0 <= e[0] <= t1]

    def logs(self) -> str:
        out = []
        for f in sorted(self.tmp.glob("*.log")):
            text = f.read_text(errors="replace")
            out.append(f"--- {f.name}\n{text[-3000:]}")
        return "\n".join(out)


@contextlib.contextmanager
def net_robot(tmp: Path, kind: str = "mosquitto", *, parts: list[dict[str, Any]] | None = None,
              start: bool = True, sub_through_proxy: bool = False, primary_driver: bool = False,
              shaped_sub: bool = False, broker: dict[str, Any] | None = None, **top: Any) -> Iterator[NetRobot]:
    """A lab of four hosts, the robot's credentials, its broker started (and, with ``start``, main on
    host ``primary`` and drive on host ``sub``). ``sub_through_proxy``: drive reaches the broker through a
    FaultProxy in the test process (``robot.proxy``), for delays that end TCP at the proxy.  ``shaped_sub``:
    host ``sub``'s link runs through a link shaper (``robot.host("sub").delay(s)``: a delay inside drive's
    own TCP round trip, on the same hop as ``loss``).  ``broker``: more keys of the broker section."""
    (tmp / "traces").mkdir(exist_ok=True)
    mosquitto_dirs: list[Path] = []
    try:
        with NetLab(list(HOSTS), shaped=["sub"] if shaped_sub else []) as lab:
            robot_name = unique_robot()
            broker_ip = lab.hosts["broker"].ip
            top.setdefault("clients", CLIENTS)
            cfg = write_config(tmp / f"{robot_name}.yaml", robot_name,
                               {"urls": [f"mqtt://{broker_ip}:{PORT}"], **(broker or {})},
                               parts or net_parts(tmp / "traces"), **top)
            loaded = load_config(cfg)
            robot = NetRobot(lab, kind, loaded, tmp)
            make_credentials(loaded)
            if kind == "mosquitto":
                robot._mosquitto_files()
                assert robot.mosquitto_dir is not None
                mosquitto_dirs.append(robot.mosquitto_dir)
            with contextlib.ExitStack() as stack:
                robot.start_broker()
                if sub_through_proxy:
                    robot.proxy = stack.enter_context(FaultProxy((broker_ip, PORT), listen=(lab.gateway, 0)))
                if start:
                    robot.start_part("main", "primary", driver=primary_driver)
                    sub_url = None
                    if robot.proxy is not None:
                        sub_url = f"mqtt://{robot.proxy.address[0]}:{robot.proxy.address[1]}"
                    robot.start_part("drive", "sub", broker_url=sub_url)
                try:
                    yield robot
                finally:
                    if os.environ.get("NETROBOT_KEEP_LOGS"):
                        print(robot.logs(), file=sys.stderr)
    finally:
        for d in mosquitto_dirs:
            shutil.rmtree(d, ignore_errors=True)
