"""A private network of real Linux network namespaces, with faults on each host's link, for tests.

A :class:`NetLab` is one L2 segment: a bridge in a namespace of the lab's own (the "switch"), one
network namespace per :class:`Host` joined to it by a veth pair, and one more veth pair from the
root namespace to the bridge, whose root end has the address ``lab.gateway``, so the test process
reaches every host.  The subnet is a /24 of 10.200.0.0/16 that no route on the machine overlaps.
Hosts have no default route: they reach the segment and nothing else.

The bridge is not in the root namespace because of br_netfilter: once it is loaded (Docker loads
it), frames bridged in the root namespace cross the root's iptables FORWARD chain, and Docker sets
that chain's policy to drop, so host-to-host traffic would vanish.  The switch namespace has no
rules of its own.

Faults on a host's link, each idempotent and undone by :meth:`Host.restore`:

- :meth:`Host.cut`: the host's interface goes down; local sends fail at once (no route).
- :meth:`Host.blackhole`: nftables drops everything in and out of the host's interface; the link
  stays up, nobody is told (not even the host's own senders), open connections become half-open.
- :meth:`Host.loss`: nftables drops that fraction of packets, at random, in both directions.
- :meth:`Host.delay` (hosts made with ``shaped=True`` only): every frame of the host's link is held that
  long each way by ``tests/linkshaper.py``, a userspace Ethernet link in a namespace of its own
  (``<lab>-<host>-wan``) between the host and the switch.  Its TCP connections run end to end through
  it, so delay and loss sit on the same hop, in the same round trip, as on a real Wi-Fi link.

Stalls and resets (and a delay that terminates TCP on each side) come from :class:`faultproxy.FaultProxy`
(re-exported here): the kernel here has no netem qdisc.

Every name a lab creates starts with its id (``nl`` + 6 hex digits), and ``/run/netlab/<id>``
records the owner's pid.  Leaving the ``with`` block (or a failed ``__enter__``) kills the hosts'
processes and removes every namespace, veth, bridge and nftables table of the lab;
:func:`sweep_stale` removes what crashed runs left behind, for labs whose owner is dead.

Needs root, ``ip`` (iproute2) and ``nft`` (nftables); :func:`unavailable_reason` says why not.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from faultproxy import FaultProxy, ProxyStats

__all__ = [
    "FaultProxy",
    "Host",
    "NetLab",
    "NetLabError",
    "ProxyStats",
    "ensure_tools",
    "lab_resources",
    "sweep_stale",
    "unavailable_reason",
]

RUN_DIR = Path("/run/netlab")
MARKER = "netlab"
ID_RE = re.compile(r"^nl[0-9a-f]{6}$")
HOST_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,30}$")
POOL = ipaddress.IPv4Network("10.200.0.0/16")
NFT_TABLE = "netlab"
NFT_FAMILY = "netdev"
IFACE = "eth0"  # the host's end of its veth, inside its namespace
CMD_TIMEOUT = 10.0

_open_labs: weakref.WeakSet[NetLab] = weakref.WeakSet()


class NetLabError(RuntimeError):
    pass


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/sbin"):
        if os.access(f"{directory}/{name}", os.X_OK):
            return f"{directory}/{name}"
    raise NetLabError(f"{name} not found (`make test-tools` installs it)")


def _run(argv: Sequence[str], *, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one administration command; a failure raises NetLabError with its stderr."""
    try:
        result = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetLabError(f"{' '.join(argv)}: {exc}") from exc
    if check and result.returncode != 0:
        raise NetLabError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run([_tool("ip"), *args], check=check)


def unavailable_reason() -> str | None:
    """Why a NetLab cannot be built here (None if it can): root, the tools, namespaces."""
    if os.geteuid() != 0:
        return "netlab needs root"
    try:
        _tool("ip")
        _tool("nft")
    except NetLabError as exc:
        return str(exc)
    probe = f"nl{secrets.token_hex(3)}-probe"
    with _lock():  # so that no sweep takes it for a leftover meanwhile
        if _ip("netns", "add", probe, check=False).returncode != 0:
            return "cannot create a network namespace here"
        _ip("netns", "del", probe, check=False)
    return None


