"""Self-tests of the fault-injection lab: namespaces, link faults, the fault proxy, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import netlab
import pytest
from netlab import FaultProxy, Host, NetLab, NetLabError, lab_resources, sweep_stale

netlab.ensure_tools()
REASON = netlab.unavailable_reason()
if REASON is not None:  # never a silent skip: the real-network tests are part of the suite
    raise RuntimeError(f"the network lab cannot run here: {REASON} (run the tests as root, after `make test` "
                       "installed iproute2 and nftables)")
pytestmark = [pytest.mark.timeout(30)]

SO_RCVBUFFORCE = 33  # Linux; not in the socket module

# An echo server for a lab host: prints its port once listening, echoes every connection until EOF.
ECHO_SERVER = """
import socket, threading
srv = socket.socket()
srv.bind(("0.0.0.0", 0))
srv.listen()
print(srv.getsockname()[1], flush=True)
def serve(conn):
    with conn:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:  # a reset, as some tests mean to cause
            pass
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# Tries one TCP connect; prints the outcome (ok, or the errno's name, or timeout) and the time taken.
CONNECT = """
import errno, socket, sys, time
start = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    outcome = "ok"
except TimeoutError:
    outcome = "timeout"
except OSError as exc:
    outcome = errno.errorcode.get(exc.errno, str(exc))
print(outcome, round(time.monotonic() - start, 3))
"""

# Counts UDP datagrams until "done" arrives on stdin, then drains what is still in flight.
UDP_COUNTER = """
import select, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE
sock.bind(("0.0.0.0", 0))
print(sock.getsockname()[1], flush=True)
counts = {}
done = False
while True:
    ready, _, _ = select.select([sock] + ([] if done else [sys.stdin]), [], [], 0.3 if done else 10)
    if not ready:
        break
    if sys.stdin in ready:
        done = True
        continue
    kind = sock.recv(64)[:1].decode()
    counts[kind] = counts.get(kind, 0) + 1
    if kind == "w":
        print("warm", flush=True)
print(counts.get("d", 0), flush=True)
"""

# Sends argv[3] datagrams of kind argv[4] to argv[1]:argv[2].
UDP_SENDER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    sock.sendto(f"{sys.argv[4]}{i}".encode(), (sys.argv[1], int(sys.argv[2])))
"""


def read_line(proc: subprocess.Popen[Any], timeout: float = 5.0) -> str:
    """The next line of a text-mode stdout pipe, or fail after ``timeout``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output from {proc.args} within {timeout} s"
    line: str = proc.stdout.readline()
    assert line, f"{proc.args} exited ({proc.poll()}) without output"
    return line.strip()


def start_echo(host: Host) -> int:
    return int(read_line(host.python(ECHO_SERVER)))


def connect_from(host: Host, ip: str, port: int, timeout: float) -> tuple[str, float]:
    out = host.run([sys.executable, "-c", CONNECT, ip, str(port), str(timeout)], timeout=timeout + 10)
    outcome, elapsed = out.stdout.split()
    return outcome, float(elapsed)


def echo_once(address: tuple[str, int], payload: bytes = b"ping", timeout: float = 5.0) -> bytes:
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(payload)
        return sock.recv(len(payload), socket.MSG_WAITALL)


def link_state(host: Host) -> str:
    out = host.run(["ip", "-j", "link", "show", "eth0"], check=True)
    state: str = json.loads(out.stdout)[0]["operstate"]
    return state


def assert_gone(lab_id: str) -> None:
    assert lab_resources(lab_id) == {"netns": [], "links": []}
    assert lab_id not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lab_id not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
    assert not (netlab.RUN_DIR / lab_id).exists()


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab(["a", "b"]) as lab:
        yield lab
    assert_gone(lab.id)


@contextlib.contextmanager
def listener(address: tuple[str, int]) -> Iterator[socket.socket]:
    """A listening TCP socket; connects complete through the backlog, nothing needs to accept."""
    sock = socket.create_server(address)
    try:
        yield sock
    finally:
        sock.close()


# -- the segment ------------------------------------------------------------------------------------


def test_two_hosts_talk_tcp(lab: NetLab) -> None:
    a, b = lab.hosts["a"], lab.hosts["b"]
    port = start_echo(a)
    code = "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 5); s.sendall(b'hi')\n"
    code += "print(s.recv(2, socket.MSG_WAITALL).decode())"
    out = b.run([sys.executable, "-c", code, a.ip, str(port)], check=True)
    assert out.stdout.strip() == "hi"
    assert lab.subnet is not None and a.ip != b.ip
    assert {ipaddress.ip_address(ip) in lab.subnet for ip in (a.ip, b.ip, lab.gateway)} == {True}


