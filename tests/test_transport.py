"""The transport on real brokers: clean close, fail-over, reconnect with resubscription, streams."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
from brokers import BrokerInfo, free_port, start_mosquitto

from orchestrator.errors import BrokerUnavailable, ConnectionLost
from orchestrator.transport.client import Message, MqttClient, Will


@pytest.mark.timeout(30)
async def test_a_clean_close_never_publishes_the_will(broker: BrokerInfo) -> None:
    """Regression: DISCONNECT sent with acknowledgements outstanding corrupted the stream (Will sent)."""
    prefix = f"t/{uuid.uuid4().hex[:8]}"
    wills: list[bytes] = []
    async with MqttClient(f"w-{prefix}", [(broker.host, broker.port)]) as watcher:
        await watcher.subscribe(f"{prefix}/#", lambda m: wills.append(m.payload) if m.topic.endswith("will") else None)
        for i in range(20):
            c = MqttClient(f"c{i}-{prefix}", [(broker.host, broker.port)],
                           will=lambda _b: Will(f"{prefix}/will", b"dead", retain=False))
            await c.subscribe(f"{prefix}/x/{i}/#", lambda m: None)
            await c.start()
            c.publish_nowait(f"{prefix}/data", b"hello", qos=1)
            await c.close()
        # a last client whose Will we do want: proves the watcher would have seen Wills
        last = MqttClient(f"last-{prefix}", [(broker.host, broker.port)],
                          will=lambda _b: Will(f"{prefix}/will", b"crashed", retain=False))
        await last.start()
        got = asyncio.Event()
        await watcher.subscribe(f"{prefix}/will", lambda m: got.set() if m.payload == b"crashed" else None)
        await last.close(disconnect=False)
        await asyncio.wait_for(got.wait(), 10)
    assert wills == [b"crashed"]


@pytest.mark.timeout(30)
async def test_fail_over_to_the_next_url_and_rising_births() -> None:
    dead = ("127.0.0.1", free_port())  # nothing listens here
    with start_mosquitto() as info:
        c = MqttClient(f"fo-{uuid.uuid4().hex[:6]}", [dead, (info.host, info.port)], connect_timeout=10,
                       reconnect_min_s=0.05, reconnect_max_s=0.2)
        async with c:
            assert c.url == info.url
            assert c.birth > 0


@pytest.mark.timeout(30)
async def test_nothing_to_connect_to_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}"):
        async with MqttClient("nobody", [("127.0.0.1", port)], connect_timeout=0.5):
            pass


@pytest.mark.timeout(40)
async def test_reconnect_restores_subscriptions_and_streams_raise_connection_lost() -> None:
    port = free_port()
    prefix = f"r/{uuid.uuid4().hex[:8]}"
    births: list[int] = []
    with start_mosquitto(port) as info:
        c = MqttClient(f"rc-{prefix}", [(info.host, port)], reconnect_min_s=0.05, reconnect_max_s=0.2)
        got: asyncio.Queue[Message] = asyncio.Queue()
        await c.subscribe(f"{prefix}/#", got.put_nowait)

        async def on_connect(birth: int) -> None:
            births.append(birth)

        c.on_connect(on_connect)
        await c.start()
        sock = c._paho.socket()
        assert sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        async with c.messages(f"{prefix}/stream") as stream:
            pass_through = stream
        lost = asyncio.Event()
        c.on_disconnect(lambda _r: lost.set())
        async with c.messages(f"{prefix}/stream") as stream:
            assert stream is not pass_through
            # kill the broker: the stream raises, the client reconnects once it is back
            info_dir = info.log_path.parent if info.log_path else None
            assert info_dir is not None
            proc = await asyncio.create_subprocess_exec("pkill", "-KILL", "-f", f"mosquitto -c {info_dir}")
            await proc.wait()
            with pytest.raises(ConnectionLost):
                await stream.get(timeout=10)
        await asyncio.wait_for(lost.wait(), 10)
    with start_mosquitto(port):
        await asyncio.wait_for(c.connected.wait(), 15)
        await c.publish(f"{prefix}/again", b"1", qos=1, timeout=5)
        msg = await asyncio.wait_for(got.get(), 5)
        assert msg.topic == f"{prefix}/again"
        assert len(births) >= 2 and births[-1] > births[0]
        await c.close()


class _ScriptedBroker:
    """A minimal MQTT 3.1.1 server for one behaviour no real broker shows on demand: it refuses the
    first SUBSCRIBE of its second connection (what a NATS cluster does while JetStream elects leaders,
    docs/brokers.md) and grants every other one; it then sends one PUBLISH to each granted filter."""

    def __init__(self) -> None:
        self.connections = 0
        self.subscribes: list[tuple[int, str]] = []  # (connection, filter)
        self.drop_first = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> _ScriptedBroker:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @staticmethod
    async def _packet(r: asyncio.StreamReader) -> tuple[int, bytes]:
        head = (await r.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            b = (await r.readexactly(1))[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return head, await r.readexactly(length)

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = self.connections
        refused_once = False
        try:
            while True:
                head, body = await self._packet(r)
                kind = head >> 4
                if kind == 1:  # CONNECT
                    w.write(b"\x20\x02\x00\x00")
                elif kind == 8:  # SUBSCRIBE: packet id, then (length, filter, qos)
                    pid, flen = body[:2], int.from_bytes(body[2:4], "big")
                    filter_ = body[4:4 + flen].decode()
                    self.subscribes.append((n, filter_))
                    refuse = n == 2 and not refused_once
                    refused_once = refused_once or refuse
                    w.write(b"\x90\x03" + pid + (b"\x80" if refuse else b"\x00"))
                    if not refuse and n > 1:
                        topic = filter_.encode()
                        msg = len(topic).to_bytes(2, "big") + topic + f"hello {n}".encode()
                        w.write(bytes([0x30, len(msg)]) + msg)
                elif kind == 12:  # PINGREQ
                    w.write(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    return
                await w.drain()
                if n == 1 and self.subscribes:
                    await self.drop_first.wait()
                    return  # the connection drops: the client reconnects and restores its subscription
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            w.close()


@pytest.mark.timeout(20)
async def test_a_restored_subscription_refused_by_the_broker_is_made_again() -> None:
    """Regression (docs/brokers.md, NATS): the transport ignored the SUBACKs of the subscriptions it
    restores on reconnect; one refused (0x80) left the client connected and deaf on that topic."""
    async with _ScriptedBroker() as broker:
        got: list[bytes] = []
        heard = asyncio.Event()

        def on_message(m: Message) -> None:
            got.append(m.payload)
            heard.set()

        async with MqttClient(f"rs-{uuid.uuid4().hex[:6]}", [("127.0.0.1", broker.port)],
                              reconnect_min_s=0.05, reconnect_max_s=0.2) as c:
            await c.subscribe("robot/ctl", on_message, qos=1)
            broker.drop_first.set()
            await asyncio.wait_for(heard.wait(), 10)
            assert got == [b"hello 2"]
            assert broker.subscribes == [(1, "robot/ctl"), (2, "robot/ctl"), (2, "robot/ctl")]
            assert c.resubscribe_refusals == 1
            assert c.connections == 2


@pytest.mark.timeout(30)
async def test_a_batched_reader_closed_between_two_batches_reads_its_unsuback(
        broker: BrokerInfo, caplog: pytest.LogCaptureFixture) -> None:
    """Regression: a client reading in batches (the primary's supervision connection) that was closed
    between two batches never read its UNSUBACK (the reader was re-armed only while not closed), so
    every close of a primary waited out the quiesce bound: one second per robot, per test robot too."""
    prefix = f"t/{uuid.uuid4().hex[:8]}"
    url = [(broker.host, broker.port)]
    closing: list[asyncio.Task[None]] = []
    arrived = asyncio.Event()
    async with MqttClient(f"p-{prefix}", url) as publisher:
        watch = MqttClient(f"w-{prefix}", url, batch_reads_s=0.05)
        unsubscribing: list[asyncio.Future[None]] = []

        class Pending(dict):  # type: ignore[type-arg]  # sees the future close() waits on for the UNSUBACK
            def __setitem__(self, mid: int, fut: asyncio.Future[None]) -> None:
                unsubscribing.append(fut)
                super().__setitem__(mid, fut)

        watch._pending_unsub = Pending()
        # closed from the handler itself: right after a batch, while the reader waits to be re-armed
        await watch.subscribe(f"{prefix}/beat",
                              lambda m: (closing.append(asyncio.ensure_future(watch.close())), arrived.set()))
        await watch.start()
        with caplog.at_level("INFO", logger="orchestrator.transport"):
            publisher.publish_nowait(f"{prefix}/beat", b"x", qos=1)
            async with asyncio.timeout(10):
                await arrived.wait()
                await closing[0]
    got = unsubscribing[0] if len(unsubscribing) == 1 else None
    assert got is not None and got.done() and not got.cancelled(), "close() gave up waiting for the UNSUBACK"
    assert not [r for r in caplog.records if "no UNSUBACK" in r.getMessage()], caplog.text


def test_tcp_info_reads_the_kernels_view_of_a_real_connection() -> None:
    """The fields the echo check relies on (transport/tcpinfo.py), read from a real loopback connection:
    data segments from the peer are counted, the peer's silence is renewed by what it sends, and a healthy
    connection shows no loss under recovery."""
    import time

    from orchestrator.transport.tcpinfo import tcp_info

    with socket.create_server(("127.0.0.1", 0)) as srv:
        ours = socket.create_connection(srv.getsockname())
        theirs, _ = srv.accept()
        with ours, theirs:
            ours.sendall(b"heartbeat")
            assert theirs.recv(100) == b"heartbeat"
            before = tcp_info(ours)
            assert before is not None and before.data_segs_in == 0 and not before.recovering_a_loss()
            time.sleep(0.2)  # a bound, not a timing: the kernel counts in milliseconds
            assert tcp_info(ours).peer_silent_s >= 0.15  # type: ignore[union-attr]
            theirs.sendall(b"echo")
            assert ours.recv(100) == b"echo"
            after = tcp_info(ours)
            assert after is not None and after.data_segs_in == 1 and after.peer_silent_s < 0.15
        assert tcp_info(ours) is None  # closed: the kernel cannot say
    assert tcp_info(object()) is None  # not a socket


@pytest.mark.timeout(60)
@pytest.mark.parametrize("batch_reads_s", [0.0, 0.05], ids=["each-wake-up", "batched"])
async def test_a_burst_is_read_through_the_buffer_whole_in_order_and_with_few_recv_calls(
        broker: BrokerInfo, batch_reads_s: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """paho reads a packet's header one byte at a time (three recv calls a packet and more); the event-loop
    mode reads what the kernel has at once and serves paho from a buffer of ours. A burst of far more
    packets than one read of the loop handles (256) waits in the kernel while the loop is held, then
    silence: what is left in our buffer wakes no selector, so the client must read on by itself, every
    packet, in order."""
    import fcntl
    import struct
    import termios
    import time

    import paho.mqtt.client as paho_mod
    from paho.mqtt.enums import CallbackAPIVersion

    calls = 0
    real = paho_mod.Client._sock_recv

    def counting(self: paho_mod.Client, bufsize: int) -> bytes:
        nonlocal calls
        calls += 1
        return real(self, bufsize)

    prefix = f"t/{uuid.uuid4().hex[:8]}"
    n = 3000
    got: list[bytes] = []
    done = asyncio.Event()

    def on(m: Message) -> None:
        got.append(m.payload)
        if len(got) == n:
            done.set()

    # a long keep-alive: no PINGRESP comes to wake a reader that left bytes in its buffer
    async with MqttClient(f"r-{prefix}", [(broker.host, broker.port)], keepalive=60,
                          batch_reads_s=batch_reads_s) as reader:
        await reader.subscribe(f"{prefix}/#", on, qos=0)
        writer = paho_mod.Client(CallbackAPIVersion.VERSION2, client_id=f"w-{prefix}",
                                 protocol=paho_mod.MQTTv311)
        writer.connect(broker.host, broker.port, 30)
        writer.loop_start()
        try:
            packet = 2 + 2 + len(f"{prefix}/m") + 4  # fixed header, topic length, topic, payload (at most)
            sock = reader._paho.socket()
            assert sock is not None
            monkeypatch.setattr(paho_mod.Client, "_sock_recv", counting)
            for i in range(n):
                writer.publish(f"{prefix}/m", f"{i:04d}".encode(), qos=0)
            # hold the reader's loop until the whole burst waits in its socket's receive queue (bounded)
            until = time.monotonic() + 20
            while time.monotonic() < until:
                queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
                if queued >= n * packet:
                    break
                time.sleep(0.01)  # noqa: ASYNC251 (the loop is held on purpose)
            else:
                raise AssertionError(f"the burst did not reach the reader's socket ({queued} bytes)")
            await asyncio.wait_for(done.wait(), 10)
        finally:
            writer.loop_stop()
            writer.disconnect()
    assert got == [f"{i:04d}".encode() for i in range(n)]
    assert calls < n / 10, f"{calls} recv calls for {n} packets: the buffer is not used"