def ensure_tools() -> None:
    """Install nftables and iproute2 (Debian packages) when missing and we are root."""
    missing = [pkg for tool, pkg in (("nft", "nftables"), ("ip", "iproute2")) if not _has_tool(tool)]
    if not missing or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
        subprocess.run(argv, env=env, capture_output=True, timeout=300, check=False)


def _has_tool(name: str) -> bool:
    try:
        _tool(name)
    except NetLabError:
        return False
    return True


# -- owner markers and stale labs --------------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None if there is no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _owner_alive(marker: Path) -> bool:
    try:
        info = json.loads(marker.read_text())
        pid, start = int(info["pid"]), int(info["start"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return _start_time(pid) == start


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serialise subnet choice (and sweeping) between labs of every process on the machine."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lab_resources(lab_id: str) -> dict[str, list[str]]:
    """What exists on the machine with this lab id's prefix: namespaces and root-namespace links."""
    names = [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]
    netns = [name for name in names if name == lab_id or name.startswith(f"{lab_id}-")]
    links = [link["ifname"] for link in json.loads(_ip("-j", "link", "show").stdout or "[]")]
    return {"netns": netns, "links": [name for name in links if name.startswith(lab_id)]}


def _kill_netns_pids(ns: str) -> None:
    for pid in _ip("netns", "pids", ns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _remove_lab(lab_id: str, nft_tables: Sequence[str] = ()) -> list[str]:
    """Delete every resource of the lab; returns the errors (deletion goes on past each)."""
    errors: list[str] = []
    try:
        found = lab_resources(lab_id)
    except NetLabError as exc:
        return [str(exc)]
    for ns in nft_tables:
        if ns in found["netns"]:
            with contextlib.suppress(NetLabError):  # the namespace's end takes the table with it anyway
                _run([_tool("ip"), "netns", "exec", ns, _tool("nft"), "delete", "table", NFT_FAMILY, NFT_TABLE])
    # The root namespace's veth first: deleting one end removes both at once, while a namespace's
    # devices go away only when the kernel gets round to freeing it.
    for link in found["links"]:
        result = _ip("link", "del", link, check=False)
        if result.returncode != 0 and "Cannot find device" not in result.stderr:
            errors.append(f"ip link del {link}: {result.stderr.strip()}")
    for ns in found["netns"]:
        _kill_netns_pids(ns)
        result = _ip("netns", "del", ns, check=False)
        if result.returncode != 0 and "No such file" not in result.stderr:
            errors.append(f"ip netns del {ns}: {result.stderr.strip()}")
    return errors


def _ids_on_machine() -> set[str]:
    """Lab ids that have a namespace (``ID`` or ``ID-host``) or a gateway link (``IDgw``) here."""
    ids = set()
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        lab_id, _, host = name.partition("-")
        if ID_RE.match(lab_id) and (host or name == lab_id):
            ids.add(lab_id)
    for link in json.loads(_ip("-j", "link", "show").stdout or "[]"):
        name = link.get("ifname", "")
        if name.endswith("gw") and ID_RE.match(name[:-2]):
            ids.add(name[:-2])
    return ids


def sweep_stale() -> list[str]:
    """Remove the labs left by crashed runs; returns their ids.

    A lab is stale when its marker's owner is dead, or when it has no marker at all: a lab writes
    its marker before it creates anything and removes it only once everything is gone.
    """
    swept = []
    with _lock():
        markers = {path.name: path for path in RUN_DIR.iterdir() if ID_RE.match(path.name)}
        for lab_id in sorted(set(markers) | _ids_on_machine()):
            marker = markers.get(lab_id)
            if marker is not None and _owner_alive(marker):
                continue
            if not _remove_lab(lab_id):
                if marker is not None:
                    marker.unlink(missing_ok=True)
                swept.append(lab_id)
    return swept


# -- the lab -------------------------------------------------------------------------------------------


def _taken_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 destination routed on the machine, in every table, and every local address."""
    nets = []
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        dst = route.get("dst", "")
        if dst == "default":
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(dst, strict=False))
    for link in json.loads(_ip("-j", "-4", "addr", "show").stdout or "[]"):
        for addr in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                nets.append(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    return [net for net in nets if isinstance(net, ipaddress.IPv4Network)]


def _pick_subnet() -> ipaddress.IPv4Network:
    taken = _taken_networks()
    for marker in RUN_DIR.glob("nl*"):  # labs being built right now may have no route yet
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            taken.append(ipaddress.IPv4Network(json.loads(marker.read_text())["subnet"]))
    candidates = list(POOL.subnets(new_prefix=24))[1:-1]
    for _ in range(64):
        net = candidates[secrets.randbelow(len(candidates))]
        if not any(net.overlaps(other) for other in taken):
            return net
    raise NetLabError(f"no free /24 in {POOL}")


class Host:
    """One network namespace on the lab's segment."""

    def __init__(self, lab: NetLab, name: str, index: int, ip: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = f"{lab.id}-{name}"
        self.veth = f"{lab.id}h{index}"  # the switch's end, a port of the bridge
        self.ip = ip
        self._procs: list[subprocess.Popen[Any]] = []
        self._cut = False
        self._blackhole = False
        self._loss = 0.0
        self._delay = 0.0
        self.wan_ns: str | None = None  # shaped hosts: the namespace of the link shaper
        self._shaper: subprocess.Popen[str] | None = None

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ip={self.ip!r}, ns={self.ns!r})"

    # -- processes ------------------------------------------------------------------------------------

    def _argv(self, argv: Sequence[str]) -> list[str]:
        return [_tool("ip"), "netns", "exec", self.ns, *argv]

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the namespace; killed at lab teardown if still alive.

        The environment is the test process's, updated with ``env=`` if given; the working directory
        is the test's unless ``cwd=`` says otherwise.  Use ``sys.executable`` for the venv's python.
        """
        env = {**os.environ, **(kw.pop("env", None) or {})}
        kw.setdefault("cwd", os.getcwd())
        proc = subprocess.Popen(self._argv(argv), env=env, **kw)
        self._procs.append(proc)
        return proc

    def run(
        self, argv: Sequence[str], timeout: float = CMD_TIMEOUT, check: bool = False, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace to completion; output captured as text."""
        env = {**os.environ, **(kw.pop("env", None) or {})}
        kw.setdefault("cwd", os.getcwd())
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self._argv(argv), env=env, timeout=timeout, check=check, **kw)

    def python(self, code: str, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        """``popen`` of the test's own python running ``code``, with stdout (and stdin) as text pipes."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stdin", subprocess.PIPE)
        kw.setdefault("text", True)
        return self.popen([sys.executable, "-c", code, *args], **kw)

    def _stop_processes(self, timeout: float) -> None:
        alive = [proc for proc in self._procs if proc.poll() is None]
        for proc in alive:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in alive:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(CMD_TIMEOUT)
        for proc in self._procs:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        self._procs.clear()
        _kill_netns_pids(self.ns)  # their children, or anything else started in the namespace

    # -- faults ---------------------------------------------------------------------------------------

    def cut(self) -> None:
        """Take the host's interface down: its sends fail at once, nothing reaches it."""
        self._cut = True
        _ip("-n", self.ns, "link", "set", IFACE, "down")

    def blackhole(self) -> None:
        """Drop everything in and out of the host's interface, silently; the link stays up."""
        self._blackhole = True
        self._apply_nft()

    def loss(self, fraction: float) -> None:
        """Drop ``fraction`` (0..1) of the packets in each direction, at random; 0 removes the loss."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"loss fraction {fraction} not in [0, 1]")
        self._loss = fraction
        self._apply_nft()

    def delay(self, seconds: float) -> None:
        """Hold every frame of the host's link ``seconds`` each way (0 removes the delay); shaped hosts only."""
        if self._shaper is None:
            raise NetLabError(f"host {self.name} has no link shaper (add it with shaped=True)")
        self._shaper_command(f"delay {seconds}")
        self._delay = seconds

    def shaper_stats(self) -> dict[str, int]:
        """Frames the shaper forwarded each way, holds now, and dropped (its queue full, or a send refused)."""
        words = self._shaper_command("stats").split()
        return {"to_switch": int(words[1]), "to_host": int(words[2]), "held": int(words[3]),
                "dropped": int(words[4])}

    def _shaper_command(self, line: str) -> str:
        proc = self._shaper
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        if proc.poll() is not None:
            raise NetLabError(f"the link shaper of {self.name} exited ({proc.returncode})")
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        answer = proc.stdout.readline().strip()  # answered at once: it only sets a value or reads counters
        if not (answer == "ok" or answer.startswith("stats ")):
            raise NetLabError(f"link shaper of {self.name}: {line!r}: {answer!r}")
        return answer

    def _start_shaper(self, a: str, b: str) -> None:
        assert self.wan_ns is not None
        shaper = str(Path(__file__).with_name("linkshaper.py"))
        argv = [_tool("ip"), "netns", "exec", self.wan_ns, sys.executable, shaper,
                a, b]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._procs.append(proc)
        self._shaper = proc
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # bounded: it binds two sockets and says so, or exits
        if line != "ready":
            raise NetLabError(f"the link shaper of {self.name} did not start: {line!r}")

    def restore(self) -> None:
        """Undo every fault of this host."""
        self._blackhole = False
        self._loss = 0.0
        self._apply_nft()
        if self._delay:
            self.delay(0.0)
        if self._cut:
            _ip("-n", self.ns, "link", "set", IFACE, "up")
            self._cut = False

    @property
    def faults(self) -> dict[str, Any]:
        return {"cut": self._cut, "blackhole": self._blackhole, "loss": self._loss, "delay": self._delay}

    def _apply_nft(self) -> None:
        """Replace the host's table with one holding exactly the current faults (one transaction).

        The rules sit on the netdev ingress and egress hooks of the host's interface, below the IP
        stack: a dropped packet is simply gone, as on a bad link (an inet output-hook drop would
        instead fail the local sender's sendto with EPERM).  ARP is dropped as well.
        """
        rule = ""
        if self._blackhole:
            rule = "drop"
        elif self._loss > 0:
            rule = f"numgen random mod 1000 < {round(self._loss * 1000)} drop"
        script = f"table {NFT_FAMILY} {NFT_TABLE}\ndelete table {NFT_FAMILY} {NFT_TABLE}\n"
        if rule:
            script += f"table {NFT_FAMILY} {NFT_TABLE} {{\n"
            for chain in ("ingress", "egress"):
                hook = f'type filter hook {chain} device "{IFACE}" priority 0; policy accept;'
                script += f"  chain {chain} {{ {hook} {rule}; }}\n"
            script += "}\n"
        _run([_tool("ip"), "netns", "exec", self.ns, _tool("nft"), "-f", "-"], input=script)


class NetLab:
    """A private L2 segment of namespaces; a context manager (sync, so usable from any test).

    ``with NetLab(["broker", "robot"]) as lab: lab.hosts["broker"].popen(...)``, or add hosts later
    with :meth:`add_host`.  ``lab.gateway`` is the root namespace's address on the segment.
    """

    def __init__(self, hosts: Sequence[str] = (), *, term_timeout: float = 2.0, sweep: bool = True,
                 shaped: Sequence[str] = ()) -> None:
        self.id = f"nl{secrets.token_hex(3)}"
        self.switch_ns = self.id  # the bridge's namespace, named after the lab
        self.bridge = f"{self.id}br"
        self.gateway_link = f"{self.id}gw"  # the root namespace's end of its veth to the bridge
        self.subnet: ipaddress.IPv4Network | None = None
        self.gateway = ""
        self.hosts: dict[str, Host] = {}
        self._initial = list(hosts)
        self._shaped = set(shaped)
        self._term_timeout = term_timeout
        self._sweep = sweep
        self._active = False
        self._marker = RUN_DIR / self.id

    def __repr__(self) -> str:
        return f"NetLab({self.id}, {self.subnet}, hosts={list(self.hosts)})"

    def __enter__(self) -> NetLab:
        if self._sweep:
            sweep_stale()
        self._active = True
        _open_labs.add(self)
        try:
            with _lock():
                self.subnet = _pick_subnet()
                self._write_marker()
                gateway = self.subnet.network_address + 1
                self.gateway = str(gateway)
                sw = self.switch_ns
                _ip("netns", "add", sw)
                _ip("-n", sw, "link", "add", self.bridge, "type", "bridge")
                _ip("-n", sw, "link", "set", self.bridge, "up")
                _ip("link", "add", self.gateway_link, "type", "veth", "peer", "name", f"{self.id}g", "netns", sw)
                _ip("-n", sw, "link", "set", f"{self.id}g", "master", self.bridge, "up")
                with contextlib.suppress(OSError):  # no IPv6 chatter from the root namespace
                    Path(f"/proc/sys/net/ipv6/conf/{self.gateway_link}/disable_ipv6").write_text("1")
                _ip("addr", "add", f"{gateway}/{self.subnet.prefixlen}", "dev", self.gateway_link)
                _ip("link", "set", self.gateway_link, "up")
            for name in self._initial:
                self.add_host(name, shaped=name in self._shaped)
        except BaseException:
            self.close(raise_errors=False)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(raise_errors=exc is None)

    def _write_marker(self) -> None:
        info = {"marker": MARKER, "pid": os.getpid(), "start": _start_time(os.getpid()), "subnet": str(self.subnet)}
        tmp = self._marker.with_name(f".{self.id}.tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(self._marker)

    def add_host(self, name: str, *, shaped: bool = False) -> Host:
        """A new namespace on the segment, with loopback up and the next free address.  ``shaped``: its link
        runs through a link shaper in a namespace of its own, for :meth:`Host.delay`."""
        if not self._active or self.subnet is None:
            raise NetLabError("add_host needs an entered NetLab")
        if not HOST_NAME_RE.match(name) or name in self.hosts:
            raise ValueError(f"bad or duplicate host name {name!r}")
        index = len(self.hosts)
        address = self.subnet.network_address + 2 + index
        if address >= self.subnet.broadcast_address:
            raise NetLabError("the lab's /24 is full")
        ip = str(address)
        host = Host(self, name, index, ip)
        self.hosts[name] = host  # before creating anything, so that teardown knows of it
        _ip("netns", "add", host.ns)
        if shaped:
            wan = host.wan_ns = f"{host.ns}-wan"
            _ip("netns", "add", wan)
            # the shaper's namespace has no address and sends nothing of its own (no IPv6 chatter either)
            _run([_tool("ip"), "netns", "exec", wan, "sh", "-c",
                  "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
                  "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"])
            _ip("-n", wan, "link", "add", "wa", "type", "veth", "peer", "name", IFACE, "netns", host.ns)
            _ip("-n", self.switch_ns, "link", "add", host.veth, "type", "veth", "peer", "name", "wb", "netns", wan)
            for dev in ("wa", "wb"):
                _ip("-n", wan, "link", "set", dev, "promisc", "on", "up")
            host._start_shaper("wa", "wb")
        else:
            _ip("-n", self.switch_ns, "link", "add", host.veth, "type", "veth", "peer", "name", IFACE, "netns",
                host.ns)
        _ip("-n", self.switch_ns, "link", "set", host.veth, "master", self.bridge, "up")
        _ip("-n", host.ns, "link", "set", "lo", "up")
        _ip("-n", host.ns, "addr", "add", f"{ip}/{self.subnet.prefixlen}", "dev", IFACE)
        _ip("-n", host.ns, "link", "set", IFACE, "up")
        return host

    def close(self, raise_errors: bool = True) -> None:
        """Kill the hosts' processes, remove everything of the lab.  Idempotent."""
        if not self._active:
            return
        self._active = False
        _open_labs.discard(self)
        errors: list[str] = []
        for host in self.hosts.values():
            try:
                host._stop_processes(self._term_timeout)
            except Exception as exc:  # keep tearing down
                errors.append(f"stopping processes of {host.name}: {exc}")
        errors += _remove_lab(self.id, [host.ns for host in self.hosts.values() if host._blackhole or host._loss])
        if not errors:
            self._marker.unlink(missing_ok=True)
            return
        message = f"netlab {self.id} teardown left something behind (sweep_stale() retries): {errors}"
        if raise_errors:
            raise NetLabError(message)
        warnings.warn(message, stacklevel=2)

    def resources(self) -> dict[str, list[str]]:
        """What of this lab exists on the machine right now (for checks)."""
        return lab_resources(self.id)


def _close_open_labs() -> None:
    for lab in list(_open_labs):
        lab.close(raise_errors=False)


atexit.register(_close_open_labs)