def test_root_namespace_reaches_a_host_and_env_and_cwd_carry_over(lab: NetLab) -> None:
    a = lab.hosts["a"]
    assert echo_once((a.ip, start_echo(a))) == b"ping"
    code = "import json, os, sys; print(json.dumps([sys.executable, os.getcwd(), os.environ.get('NETLAB_X')]))"
    out = a.run([sys.executable, "-c", code], env={"NETLAB_X": "1"}, check=True)
    assert json.loads(out.stdout) == [sys.executable, os.getcwd(), "1"]
    # The subnet was free: no route of the machine but the lab's own overlaps it.
    routes = json.loads(subprocess.run(["ip", "-j", "-4", "route"], capture_output=True, text=True).stdout)
    others = [r["dst"] for r in routes if r.get("dev") != lab.gateway_link and r["dst"] != "default"]
    assert lab.subnet is not None and not any(lab.subnet.overlaps(ipaddress.ip_network(d)) for d in others)


def test_cut_fails_local_sends_fast_and_restore_brings_the_link_back(lab: NetLab) -> None:
    a = lab.hosts["a"]
    with listener((lab.gateway, 0)) as srv:
        port = srv.getsockname()[1]
        assert connect_from(a, lab.gateway, port, 2)[0] == "ok"
        a.cut()
        a.cut()  # idempotent
        outcome, elapsed = connect_from(a, lab.gateway, port, 2)
        assert outcome == "ENETUNREACH" and elapsed < 0.5
        assert link_state(a) == "DOWN"
        a.restore()
        assert connect_from(a, lab.gateway, port, 2)[0] == "ok"
        a.restore()  # idempotent


def test_blackhole_is_silent_keeps_the_link_up_and_restores(lab: NetLab) -> None:
    a = lab.hosts["a"]
    port = start_echo(a)
    established = socket.create_connection((a.ip, port), timeout=2)
    a.blackhole()
    a.blackhole()  # idempotent
    established.sendall(b"held")  # accepted locally: nothing tells this end the peer is gone
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        socket.create_connection((a.ip, port), timeout=1.0)
    assert 0.9 < time.monotonic() - start < 2.0
    assert link_state(a) == "UP"
    # The host's own sends are silently dropped too (no EPERM, no ENETUNREACH): a timeout.
    with listener((lab.gateway, 0)) as srv:
        assert connect_from(a, lab.gateway, srv.getsockname()[1], 1.0)[0] == "timeout"
    a.restore()
    # The half-open connection survived: TCP retransmits and the echo comes back.
    established.settimeout(10)
    assert established.recv(4, socket.MSG_WAITALL) == b"held"
    established.close()
    assert echo_once((a.ip, port)) == b"ping"


