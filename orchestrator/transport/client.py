"""The asyncio MQTT client: the only module that touches paho-mqtt.

paho runs its network loop on a thread of its own (so keep-alive and reconnection go on even while
user code blocks the event loop); its callbacks do nothing but hand events to the event loop with
``call_soon_threadsafe``.  Above this module nobody sees a paho callback or a thread.

What it adds to paho:

* ``TCP_NODELAY`` on every socket (paho never sets it: 44-88 ms stalls per QoS 1 round trip);
* a Last Will rebuilt before every connection attempt from a rising *birth counter*, so a late
  Will of an old connection can be told from the live one;
* reconnect with exponential backoff and fail-over over several broker URLs;
* awaitable ``publish`` (PUBACK for QoS 1) and ``subscribe`` (SUBACK), subscriptions restored on
  every reconnect;
* handlers and message streams dispatched on the event loop; a stream raises
  :class:`~orchestrator.errors.ConnectionLost` when the connection drops instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from orchestrator.errors import BrokerUnavailable, ConnectionLost, OrchestratorError
from orchestrator.protocol.matching import FilterTrie, topic_matches
from orchestrator.transport import tcpinfo

log = logging.getLogger("orchestrator.transport")

__all__ = ["Message", "MqttClient", "TlsSettings", "Will", "private_client_id"]


def private_client_id(prefix: str) -> str:
    """``prefix`` and 48 random bits: a client id no other identity can guess.

    Neither broker ties a client id to a username (mosquitto 2.0 cannot), and a CONNECT with a live
    connection's client id throws that connection off [MQTT-3.1.4-2]: with ``<robot>.part.<name>`` any
    identity of the robot, a viewer too, could keep a part off the broker.  One id per process (and its
    reconnects): a reconnect still takes over its own half-open link; a new process gets a new id (its
    predecessor's late Will carries an older birth and marks nothing offline)."""
    return f"{prefix}.{secrets.token_hex(6)}"


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """What a client needs to verify the broker (and, optionally, to present a certificate itself)."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


MAX_QUEUED = 10_000
MISC_MIN_S = 0.01
MISC_MAX_S = 1.0  # the keep-alive timer's longest sleep (it wakes when paho's next duty is due)
MISC_IDLE_S = 0.25  # while there is no socket

Handler = Callable[[Message], Awaitable[None] | None]
ConnectHook = Callable[[int], Awaitable[None]]
DisconnectHook = Callable[[str], Awaitable[None] | None]


@dataclass
class _Sub:
    filter: str
    qos: int
    handlers: list[Handler] = field(default_factory=list)


READ_CHUNK = 65536  # what one recv asks the kernel for (the event-loop mode's read buffer)


class _BufferedPaho(paho.Client):
    """paho reading its socket through a buffer of ours (the event-loop mode only).

    paho reads a packet's fixed header one byte at a time: three recv calls per packet at least, and our
    loop asked the kernel once more per packet whether another one was there.  This asks the kernel once
    for all it has and serves paho's small reads from that.  Nothing wakes a selector for bytes already
    in the buffer: :meth:`MqttClient._read` drains it (``buffered``).  The buffer is dropped with the socket
    (a new connection never reads the old one's bytes).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._rbuf = bytearray()
        super().__init__(*args, **kwargs)

    @property
    def buffered(self) -> int:
        return len(self._rbuf)

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._rbuf
        if not buf:
            data = super()._sock_recv(READ_CHUNK)  # BlockingIOError, OSError and b"" (end) as paho expects
            if len(data) <= bufsize:
                return data
            buf += data
        out = bytes(buf[:bufsize])
        del buf[:bufsize]
        return out

    def _sock_close(self) -> None:
        self._rbuf = bytearray()  # replaced, not cleared: a read under way keeps the old one
        super()._sock_close()


def next_birth(previous: int) -> int:
    """A birth counter that rises on every connection, also across process restarts."""
    return max(previous + 1, int(time.time() * 1000))


class MqttClient:
    """Asyncio MQTT 3.1.1 client with Will-per-birth, fail-over and reconnect.

    Use as an async context manager (``async with MqttClient(...) as c``): entering waits for the
    first connection (bounded by ``connect_timeout``), leaving disconnects cleanly (the broker then
    drops the Will).  ``close()`` is idempotent.
    """

    def __init__(
        self,
        client_id: str,
        urls: Sequence[tuple[str, int]],
        *,
        keepalive: int = 2,
        username: str | None = None,
        password: str | None = None,
        will: Callable[[int], Will] | None = None,
        clean_session: bool = True,
        connect_timeout: float = 10.0,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 2.0,
        threaded: bool = False,
        tls: TlsSettings | None = None,
        fail_fast: bool = False,
        batch_reads_s: float = 0.0,
        max_subscribe_qos: int = 1,
    ) -> None:
        """``fail_fast``: the first connection fails at once (``BrokerUnavailable``) when every URL
        refused it, instead of retrying until ``connect_timeout`` (a command line asking "is anybody
        there?"; a part keeps retrying).

        ``batch_reads_s``: after reading, leave the socket alone this long, then read everything that
        arrived meanwhile at once: a connection that hears many small messages and needs no low latency
        (the primary's heartbeat supervision) wakes the process at most ``1 / batch_reads_s`` times a
        second instead of once per message.  Each message is then handled up to that much later.

        ``max_subscribe_qos``: every subscription at most at this QoS (0: no broker-side acknowledgement
        state per subscription, which a NATS cluster keeps in JetStream; ``broker.subscribe_qos``)."""
        if not urls:
            raise ValueError("at least one broker URL is needed")
        self.client_id = client_id
        self.username = username
        self.password = password
        self.urls = list(urls)
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self._will_factory = will
        self.birth = 0
        self._url_index = 0
        self._attempt_failed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subs: dict[str, _Sub] = {}
        self._index = FilterTrie()  # the filters of _subs, for dispatch by topic
        self._subs_lock = threading.Lock()
        self._streams: set[_Stream] = set()
        self._pending_pub: dict[int, asyncio.Future[None]] = {}
        self._pending_sub: dict[int, asyncio.Future[list[int]]] = {}
        self._early_sub: dict[int, list[int]] = {}
        self._restoring: dict[int, tuple[str, int]] = {}  # mid of a resubscription on connect -> (filter, connection)
        self.resubscribe_refusals = 0  # SUBACKs that refused a subscription restored on reconnect
        self._pending_unsub: dict[int, asyncio.Future[None]] = {}
        self._connect_hooks: list[ConnectHook] = []
        self._disconnect_hooks: list[DisconnectHook] = []
        self.connected = asyncio.Event()
        self._first: asyncio.Future[None] | None = None
        self._closed = False
        self._started = False
        self.last_error: str | None = None
        self._fail_fast = fail_fast
        self._refused = 0
        self.connections = 0
        self.dropped_messages = 0
        self._bg: set[asyncio.Task[Any]] = set()
        self._socket_closed = threading.Event()
        self.threaded = threaded
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._loop_tid: int | None = None
        self._connector: asyncio.Task[None] | None = None
        self._misc: asyncio.Task[None] | None = None
        self._connack = asyncio.Event()
        self.batch_reads_s = max(0.0, batch_reads_s) if not threaded else 0.0
        self._rearm: asyncio.TimerHandle | None = None
        self._writer_fd: int | None = None  # the socket the loop watches for writability, if any
        self._write_soon = False  # a write of what paho queued is due on this turn of the loop
        self.after_batch: Callable[[], None] | None = None  # called after each batched read (on the loop)

        self.max_subscribe_qos = max_subscribe_qos
        self._paho = (paho.Client if threaded else _BufferedPaho)(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=paho.MQTTv311,
            reconnect_on_failure=True,
        )
        # paho's thread selects on the socket itself: only the event-loop mode reads through our buffer
        self._buffer = self._paho if isinstance(self._paho, _BufferedPaho) else None
        if username is not None:
            self._paho.username_pw_set(username, password)
        self.tls = tls
        if tls is not None:  # verify the broker's certificate and name (never tls_insecure)
            self._paho.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                               cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self._paho.reconnect_delay_set(reconnect_min_s, reconnect_max_s)  # type: ignore[arg-type]
        self._paho.max_inflight_messages_set(1000)
        # QoS 1 messages published while disconnected wait for the reconnect; bounded, in case it never comes
        self._paho.max_queued_messages_set(MAX_QUEUED)
        self._paho.on_pre_connect = self._on_pre_connect
        self._paho.on_connect = self._on_connect
        self._paho.on_connect_fail = self._on_connect_fail
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_message = self._on_message
        self._paho.on_publish = self._on_publish
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_unsubscribe = self._on_unsubscribe
        self._paho.on_socket_open = self._on_socket_open
        if not threaded:
            # paho driven by this event loop (as aiomqtt does): no thread hop per message
            self._paho.on_socket_close = self._on_socket_close
            self._paho.on_socket_register_write = self._on_socket_register_write
            self._paho.on_socket_unregister_write = self._on_socket_unregister_write

    # -- lifecycle --------------------------------------------------------------------------------
    async def __aenter__(self) -> MqttClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, wait: bool = True) -> None:
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._loop_tid = threading.get_ident()
        self._first = self._loop.create_future()
        host, port = self.urls[0]
        self._paho.connect_async(host, port, self.keepalive)
        if self.threaded:
            self._paho.loop_start()
        else:
            self._connector = self._loop.create_task(self._connect_loop(0.0), name=f"mqtt[{self.client_id}].connect")
            self._misc = self._loop.create_task(self._misc_loop(), name=f"mqtt[{self.client_id}].misc")
        if not wait:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._first), self.connect_timeout)
        except TimeoutError:
            await self.close()
            where = ", ".join(f"{h}:{p}" for h, p in self.urls)
            raise BrokerUnavailable(
                f"no MQTT broker reachable at {where} within {self.connect_timeout:g} s"
                + (f" (last error: {self.last_error})" if self.last_error else ""),
                urls=where,
            ) from None
        except BaseException:
            await self.close()
            raise

    async def close(self, *, disconnect: bool = True) -> None:
        """Disconnect (the broker discards the Will) and stop the network thread. Idempotent.

        ``disconnect=False`` drops the socket without DISCONNECT, so the broker publishes the Will
        (what a crash looks like from outside).
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._started:
                if disconnect:
                    await self._quiesce(1.0)
                    await self._drain(1.0)
                    with contextlib.suppress(Exception):
                        self._paho.disconnect()
                    # stop the network thread only once DISCONNECT is on the wire: stopping it earlier can
                    # leave the socket to be closed without it, and the broker then publishes our Will
                    if self.is_connected:
                        await asyncio.to_thread(self._socket_closed.wait, 2.0)
                else:
                    with contextlib.suppress(Exception):
                        sock = self._paho.socket()
                        if sock is not None:
                            if not self.threaded:
                                self._forget_socket(sock)
                            sock.close()
                if self.threaded:
                    await asyncio.to_thread(self._paho.loop_stop)
        finally:
            self.connected.clear()
            self._fail_all(ConnectionLost("client closed"))
            tasks = [t for t in (self._connector, self._misc) if t is not None]
            for t in [*tasks, *self._bg]:
                t.cancel()
            if not self.threaded:
                with contextlib.suppress(Exception):
                    sock = self._paho.socket()
                    if sock is not None:
                        self._forget_socket(sock)
                        sock.close()

    async def _quiesce(self, timeout: float) -> None:
        """Unsubscribe from everything and wait (bounded) for the UNSUBACK, before DISCONNECT.

        A socket closed with unread data in it is reset (RST), not closed: a broker still delivering to
        us then lost our DISCONNECT with the rest of its receive queue and published our Will (seen on
        the embedded broker while parts stopped).  After the UNSUBACK nothing more is delivered.
        """
        if not self.is_connected or not self._subs or self.threaded:
            return
        self._read_unbatched()
        rc, mid = self._paho.unsubscribe(list(self._subs))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending_unsub[mid] = fut
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            log.info("%s: no UNSUBACK within %.1f s; disconnecting anyway", self.client_id, timeout)
        self._pending_unsub.pop(mid, None)

    def _read_unbatched(self) -> None:
        """Closing: read as soon as anything arrives.  A batched reader (``batch_reads_s``) between two
        batches is re-armed by ``_watch_again``, which does nothing once the client is closed: the
        UNSUBACK was never read and every close of the primary waited out the whole quiesce bound."""
        if not self.batch_reads_s:
            return
        self.batch_reads_s = 0.0
        if self._rearm is not None:
            self._rearm.cancel()
            self._rearm = None
        sock = self._paho.socket()
        if sock is None or self._loop is None or self._loop.is_closed():
            return
        fd = sock.fileno()
        with contextlib.suppress(Exception):
            self._loop.remove_reader(fd)
        self._watch_socket(fd)

    async def _drain(self, timeout: float) -> None:
        """Wait (bounded) until paho has no unacknowledged QoS 1 message and nothing left to write.

        Sending DISCONNECT while paho still has acknowledgements outstanding was seen to corrupt the
        stream (mosquitto: "disconnected due to out of memory"), so the broker published our Will
        after a clean close.  paho exposes no public way to ask, hence the private attributes.
        """
        end = time.monotonic() + timeout
        while self.is_connected and time.monotonic() < end:
            if not getattr(self._paho, "_out_messages", None) and not getattr(self._paho, "_out_packet", None):
                return
            await asyncio.sleep(0.002)

    def tcp_info(self) -> tcpinfo.TcpInfo | None:
        """The kernel's view of the connection to the broker (None: not connected, or not Linux)."""
        sock = self._paho.socket()
        return None if sock is None else tcpinfo.tcp_info(sock)

    @property
    def is_connected(self) -> bool:
        return self.connected.is_set()

    @property
    def url(self) -> str:
        h, p = self.urls[self._url_index]
        return f"mqtt://{h}:{p}"

    def on_connect(self, hook: ConnectHook) -> None:
        """``hook(birth)`` runs on the event loop after every (re)connection, subscriptions restored."""
        self._connect_hooks.append(hook)

    def on_disconnect(self, hook: DisconnectHook) -> None:
        """``hook(reason)`` runs on the event loop whenever an established connection is lost."""
        self._disconnect_hooks.append(hook)

    # -- publish / subscribe ----------------------------------------------------------------------
    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *, timeout: float | None = None
    ) -> None:
        """Publish; for QoS 1 wait for the broker's PUBACK (bounded by ``timeout`` if given).

        QoS 0 while disconnected raises :class:`ConnectionLost`; QoS 1 is queued by paho and sent
        after the reconnect.
        """
        self._check_open()
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._flush()
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            raise ConnectionLost(f"not connected: QoS 0 publish to {topic} dropped", topic=topic)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise ConnectionLost(f"publish to {topic} failed: {paho.error_string(info.rc)}", topic=topic)
        if qos == 0:
            return
        mid = info.mid
        # paho runs on_publish before it marks the message published, and our _published() runs on this
        # loop only after this synchronous stretch: either the PUBACK is fully processed already, or the
        # posted _published() will find the future registered below.  (Recording "early" mids instead
        # would go stale when paho reuses a mid.)
        if info.is_published():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending_pub[mid] = fut
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it can lose a cancellation in 3.11
                await fut
        finally:
            self._pending_pub.pop(mid, None)

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Fire and forget.  True if the message was sent, or (QoS 1) queued while disconnected: paho sends
        queued QoS 1 messages after the reconnect.  False if it was dropped (QoS 0 while disconnected)."""
        if self._closed:
            return False
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._flush()
            return True
        return info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0

    def _flush(self) -> None:
        """Write what paho queued now rather than on the loop's next turn (the message leaves when this
        returns; one loop iteration less per call).  Not from inside a paho callback: paho itself
        writes only outside them."""
        if self.threaded or threading.get_ident() != self._loop_tid or not self.is_connected:
            return
        lock = getattr(self._paho, "_in_callback_mutex", None)
        if lock is None or not lock.acquire(False):
            return
        lock.release()
        with contextlib.suppress(Exception):
            self._paho.loop_write()

    async def subscribe(self, filter_: str, handler: Handler | None = None, qos: int = 1) -> None:
        """Subscribe (restored after every reconnect) and wait for the SUBACK.  ``qos`` is capped at
        ``max_subscribe_qos``."""
        self._check_open()
        qos = min(qos, self.max_subscribe_qos)
        with self._subs_lock:
            sub = self._subs.get(filter_)
            if sub is None:
                sub = self._subs[filter_] = _Sub(filter_, qos)
                self._index.add(filter_)
            if handler is not None:
                sub.handlers.append(handler)
        if not self.is_connected:
            return  # sent by _on_connect
        rc, mid = self._paho.subscribe(filter_, qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return  # not connected any more: _on_connect will send it
        if mid in self._early_sub:
            codes = self._early_sub.pop(mid)
        else:
            fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
            self._pending_sub[mid] = fut
            try:
                async with asyncio.timeout(self.connect_timeout):
                    codes = await fut
            except TimeoutError:
                raise ConnectionLost(f"no SUBACK for {filter_}") from None
            finally:
                self._pending_sub.pop(mid, None)
        if any(c >= 0x80 for c in codes):
            raise OrchestratorError(f"broker refused subscription to {filter_}", filter=filter_)

    async def unsubscribe(self, filter_: str) -> None:
        with self._subs_lock:
            self._subs.pop(filter_, None)
            self._index.discard(filter_)
        if self.is_connected:
            self._paho.unsubscribe(filter_)

    @contextlib.asynccontextmanager
    async def messages(self, *filters: str, qos: int = 1, maxsize: int = 10000) -> AsyncIterator[_Stream]:
        """A stream of messages matching ``filters``; raises ConnectionLost when the link drops."""
        stream = _Stream(self, filters, maxsize)
        self._streams.add(stream)
        try:
            for f in filters:
                await self.subscribe(f, qos=qos)
            yield stream
        finally:
            self._streams.discard(stream)

    # -- internals --------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionLost("client is closed")

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_tid:
            fn(*args)  # paho driven by this loop: already on the right thread
            return
        with contextlib.suppress(RuntimeError):  # loop closed under us during interpreter exit
            loop.call_soon_threadsafe(fn, *args)

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._bg.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._bg.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: background task %s failed", self.client_id, task.get_name(), exc_info=task.exception())

    def _fail_all(self, exc: OrchestratorError) -> None:
        for stream in list(self._streams):
            stream._fail(exc)

    # paho on the event loop ---------------------------------------------------------------------
    async def _connect_loop(self, first_delay: float) -> None:
        """Connect, and reconnect with exponential backoff, trying the URLs in turn (paho's
        ``reconnect`` calls ``_on_pre_connect``, which picks the URL and sets the Will)."""
        delay = max(first_delay, 0.0)
        loop = asyncio.get_running_loop()
        while not self._closed:
            if delay:
                await asyncio.sleep(delay)
            delay = min(max(delay * 2, self._reconnect_min_s), self._reconnect_max_s)
            self._connack.clear()
            try:
                await loop.run_in_executor(None, self._paho.reconnect)
            except (OSError, ValueError) as exc:  # refused, unreachable, timed out
                self.last_error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, ConnectionRefusedError) and self._fail_fast and self.connections == 0:
                    self._refused += 1
                    if self._refused >= len(self.urls):
                        where = ", ".join(f"{h}:{p}" for h, p in self.urls)
                        self._fail_first(BrokerUnavailable(
                            f"no MQTT broker at {where} (connection refused): is the robot running?", urls=where))
                        return
                continue
            if self._closed:
                return
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await self._connack.wait()
            except TimeoutError:
                self.last_error = "no CONNACK"
            if self.is_connected:
                return
            with contextlib.suppress(Exception):
                sock = self._paho.socket()
                if sock is not None:
                    self._forget_socket(sock)
                    sock.close()

    async def _misc_loop(self) -> None:
        """paho's housekeeping: keep-alive pings, and noticing a broker that stopped answering them."""
        while not self._closed:
            await asyncio.sleep(self._misc_delay())
            if self._paho.socket() is not None:
                self._paho.loop_misc()

    def _misc_delay(self) -> float:
        """Until paho's next keep-alive duty (a PINGREQ after ``keepalive`` without traffic either way, or
        giving up on an unanswered one), at most MISC_MAX_S: a connection that publishes or hears something
        every keep-alive period is not woken four times a second for nothing."""
        p = self._paho
        if p.socket() is None:
            return MISC_IDLE_S
        try:
            due = min(p._last_msg_out, p._last_bytes_received) + self.keepalive  # paho's clock: time.monotonic
            if p._ping_t > 0:
                due = min(due, p._ping_t + self.keepalive)
            return min(max(due - time.monotonic(), MISC_MIN_S), MISC_MAX_S)
        except (AttributeError, TypeError):  # another paho: the old fixed pace
            return MISC_IDLE_S

    def _in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_tid:
            fn(*args)
        else:  # paho's reconnect runs in an executor thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    def _read(self) -> None:
        """Read every packet already received, not one per wake-up of the loop (paho reads one packet per
        ``loop_read``): a primary hearing 50 parts' heartbeats wakes up once per batch, not per message."""
        buf = self._buffer
        self._paho.loop_read()
        for _ in range(256):  # bounded: a flood of packets yields to the rest of the loop
            sock = self._paho.socket()
            if sock is None:
                return
            if buf is not None and buf.buffered:
                self._paho.loop_read()  # read from the kernel already, waiting in our buffer
                continue
            pending = getattr(sock, "pending", None)
            if pending is not None:  # TLS: what the SSL layer already decrypted does not wake the loop
                if not pending():
                    return
            else:
                try:
                    if not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):  # type: ignore[call-arg]
                        return  # end of stream: the next wake-up lets paho see it
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return
            self._paho.loop_read()
        if buf is not None and buf.buffered and not self.batch_reads_s and self._loop is not None:
            self._loop.call_soon(self._read_on)  # bytes in our buffer wake no selector

    def _read_on(self) -> None:
        if not self._closed and self._paho.socket() is not None:
            self._read()

    def _read_batch(self, fd: int) -> None:
        """``batch_reads_s``: read what is there, then stop watching the socket for a while."""
        self._read()
        if self.after_batch is not None:
            try:
                self.after_batch()
            except Exception:
                log.exception("%s: after_batch failed", self.client_id)
        loop = self._loop
        if loop is None or loop.is_closed() or self._rearm is not None:
            return
        with contextlib.suppress(Exception):
            loop.remove_reader(fd)
        self._rearm = loop.call_later(self.batch_reads_s, self._watch_again, fd)

    def _watch_again(self, fd: int) -> None:
        self._rearm = None
        sock = self._paho.socket()
        if sock is None or self._closed:
            return
        with contextlib.suppress(Exception):
            if sock.fileno() == fd:  # not a closed socket's number, reused by another one
                self._watch_socket(fd)
                if self._buffer is not None and self._buffer.buffered and self._loop is not None:
                    self._loop.call_soon(self._read_batch, fd)  # left in our buffer: no selector wakes for it

    def _write(self) -> None:
        self._paho.loop_write()

    # Sockets are registered by file descriptor number, captured when paho calls us: a callback made
    # from the executor thread runs later on the loop, when paho may already have closed the socket.
    def _watch_socket(self, fd: int) -> None:
        if self._loop is not None and not self._loop.is_closed() and fd >= 0:
            if self.batch_reads_s:
                self._loop.add_reader(fd, self._read_batch, fd)
            else:
                self._loop.add_reader(fd, self._read)

    def _forget_fd(self, fd: int) -> None:
        if self._rearm is not None:
            self._rearm.cancel()
            self._rearm = None
        if self._loop is None or self._loop.is_closed() or fd < 0:
            return
        with contextlib.suppress(Exception):
            self._loop.remove_reader(fd)
        if self._writer_fd == fd:
            self._writer_fd = None
        with contextlib.suppress(Exception):
            self._loop.remove_writer(fd)

    def _forget_socket(self, sock: Any) -> None:
        with contextlib.suppress(Exception):
            self._forget_fd(sock.fileno())

    def _add_writer(self, fd: int) -> None:
        if self._writer_fd == fd:
            return
        if self._loop is not None and not self._loop.is_closed() and fd >= 0:
            with contextlib.suppress(Exception):
                self._loop.add_writer(fd, self._write)
                self._writer_fd = fd

    def _remove_writer(self, fd: int) -> None:
        if self._writer_fd != fd:  # not watched: asyncio would still rewrite the reader's registration
            return
        self._writer_fd = None
        if self._loop is not None and not self._loop.is_closed() and fd >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(fd)

    def _write_pending(self) -> None:
        """What paho queued on this turn of the loop, written now; the socket is watched for writability
        only if the kernel did not take it all (a publish cost two epoll_ctl calls before: watch, then
        unwatch once :meth:`_flush` had written it)."""
        try:
            sock = self._paho.socket()
            if sock is not None and self._paho.want_write():
                with contextlib.suppress(Exception):
                    self._paho.loop_write()  # outside any paho callback: a turn of the loop of its own
                sock = self._paho.socket()
                if sock is not None and self._paho.want_write():
                    self._add_writer(sock.fileno())
        finally:
            self._write_soon = False

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._forget_fd, sock.fileno())

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        loop = self._loop
        if threading.get_ident() != self._loop_tid or loop is None or loop.is_closed():
            self._in_loop(self._add_writer, sock.fileno())  # paho's reconnect, in an executor thread
        elif self._writer_fd is None and not self._write_soon:
            # on the loop: a publish, flushed at once by _flush, or (inside a paho callback) at the end of
            # this turn; the loop watches the socket only for what the kernel could not take then
            self._write_soon = True
            loop.call_soon(self._write_pending)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._remove_writer, sock.fileno())

    # paho thread (threaded mode) or this loop -------------------------------------------------
    def _on_pre_connect(self, client: paho.Client, userdata: Any) -> None:
        try:
            if self._attempt_failed and len(self.urls) > 1:
                self._url_index = (self._url_index + 1) % len(self.urls)
            host, port = self.urls[self._url_index]
            # paho's host/port setters refuse while its state is "connecting", which it already is
            # when this callback runs; this is the documented-by-source way to fail over.
            client._host = host
            client._port = port
            self._attempt_failed = True  # cleared by a successful CONNACK
            self.birth = next_birth(self.birth)
            if self._will_factory is not None:
                w = self._will_factory(self.birth)
                client.will_set(w.topic, w.payload, w.qos, w.retain)
        except Exception:  # a raising callback kills paho's thread
            log.exception("%s: pre-connect failed", self.client_id)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        try:
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except Exception:
            log.exception("%s: cannot set TCP_NODELAY", self.client_id)
        if not self.threaded:
            self._in_loop(self._watch_socket, sock.fileno())

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._socket_closed.clear()
        try:
            if rc.is_failure:
                self.last_error = f"broker refused the connection: {rc}"
                if rc.value in (0x86, 0x87, 0x04, 0x05):  # bad credentials / not authorised
                    self._post(self._fail_first, BrokerUnavailable(self.last_error))
                return
            self._attempt_failed = False
            self.connections += 1
            with self._subs_lock:
                subs = list(self._subs.values())
            connection = self.connections
            with self._subs_lock:
                self._restoring.clear()  # the SUBACKs of an earlier connection will never come
            for s in subs:
                rc_sub, mid = client.subscribe(s.filter, s.qos)
                if rc_sub == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                    with self._subs_lock:
                        self._restoring[mid] = (s.filter, connection)
            self._post(self._connected, self.birth)
        except Exception:
            log.exception("%s: on_connect failed", self.client_id)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self.last_error = "connection attempt failed"

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._socket_closed.set()
        try:
            self._post(self._disconnected, str(rc))
        except Exception:
            log.exception("%s: on_disconnect failed", self.client_id)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            self._post(self._dispatch, Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))
        except Exception:
            log.exception("%s: on_message failed", self.client_id)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._post(self._published, mid)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        try:
            values = [int(getattr(c, "value", c)) for c in codes]
        except Exception:
            values = [0x80]
        self._post(self._subscribed, mid, values)

    # event loop -------------------------------------------------------------------------------
    def _fail_first(self, exc: OrchestratorError) -> None:
        if self._first is not None and not self._first.done():
            self._first.set_exception(exc)

    def _connected(self, birth: int) -> None:
        if self._closed:
            return
        self.connected.set()
        self._connack.set()
        if self._first is not None and not self._first.done():
            self._first.set_result(None)
        for hook in self._connect_hooks:
            self._spawn(hook(birth), f"mqtt[{self.client_id}].on_connect")

    def _disconnected(self, reason: str) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        self._connack.set()  # a connection attempt that ended before CONNACK
        if not self.threaded and was and not self._closed and (self._connector is None or self._connector.done()):
            self._connector = asyncio.ensure_future(self._connect_loop(self._reconnect_min_s))
        if not was:
            return
        self._fail_all(ConnectionLost(f"connection to {self.url} lost: {reason}", reason=reason))
        if self._closed:
            return
        for hook in self._disconnect_hooks:
            try:
                r = hook(reason)
                if r is not None:
                    self._spawn(r, f"mqtt[{self.client_id}].on_disconnect")
            except Exception:
                log.exception("%s: disconnect hook failed", self.client_id)

    def _published(self, mid: int) -> None:
        fut = self._pending_pub.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_unsubscribe(self, client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self._post(self._unsubscribed, mid)

    def _unsubscribed(self, mid: int) -> None:
        fut = self._pending_unsub.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _subscribed(self, mid: int, codes: list[int]) -> None:
        with self._subs_lock:
            restored = self._restoring.pop(mid, None)
        if restored is not None:
            if any(c >= 0x80 for c in codes):
                self.resubscribe_refusals += 1
                log.warning("%s: the broker refused the restored subscription to %s (SUBACK %s): retrying",
                            self.client_id, restored[0], codes)
                self._spawn(self._restore_again(*restored), f"mqtt[{self.client_id}].resubscribe[{restored[0]}]")
            return
        fut = self._pending_sub.pop(mid, None)
        if fut is None:
            self._early_sub[mid] = codes
        elif not fut.done():
            fut.set_result(codes)

    async def _restore_again(self, filter_: str, connection: int) -> None:
        """A subscription restored on reconnect was refused (a NATS cluster does so while JetStream elects
        its leaders): subscribe again, backing off up to ``reconnect_max_s``, for as long as this connection
        lasts and the filter is wanted; a new connection restores it anyway.  Left deaf on that topic, a
        part would look connected and hear nothing."""
        delay = max(self._reconnect_min_s, 0.25)
        while not self._closed and self.is_connected and self.connections == connection:
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(self._reconnect_max_s, 0.25))
            with self._subs_lock:
                sub = self._subs.get(filter_)
            if sub is None or not self.is_connected or self.connections != connection:
                return
            try:
                await self.subscribe(filter_, qos=sub.qos)
            except ConnectionLost:
                return
            except OrchestratorError as exc:
                self.resubscribe_refusals += 1
                log.warning("%s: %s: retrying", self.client_id, exc)
                continue
            log.warning("%s: the subscription to %s is restored", self.client_id, filter_)
            return

    def _dispatch(self, msg: Message) -> None:
        with self._subs_lock:
            subs = [sub for f in self._index.match(msg.topic) if (sub := self._subs.get(f)) and sub.handlers]
        for s in subs:
            for h in s.handlers:
                try:
                    r = h(msg)
                    if r is not None:
                        self._spawn(r, f"mqtt[{self.client_id}].handler[{s.filter}]")
                except Exception:
                    log.exception("%s: handler for %s failed on %s", self.client_id, s.filter, msg.topic)
        for stream in list(self._streams):
            if any(topic_matches(f, msg.topic) for f in stream.filters):
                stream._put(msg)


class _Stream:
    """Async iterator of messages; raises ConnectionLost when the connection drops."""

    def __init__(self, client: MqttClient, filters: Sequence[str], maxsize: int) -> None:
        self._client = client
        self.filters = tuple(filters)
        self._q: asyncio.Queue[Message | OrchestratorError] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _put(self, msg: Message) -> None:
        try:
            self._q.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped += 1
            self._client.dropped_messages += 1

    def _fail(self, exc: OrchestratorError) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._q.put_nowait(exc)

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Message:
        item = await self._q.get()
        if isinstance(item, OrchestratorError):
            raise item
        return item

    async def get(self, timeout: float | None = None) -> Message:
        if timeout is None:
            return await self.__anext__()
        return await asyncio.wait_for(self.__anext__(), timeout)