def test_loss_drops_about_that_fraction_in_both_directions(lab: NetLab) -> None:
    a = lab.hosts["a"]
    sent = 400
    # Out of the host: it sends to a socket of the test process.
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
    rx.bind((lab.gateway, 0))
    rx.settimeout(5)
    port = str(rx.getsockname()[1])
    a.run([sys.executable, "-c", UDP_SENDER, lab.gateway, port, "1", "w"], check=True)  # resolves ARP, unlossy
    assert rx.recv(64) == b"w0"
    a.loss(0.3)
    a.loss(0.3)  # idempotent
    a.run([sys.executable, "-c", UDP_SENDER, lab.gateway, port, str(sent), "d"], check=True)
    received = 0
    rx.settimeout(0.3)
    with contextlib.suppress(TimeoutError):
        for _ in range(sent):
            rx.recv(64)
            received += 1
    rx.close()
    assert 0.6 * sent <= received <= 0.8 * sent, received

    # Into the host: the test process sends to a counter in the host.
    a.restore()
    counter = a.python(UDP_COUNTER)
    target = (a.ip, int(read_line(counter)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.sendto(b"w", target)
        assert read_line(counter) == "warm"
        a.loss(0.3)
        for i in range(sent):
            tx.sendto(b"d%d" % i, target)
    assert counter.stdin is not None
    counter.stdin.write("done\n")
    counter.stdin.flush()
    received = int(read_line(counter))
    assert 0.6 * sent <= received <= 0.8 * sent, received
    a.restore()
    assert a.faults == {"cut": False, "blackhole": False, "loss": 0.0, "delay": 0.0}


# -- the proxy --------------------------------------------------------------------------------------


async def test_proxy_adds_its_delay_each_way(lab: NetLab) -> None:
    a = lab.hosts["a"]
    port = start_echo(a)
    with FaultProxy((a.ip, port), listen=(lab.gateway, 0)) as proxy:

        async def round_trip() -> float:
            reader, writer = await asyncio.open_connection(*proxy.address)
            try:
                writer.write(b"x")  # one round trip to warm the connection up
                await reader.readexactly(1)
                start = time.monotonic()
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                return time.monotonic() - start
            finally:
                writer.close()

        base = await asyncio.wait_for(round_trip(), 5)
        proxy.delay_s = 0.15
        delayed = await asyncio.wait_for(round_trip(), 5)
        assert 0.3 <= delayed < 0.3 + base + 0.15, (base, delayed)
        stats = proxy.stats()
        assert stats.accepted == 2 and stats.bytes_up == 10 and stats.failed == 0


def test_a_shaped_hosts_delay_sits_in_its_own_tcp_round_trip_with_loss_on_the_same_hop() -> None:
    """The link shaper holds every frame ``delay`` each way, end to end (no TCP termination): a connect, one
    round trip, takes at least twice the delay; a bulk transfer with loss on the same hop arrives whole."""
    with NetLab(["a", "b"], shaped=["b"]) as lab:
        a, b = lab.hosts["a"], lab.hosts["b"]
        port = start_echo(a)
        assert connect_from(b, a.ip, port, 2)[0] == "ok"
        b.delay(0.15)
        outcome, elapsed = connect_from(b, a.ip, port, 5)
        assert outcome == "ok" and elapsed >= 0.3 - 0.01, elapsed  # SYN and SYN-ACK each held 0.15 s
        b.loss(0.05)
        code = "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 10)\n"
        code += "s.sendall(b'x' * 100_000); s.shutdown(socket.SHUT_WR); n = 0\n"
        code += "while d := s.recv(65536): n += len(d)\nprint(n)"
        out = b.run([sys.executable, "-c", code, a.ip, str(port)], timeout=25, check=True)
        assert out.stdout.strip() == "100000"  # TCP recovered every loss through the delayed path
        stats = b.shaper_stats()
        assert stats["to_switch"] > 0 and stats["to_host"] > 0
        assert b.faults == {"cut": False, "blackhole": False, "loss": 0.05, "delay": 0.15}
        b.restore()
        outcome, elapsed = connect_from(b, a.ip, port, 2)
        assert outcome == "ok" and elapsed < 0.3
        assert b.wan_ns is not None and b.wan_ns in lab.resources()["netns"]
        with pytest.raises(NetLabError):
            a.delay(0.1)  # an unshaped host has no shaper
    assert_gone(lab.id)


def test_proxy_stall_holds_data_and_resume_forwards_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv, FaultProxy(srv.getsockname()[:2]) as proxy:
        client = socket.create_connection(proxy.address, timeout=5)
        server, _ = srv.accept()
        server.settimeout(5)
        client.sendall(b"one")
        assert server.recv(3, socket.MSG_WAITALL) == b"one"
        proxy.stall()
        assert proxy.stalled
        client.sendall(b"two")
        server.sendall(b"back")
        # Nothing gets through either way while stalled (a bounded wait for an absence).
        ready, _, _ = select.select([server, client], [], [], 0.3)
        assert ready == []
        proxy.resume()
        assert server.recv(3, socket.MSG_WAITALL) == b"two"
        assert client.recv(4, socket.MSG_WAITALL) == b"back"
        client.close()
        assert server.recv(1) == b""  # EOF is forwarded too
        server.close()


def test_proxy_stall_applies_backpressure_instead_of_buffering() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv, FaultProxy(srv.getsockname()[:2]) as proxy:
        client = socket.create_connection(proxy.address, timeout=5)
        server, _ = srv.accept()
        proxy.stall()
        client.setblocking(False)
        block, pushed = b"x" * 65536, 0
        for _ in range(1024):  # at most 64 MiB
            try:
                pushed += client.send(block)
            except BlockingIOError:
                # The proxy stopped reading; wait a little in case its buffers are still filling.
                if not select.select([], [client], [], 0.2)[1]:
                    break
        assert pushed < 32 << 20, "the stalled proxy kept reading"
        assert proxy.stats().buffered <= 16 * 65536
        proxy.resume()
        server.settimeout(10)
        got = 0
        while got < pushed:
            chunk = server.recv(1 << 20)
            assert chunk
            got += len(chunk)
        assert got == pushed
        client.close()
        server.close()


def test_proxy_reset_sends_rst_to_both_ends() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv, FaultProxy(srv.getsockname()[:2]) as proxy:
        client = socket.create_connection(proxy.address, timeout=5)
        server, _ = srv.accept()
        server.settimeout(5)
        client.sendall(b"hi")
        assert server.recv(2, socket.MSG_WAITALL) == b"hi"
        assert proxy.reset() == 1
        with pytest.raises(ConnectionResetError):
            client.recv(1)
        with pytest.raises(ConnectionResetError):
            server.recv(1)
        assert proxy.stats().resets == 1 and proxy.stats().active == 0
        # New connections still work after a reset.
        with socket.create_connection(proxy.address, timeout=5):
            srv.accept()[0].close()
        client.close()
        server.close()


def test_proxy_refuse_and_unreachable_target() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv, FaultProxy(srv.getsockname()[:2]) as proxy:
        kept = socket.create_connection(proxy.address, timeout=5)
        server, _ = srv.accept()
        proxy.refuse = True
        proxy.refuse = True  # idempotent
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=5)
        kept.sendall(b"ok")  # an open connection goes on
        server.settimeout(5)
        assert server.recv(2, socket.MSG_WAITALL) == b"ok"
        proxy.refuse = False
        try:
            socket.create_connection(proxy.address, timeout=5).close()
        except OSError as exc:
            pytest.fail(f"no connection once refuse is off: {exc!r}, {proxy.stats()}")
        kept.close()
        server.close()
    with listener(("127.0.0.1", 0)) as gone:
        dead_port = gone.getsockname()[1]
    with FaultProxy(("127.0.0.1", dead_port)) as proxy:
        # The proxy accepts, fails to reach the target and resets: maybe before connect() returns.
        with pytest.raises(ConnectionResetError), socket.create_connection(proxy.address, timeout=5) as c:
            c.recv(1)
        assert proxy.stats().failed == 1


# -- cleanup ----------------------------------------------------------------------------------------


def test_teardown_kills_processes_and_removes_everything() -> None:
    with NetLab(["a"], term_timeout=0.5) as lab:
        a = lab.hosts["a"]
        a.loss(0.5)
        polite = a.python("import time; print('up', flush=True); time.sleep(60)")
        deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
        stubborn = a.python(deaf + "; print('up', flush=True); time.sleep(60)")
        assert read_line(polite) == read_line(stubborn) == "up"
        found = lab.resources()
        assert sorted(found["netns"]) == sorted([lab.switch_ns, a.ns]) and found["links"] == [lab.gateway_link]
        assert (netlab.RUN_DIR / lab.id).exists()
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    assert_gone(lab.id)
    with pytest.raises(NetLabError):
        lab.add_host("late")


def test_a_setup_failing_halfway_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    real_ip = netlab._ip

    def failing_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[:2] == ("-n", f"{lab.id}-b") and "addr" in args:
            raise NetLabError("injected failure")
        return real_ip(*args, check=check)

    lab = NetLab(["a", "b", "c"])
    monkeypatch.setattr(netlab, "_ip", failing_ip)
    with pytest.raises(NetLabError, match="injected"), lab:
        pytest.fail("entered a lab whose setup failed")
    monkeypatch.undo()
    assert_gone(lab.id)


def test_sweep_stale_removes_a_crashed_labs_leftovers() -> None:
    code = "import netlab, time\nlab = netlab.NetLab(['x']).__enter__()\nprint(lab.id, flush=True)\ntime.sleep(60)"
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env) as child:
        try:
            lab_id = read_line(child, timeout=15)
            assert sorted(lab_resources(lab_id)["netns"]) == [lab_id, f"{lab_id}-x"]
            assert lab_id not in sweep_stale()  # its owner is alive: left alone
        finally:
            child.kill()  # a crash: no teardown runs
        child.wait(5)
    assert lab_resources(lab_id)["links"] == [f"{lab_id}gw"]  # it left everything behind
    assert lab_id in sweep_stale()
    assert_gone(lab_id)


def test_sweep_stale_removes_leftovers_without_a_marker() -> None:
    orphan = "nl" + os.urandom(3).hex()
    subprocess.run(["ip", "netns", "add", f"{orphan}-x"], check=True)
    subprocess.run(["ip", "link", "add", f"{orphan}gw", "type", "veth", "peer", "name", f"{orphan}g"], check=True)
    assert sorted(lab_resources(orphan)["links"]) == [f"{orphan}g", f"{orphan}gw"]
    assert orphan in sweep_stale()
    assert_gone(orphan)


def test_labs_side_by_side_get_distinct_names_and_subnets() -> None:
    with NetLab(["a"]) as one, NetLab(["a"]) as two:
        assert one.id != two.id and one.subnet != two.subnet
        assert all(len(name) <= 15 for name in [one.bridge, one.gateway_link, one.hosts["a"].veth])
        for lab in (one, two):
            assert echo_once((lab.hosts["a"].ip, start_echo(lab.hosts["a"]))) == b"ping"
