"""amqtt 0.12.1 with the defects that touch liveness, safety and security fixed by subclassing.

Nothing in site-packages is patched.  The overridden methods are the ones whose behaviour is wrong;
each says which defect it fixes (see docs/brokers.md).  The public face is
:class:`orchestrator.broker.EmbeddedBroker`; this module is private machinery.

Overridden amqtt methods (all on ``amqtt.broker.Broker`` unless noted):

- ``BrokerProtocolHandler.handle_read_timeout``: keep-alive enforcement (amqtt does nothing).
- ``stream_connected``: our reader/writer adapters (bounded packet size, abortable close).
- ``_initialize_client_session``: only parses CONNECT (bounded in time); no session state is
  touched before the client is authenticated.
- ``_handle_client_session``: authentication first, the Will's topic checked against the publish rights
  (amqtt published a Will past the ACL), then take-over of a connection with the same
  client id (only by the same username: a client id is no credential), then the session (never one
  stored for another username); no retained messages pushed on connect.
- ``retain_message``: a quota of retained messages per identity (amqtt kept any number).
- ``add_subscription``: at most ``MAX_SUBSCRIPTIONS_PER_CLIENT`` filters per client (amqtt took any number).
- ``_handle_message_delivery``: payload size limit; keeps the publish QoS.
- ``_run_broadcast``: one copy per client at min(publish QoS, subscription QoS), receive ACL, a
  bounded queue per client, bounded offline queues.
- ``_publish_retained_messages_for_subscription``: receive ACL, QoS of the retained message.
- ``add_subscription``, ``_topic_filtering``: MQTT filter syntax and our ACL callback.
- ``_del_subscription``, ``_del_all_subscriptions``: a filter nobody subscribes to any more is forgotten.
- ``StreamReaderAdapter.read`` (our ``_Reader``): packet size limit, and a deadline on the rest of a
  packet once it has begun (a client stalled mid-packet held its connection forever).
- ``ProtocolHandler._reader_loop`` (``reader_loop.py``): the same loop without a task, a future and a
  timer per packet (``asyncio.wait_for`` on 3.11), and QoS 0 publishes routed without a task each;
  a SUBSCRIBE or UNSUBSCRIBE waits for the previous one's answer (``_Handler.in_order``: amqtt applied
  an UNSUBSCRIBE followed at once by a SUBSCRIBE in the wrong order).
- ``_initialize_client_session``: at most ``MAX_PREAUTH_PER_ADDRESS`` unfinished CONNECTs per
  non-loopback address, counted; amqtt's warning per failed connection is rate limited
  (:class:`PreauthLogLimit`).
- ``_create_ssl_context``: no client-certificate request (amqtt's ``CERT_OPTIONAL``): clients log in with
  a password, and Chromium cancels a WebSocket whose TLS server asks for a certificate (the web panel's
  ``wss://``: "WebSocket opening handshake was canceled"); TLS 1.2 at least.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import IDENTIFIER_REJECTED, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session
from amqtt.utils import gen_client_id

from orchestrator.protocol.matching import FilterTrie, topic_matches, valid_filter, valid_topic

from .auth import PasswordChecker
from .outbox import Outbox, Outgoing, encode_qos0_publish
from .reader_loop import reader_loop

__all__ = ["STAT_KEYS", "BrokerSettings", "FixedBroker", "PreauthLogLimit", "keepalive_deadline"]

log = logging.getLogger("orchestrator.broker")

Acl = Callable[[str | None, str, str], bool]

STAT_KEYS = (
    "connections",
    "auth_failures",
    "takeovers",
    "keepalive_drops",
    "disconnected_slow",
    "dropped_qos0",
    "dropped_offline",
    "oversize",
    "acl_denied",
    "stalled_packets",
    "takeovers_refused",
    "retained_refused",
    "subscriptions_refused",
    "preauth_failures",
    "preauth_refused",
)

CONNECT_TIMEOUT = 10.0  # a TCP connection that sends no CONNECT is closed after this
PACKET_TIMEOUT = 10.0  # a packet begun by a client without keep-alive must be complete within this
RAW_WRITE_HIGH_WATER = 256 * 1024  # bytes buffered for a client past which QoS 0 waits for the socket
ACL_CACHE_SIZE = 50_000
TAKEOVER_TIMEOUT = 5.0
CLOSE_TIMEOUT = 2.0
SUBSCRIBE_ORDER_TIMEOUT = 5.0  # the longest a SUBSCRIBE or UNSUBSCRIBE waits for the previous one's answer
SUBACK_FAILURE = 0x80
# filters one client may hold: amqtt took any number (each an entry the broker keeps, and walks whenever
# any client disconnects), so one credential could grow the broker inside `up` without bound.  A part
# of a 100-part robot holds a few dozen, the primary a few hundred.
MAX_SUBSCRIPTIONS_PER_CLIENT = 10_000
# connections from one (non-loopback) address that have not finished their CONNECT yet: a stranger on the
# network needs no credential to open TCP connections, each held up to CONNECT_TIMEOUT and a descriptor
# of `up`'s process (1,024 of them by default on Linux): past this one address gets no more of them
MAX_PREAUTH_PER_ADDRESS = 32
PREAUTH_LOG_INTERVAL_S = 10.0
_KEEPALIVE_ATTR = "orchestrator.keep_alive"
_OFFLINE_ATTR = "orchestrator.offline"


def keepalive_deadline(keep_alive: int) -> float:
    """Seconds of silence after which a client is dropped: 1.5 x keep-alive [MQTT-3.1.2-24], + 0.5 s.

    The half second absorbs client timer granularity: paho checks its keep-alive once per loop
    (up to 1 s late), so a healthy paho client at keep-alive 1 s can be silent for close to 2 s.
    """
    return 1.5 * keep_alive + 0.5


@dataclasses.dataclass(frozen=True)
class BrokerSettings:
    max_payload: int
    max_queued: int
    max_inflight: int = 20
    passwords: PasswordChecker | None = None
    acl: Acl | None = None
    # called with (username, topic, payload) for every publish the broker accepted (after the ACL)
    on_publish: Callable[[str | None, str, bytes], None] | None = None
    # retained messages one identity may keep (topics, bytes): amqtt kept any number, and any identity
    # may retain under its own topics (a part's states, a client's calls), so one credential could grow the
    # broker, which runs inside `up`, until the machine ran out of memory.  Past it a retained publish is
    # delivered but not kept (counted in ``retained_refused``).  Anonymous clients (insecure) share one.
    max_retained_per_identity: tuple[int, int] = (10_000, 32 * 1024 * 1024)

    @property
    def max_packet(self) -> int:
        """Packets larger than this close the connection before they are read into memory."""
        return max(2 * self.max_payload, self.max_payload + 65_536 + 16)


class _Writer(StreamWriterAdapter):  # type: ignore[misc]  # amqtt ships no type information
    """A writer whose close is bounded in time and that can be aborted (a frozen peer never drains)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        super().__init__(writer)
        self._stream = writer

    def abort(self) -> None:
        self.is_closed = True
        self._stream.transport.abort()  # a no-op on a transport already lost

    async def close(self) -> None:
        if self.is_closed:
            self._stream.transport.abort()
            return
        self.is_closed = True
        try:
            await asyncio.wait_for(self._stream.drain(), CLOSE_TIMEOUT)
            if self._stream.can_write_eof():
                self._stream.write_eof()
            self._stream.close()
            await asyncio.wait_for(self._stream.wait_closed(), CLOSE_TIMEOUT)
        except (TimeoutError, OSError):
            self._stream.transport.abort()


def packet_deadline(keep_alive: int) -> float:
    """Seconds a client has to finish a packet once its first byte arrived: its keep-alive deadline (no
    complete control packet within 1.5 x keep-alive is silence [MQTT-3.1.2-24], a half-sent one too), or
    :data:`PACKET_TIMEOUT` for a client without keep-alive."""
    return keepalive_deadline(keep_alive) if keep_alive > 0 else PACKET_TIMEOUT


class _Reader(StreamReaderAdapter):  # type: ignore[misc]  # amqtt ships no type information
    """Refuses to read a packet larger than ``max_packet`` (closes the connection instead), and closes a
    connection that stalls in the middle of a packet.

    amqtt waits for a packet's fixed header under the keep-alive deadline, then reads the rest with no
    deadline at all: a client that announced 100 KB and sent nothing more held its connection (and
    its Will, and its session) forever.  This reader follows the packet boundaries (fixed header, then
    ``remaining length`` bytes) and, once a packet has begun, bounds every read by the packet's deadline
    (:func:`packet_deadline`, set by the broker once CONNECT is parsed; :data:`CONNECT_TIMEOUT` until
    then).  Between packets it waits as amqtt tells it (the keep-alive).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: _Writer, max_packet: int, stats: dict[str, int]) -> None:
        super().__init__(reader)
        self._writer = writer
        self._max_packet = max_packet
        self._stats = stats
        self.packet_timeout = CONNECT_TIMEOUT
        self._phase = 0  # 0: between packets, 1: in the remaining-length bytes, 2: in the rest of the packet
        self._left = 0
        self._multiplier = 1
        self._deadline = 0.0
        self._dead = False

    @property
    def buffered(self) -> int:
        """Bytes already received and not read yet."""
        return len(self._reader._buffer)

    async def read(self, n: int = -1) -> bytes:
        if self._dead:
            raise asyncio.IncompleteReadError(b"", n)
        if n > self._max_packet:
            self._stats["oversize"] += 1
            log.warning("closing a connection that sent a %d-byte packet (limit %d)", n, self._max_packet)
            self._close()
            raise asyncio.IncompleteReadError(b"", n)
        loop = asyncio.get_running_loop()
        if self._phase == 0:
            data: bytes = await super().read(n)  # the start of a packet: waited for under amqtt's keep-alive
            self._deadline = loop.time() + self.packet_timeout
        elif 0 <= n <= self.buffered:
            # what amqtt asks for has already arrived (a whole packet usually comes in one segment):
            # read without arming a deadline, which cost a timer handle per read (5 reads a PUBLISH)
            data = await super().read(n)
        else:
            try:
                async with asyncio.timeout_at(self._deadline):
                    data = await super().read(n)
            except TimeoutError:
                self._stats["stalled_packets"] += 1
                log.warning("closing a connection that stalled in the middle of a packet for %.1f s",
                            self.packet_timeout)
                self._close()
                raise asyncio.IncompleteReadError(b"", n) from None
        self._account(data)
        return data

    def _close(self) -> None:
        self._dead = True
        self._writer.abort()

    def _account(self, data: bytes) -> None:
        """Follow the packet boundaries through the bytes amqtt has read."""
        i = 0
        while i < len(data):
            if self._phase == 0:  # the first byte of a packet (type and flags)
                self._phase, self._left, self._multiplier = 1, 0, 1
                i += 1
            elif self._phase == 1:  # remaining length, 7 bits a byte, least significant first
                byte = data[i]
                i += 1
                self._left += (byte & 0x7F) * self._multiplier
                self._multiplier *= 128
                if not byte & 0x80:
                    self._phase = 2 if self._left else 0
            else:
                take = min(self._left, len(data) - i)
                self._left -= take
                i += take
                if self._left == 0:
                    self._phase = 0


class _Handler(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt's broker-side protocol handler, plus keep-alive enforcement and a way to kill it."""

    def __init__(self, plugins_manager: Any, session: Any = None, loop: Any = None) -> None:
        super().__init__(plugins_manager, session, loop)
        self.outbox: Outbox | None = None
        self.kill_reason: str | None = None
        self.stats: dict[str, int] | None = None
        self.oversize_logged = False  # warn once per connection, count every time
        self.fast_route: Callable[[_Handler, str, bytes], None] | None = None
        self._subs_due = 0  # SUBSCRIBE and UNSUBSCRIBE packets read and not answered yet
        self._subs_answered = asyncio.Event()
        self._subs_answered.set()

    async def in_order(self, packet_handler: Awaitable[None]) -> asyncio.Task[None]:
        """Start the handler of a SUBSCRIBE or UNSUBSCRIBE once the ones before it are answered.

        amqtt queues subscriptions and unsubscriptions apart, and its session loop takes a ready
        subscription before a ready unsubscription: an UNSUBSCRIBE followed at once by a SUBSCRIBE was
        applied in the wrong order (the subscription refused for the room the unsubscribe gave back, or
        a filter unsubscribed after it was subscribed again).  Waiting is bounded by
        :data:`SUBSCRIBE_ORDER_TIMEOUT` (a handler that fails answers nothing)."""
        if self._subs_due:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SUBSCRIBE_ORDER_TIMEOUT):
                    await self._subs_answered.wait()
            self._subs_due = 0  # (answered, or given up on: do not wait for it again)
        self._subs_due += 1
        self._subs_answered.clear()
        task: asyncio.Task[None] = asyncio.ensure_future(packet_handler)
        task.add_done_callback(lambda t: self._subscription_answered() if t.cancelled() or t.exception() else None)
        return task

    def _subscription_answered(self) -> None:
        self._subs_due = max(0, self._subs_due - 1)
        if not self._subs_due:
            self._subs_answered.set()

    async def mqtt_acknowledge_subscription(self, packet_id: int, return_codes: list[int]) -> None:
        try:
            await super().mqtt_acknowledge_subscription(packet_id, return_codes)
        finally:
            self._subscription_answered()

    async def mqtt_acknowledge_unsubscription(self, packet_id: int) -> None:
        try:
            await super().mqtt_acknowledge_unsubscription(packet_id)
        finally:
            self._subscription_answered()

    def route_now(self, publish_packet: Any) -> bool:
        """QoS 0 without retain, with nothing of this client's still queued (so its order is kept): routed
        at once by the broker's fast path (True); anything else is left to :meth:`handle_publish`."""
        route = self.fast_route
        session = self.session
        if (route is not None and session is not None and publish_packet.qos == 0 and not publish_packet.retain_flag
                and publish_packet.topic_name is not None and publish_packet.data is not None
                and session.delivered_message_queue.empty()):
            route(self, publish_packet.topic_name, bytes(publish_packet.data))
            return True
        return False

    async def handle_publish(self, publish_packet: Any) -> None:
        if not self.route_now(publish_packet):
            await super().handle_publish(publish_packet)

    async def _reader_loop(self) -> None:
        await reader_loop(self)

    def handle_read_timeout(self) -> None:
        # amqtt's reader loop waited `session.keep_alive` (our deadline) for a packet: drop the client.
        if self.stats is not None:
            self.stats["keepalive_drops"] += 1
        self.kill("keep-alive expired: silent for 1.5 x its keep-alive", logging.WARNING)

    def kill(self, reason: str, level: int = logging.INFO) -> None:
        """Close the connection now, without DISCONNECT: the broker then publishes the Will."""
        if self.kill_reason is None:
            self.kill_reason = reason
            client_id = self.session.client_id if self.session is not None else None
            log.log(level, "closing connection of client %r: %s", client_id, reason)
        writer = self.writer
        if isinstance(writer, _Writer):
            writer.abort()
        reader = self.reader
        if reader is not None:
            reader.feed_eof()


class FixedBroker(Broker):  # type: ignore[misc]  # amqtt ships no type information
    """``amqtt.broker.Broker`` with the fixes listed in the module docstring."""

    def __init__(self, config: dict[str, Any], settings: BrokerSettings, stats: dict[str, int]) -> None:
        super().__init__(config)
        self._settings = settings
        self._stats = stats
        self._live: dict[str, tuple[_Handler, asyncio.Event]] = {}
        self._connect_locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        # Filters with wildcards, in an ordered set: a publish looks its topic up directly among
        # the exact filters and only walks these (amqtt walked every filter: 7,300 msg/s fell to
        # 270 with 5,000 subscriptions).  Entries whose filter amqtt deleted are pruned lazily.
        self._wildcard_filters = FilterTrie()
        self._acl_cache: dict[tuple[str | None, str, str], bool] = {}
        # topic -> (username, bytes) of every retained message a client published, and per username
        # [topics, bytes]: the quota of :attr:`BrokerSettings.max_retained_per_identity`
        self._retained_by: dict[str, tuple[str | None, int]] = {}
        self._retained_use: dict[str | None, list[int]] = {}
        self._retained_refusal_logged = 0.0
        self._subscription_counts: dict[str, int] = {}  # client id -> filters it holds
        self._preauth: dict[str, int] = {}  # remote address -> connections still in their CONNECT
        self._subscription_refusal_logged = 0.0

    # ------------------------------------------------------------------------------ lifecycle

    @staticmethod
    def _create_ssl_context(listener: Any) -> ssl.SSLContext:
        ctx: ssl.SSLContext = Broker._create_ssl_context(listener)
        ctx.verify_mode = ssl.CERT_NONE  # identities are passwords; a certificate request breaks browsers' wss://
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def bound_port(self, listener: str = "default") -> int:
        servers: dict[str, Any] = getattr(self, "_servers", {})
        server = servers.get(listener)
        instance = getattr(server, "instance", None)
        for sock in getattr(instance, "sockets", None) or ():
            port: int = sock.getsockname()[1]
            return port
        raise RuntimeError(f"amqtt exposes no listening socket for {listener!r} (internals changed?)")

    async def close_all(self, timeout: float = 5.0) -> None:
        """Stop accepting, drop every client (Wills published), shut amqtt down; bounded in time."""
        servers: dict[str, Any] = getattr(self, "_servers", {})
        for server in servers.values():
            instance = getattr(server, "instance", None)
            if instance is not None:
                with contextlib.suppress(Exception):
                    instance.close()
        live = list(self._live.values())
        for handler, _ in live:
            handler.kill("broker closing")
        if live:
            await asyncio.wait([asyncio.ensure_future(done.wait()) for _, done in live], timeout=timeout)
        if self.transitions.state == "started":
            try:
                await asyncio.wait_for(self.shutdown(), timeout)
            except Exception:
                log.exception("amqtt shutdown failed; sockets closed anyway")
        for server in servers.values():
            instance = getattr(server, "instance", None)
            if instance is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(instance.wait_closed(), CLOSE_TIMEOUT)

    # ------------------------------------------------------------------------------ connect

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        with contextlib.suppress(OSError):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        w = _Writer(writer)
        r = _Reader(reader, w, self._settings.max_packet, self._stats)
        try:
            await self._client_connected(listener_name, r, w)
        except Exception:
            log.exception("unexpected error while serving a client")
            w.abort()

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[_Handler, Session]:
        # Parse CONNECT only.  amqtt also deleted or updated the stored session here, before the
        # client was authenticated and while an older connection with that id could still be live.
        address = str(remote_address)
        counted = not _is_loopback(address)
        if counted:
            held = self._preauth.get(address, 0)
            if held >= MAX_PREAUTH_PER_ADDRESS:
                self._stats["preauth_refused"] += 1
                writer.abort()
                raise NoDataError(f"{address[:64]}: {held} connections without CONNECT already")
            self._preauth[address] = held + 1
        try:
            handler, session = await asyncio.wait_for(
                _Handler.init_from_connect(reader, writer, self.plugins_manager), CONNECT_TIMEOUT
            )
        except TimeoutError as exc:
            self._stats["preauth_failures"] += 1
            writer.abort()
            raise NoDataError(f"no CONNECT from {remote_address}:{remote_port} within {CONNECT_TIMEOUT} s") from exc
        except MQTTError:
            self._stats["preauth_failures"] += 1
            await writer.close()
            raise
        except NoDataError as exc:
            self._stats["preauth_failures"] += 1
            raise AMQTTError(exc) from exc
        finally:
            if counted:
                left = self._preauth.get(address, 1) - 1
                if left > 0:
                    self._preauth[address] = left
                else:
                    self._preauth.pop(address, None)
        if not session.client_id:
            session.client_id = gen_client_id()
        raw = int(session.keep_alive or 0)
        session.attributes[_KEEPALIVE_ATTR] = raw
        # amqtt's reader loop waits session.keep_alive seconds for each packet, then calls
        # handle_read_timeout: make that the MQTT deadline, not 1 x keep-alive.
        session.keep_alive = keepalive_deadline(raw) if raw > 0 else 0
        if isinstance(reader, _Reader):
            reader.packet_timeout = packet_deadline(raw)
        handler.stats = self._stats
        return handler, session

    def _credentials_ok(self, session: Session) -> bool:
        table = self._settings.passwords
        if table is None:
            return True
        return table.check(session.username, session.password)

    async def _authenticate(self, session: Session, _listener: Any) -> bool:
        return self._credentials_ok(session)

    async def _take_over(self, client_id: str) -> None:
        """[MQTT-3.1.4-2]: close the live connection with this client id and wait until it is gone.

        It is closed without DISCONNECT, so its Will is published [MQTT-3.1.2-8].
        """
        live = self._live.get(client_id)
        if live is None:
            return
        handler, done = live
        self._stats["takeovers"] += 1
        handler.kill("taken over by a new connection with the same client id")
        try:
            await asyncio.wait_for(done.wait(), TAKEOVER_TIMEOUT)
        except TimeoutError:
            log.warning("old connection of client %r did not finish within %s s", client_id, TAKEOVER_TIMEOUT)

    async def _resolve_session(self, incoming: Session) -> Session:
        client_id = incoming.client_id
        existing: Session | None = self._sessions.get(client_id, (None, None))[0]
        if incoming.clean_session or existing is None or existing.clean_session or \
                existing.username != incoming.username:  # another identity never inherits a session
            await self._delete_session(client_id)
            incoming.parent = 0
            return incoming
        for name in (
            "will_flag",
            "will_message",
            "will_topic",
            "will_qos",
            "will_retain",
            "keep_alive",
            "username",
            "password",
            "remote_address",
            "remote_port",
            "ssl_object",
        ):
            setattr(existing, name, getattr(incoming, name))
        existing.attributes[_KEEPALIVE_ATTR] = incoming.attributes.get(_KEEPALIVE_ATTR, 0)
        existing.parent = 1
        return existing

    async def _handle_client_session(
        self, reader: Any, writer: Any, client_session: Session, handler: _Handler, server: Any, listener_name: str
    ) -> None:
        client_id: str = client_session.client_id
        if not self._credentials_ok(client_session):
            self._stats["auth_failures"] += 1
            log.info("refused client %r: bad username or password", client_id)
            with contextlib.suppress(Exception):
                await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            return
        if not self._will_allowed(client_session):
            # amqtt publishes a Will from its disconnect path, past the publish rights: a viewer's Will on
            # part/<parent>/ctl/<child> was a stop "from the parent" that nobody had the right to send
            log.info("refused client %r of %r: a Will on a topic it may not publish to", client_id[:80],
                     (client_session.username or "")[:80])
            with contextlib.suppress(Exception):
                await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            return

        # One connection with a given client id at a time through take-over and registration.
        lock, users = self._connect_locks.setdefault(client_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                foreign = self._foreign_owner(client_session)
                if foreign is None:
                    outbox, done, session = await self._register(client_session, handler, reader, writer)
        finally:
            users[0] -= 1
            if users[0] == 0:
                self._connect_locks.pop(client_id, None)
        if foreign is not None:
            # A client id is no credential: with it any identity (a viewer too) could throw a part off the
            # broker, again and again, or pick up its persistent session.  Only the same username takes over.
            self._stats["takeovers_refused"] += 1
            log.info("refused client %r of %r: its client id is in use by another identity (%r)", client_id[:80],
                     (client_session.username or "")[:80], foreign[:80])
            with contextlib.suppress(Exception):
                await ConnackPacket.build(0, IDENTIFIER_REJECTED).to_stream(writer)
            await writer.close()
            return

        self._stats["connections"] += 1
        try:
            await handler.mqtt_connack_authorize(True)
            await self.plugins_manager.fire_event(
                BrokerEvents.CLIENT_CONNECTED, client_id=client_id, client_session=session
            )
            await handler.start()
            outbox.start()
            # amqtt pushed here every retained message matching *any* client's subscriptions, past
            # the ACL.  Retained messages are sent on SUBSCRIBE only [MQTT-3.3.1-6].
            await self._client_message_loop(session, handler)
        finally:
            await self._end_connection(session, handler, outbox, done)

    def _will_allowed(self, session: Session) -> bool:
        """A Will is a publish the broker makes for the client: the same rights and limits as its own."""
        if not session.will_flag:
            return True
        topic = session.will_topic
        if not isinstance(topic, str) or not valid_topic(topic) or topic.startswith("$"):
            return False
        if len(session.will_message or b"") > self._settings.max_payload:
            self._stats["oversize"] += 1
            return False
        return self._allowed(session, "publish", topic)

    def _foreign_owner(self, incoming: Session) -> str | None:
        """The username of the live connection with ``incoming``'s client id, if that is another identity
        than ``incoming``'s; None when it may take over (or nobody is connected with that id).  Without
        authentication (no password table) every client may take over any other, as MQTT says.  (A stored
        persistent session of another identity is not resumed: ``_resolve_session``.)"""
        if self._settings.passwords is None:
            return None
        live = self._live.get(incoming.client_id)
        old = live[0].session if live is not None else None
        if old is None or old.username == incoming.username:
            return None
        return str(old.username or "")

    async def _register(
        self, client_session: Session, handler: _Handler, reader: Any, writer: Any
    ) -> tuple[Outbox, asyncio.Event, Session]:
        client_id: str = client_session.client_id
        await self._take_over(client_id)
        session = await self._resolve_session(client_session)
        if session.transitions.state == "connected":  # only if a take-over timed out
            session.transitions.disconnect()
        session.transitions.connect()
        handler.attach(session, reader, writer)
        self._sessions[client_id] = (session, handler)
        outbox = Outbox(
            client_id,
            handler.mqtt_publish,
            max_queued=self._settings.max_queued,
            max_inflight=self._settings.max_inflight,
            stats=self._stats,
            on_overflow=lambda: self._too_slow(handler),
            write_raw=lambda packet: self._write_raw(handler, packet),
        )
        handler.outbox = outbox
        handler.fast_route = self._fast_route
        for message in self._take_offline(session):
            outbox.offer(message, bounded=False)
        done = asyncio.Event()
        self._live[client_id] = (handler, done)
        return outbox, done, session

    async def _end_connection(self, session: Session, handler: _Handler, outbox: Outbox, done: asyncio.Event) -> None:
        client_id: str = session.client_id
        try:
            if session.transitions.state == "connected" and self._sessions.get(client_id, (None, None))[1] in (
                handler,
                None,
            ):
                # The message loop ended without a disconnect (protocol error, cancellation).
                handler.kill("protocol error")
                closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                closed.set_result(None)
                with contextlib.suppress(Exception):
                    await self._handle_disconnect(session, handler, closed)
            left = await outbox.close()
            if left and not session.clean_session:
                self._requeue_offline(session, left)
        finally:
            if self._live.get(client_id, (None, None))[0] is handler:
                del self._live[client_id]
            done.set()

    def disconnect(self, username: str, client_ids: list[str], reason: str) -> int:
        """Close the live connections among ``client_ids`` that authenticated as ``username`` (their Wills
        are published); returns how many were closed."""
        closed = 0
        for client_id in client_ids:
            live = self._live.get(client_id)
            if live is None:
                continue
            handler = live[0]
            session = handler.session
            if session is None or session.username != username:
                continue
            handler.kill(f"closed by the robot: {reason[:200]}")
            closed += 1
        return closed

    @staticmethod
    def _write_raw(handler: _Handler, packet: bytes) -> bool:
        """Write an encoded QoS 0 PUBLISH straight to a TCP client, unless another packet is being written
        (then amqtt's own path keeps the order) or the client is not a plain stream (WebSocket)."""
        writer = handler.writer
        lock = getattr(handler, "_write_lock", None)
        if not isinstance(writer, _Writer) or writer.is_closed or lock is None or lock.locked():
            return False
        transport = writer._stream.transport
        if transport.is_closing() or transport.get_write_buffer_size() > RAW_WRITE_HIGH_WATER:
            return False  # let amqtt's path wait for the socket to drain
        transport.write(packet)
        return True

    def _too_slow(self, handler: _Handler) -> None:
        self._stats["disconnected_slow"] += 1
        handler.kill(f"too slow: more than {self._settings.max_queued} messages queued for it", logging.WARNING)

    # ------------------------------------------------------------------------------ offline queues

    def _offline(self, session: Session) -> deque[Outgoing]:
        queue: deque[Outgoing] | None = session.attributes.get(_OFFLINE_ATTR)
        if queue is None:
            queue = deque()
            session.attributes[_OFFLINE_ATTR] = queue
        return queue

    def _take_offline(self, session: Session) -> list[Outgoing]:
        queue = self._offline(session)
        items = list(queue)
        queue.clear()
        return items

    def _requeue_offline(self, session: Session, messages: list[Outgoing]) -> None:
        queue = self._offline(session)
        queue.extendleft(reversed(messages))
        while len(queue) > self._settings.max_queued:
            queue.pop()
            self._stats["dropped_offline"] += 1

    def _deliver(self, session: Session, message: Outgoing, *, bounded: bool = True) -> None:
        handler = self._sessions.get(session.client_id, (None, None))[1]
        if (
            session.transitions.state == "connected"
            and isinstance(handler, _Handler)
            and handler.outbox is not None
            and handler.session is session
        ):
            handler.outbox.offer(message, bounded=bounded)
            return
        # [MQTT-3.1.2-5]: a persistent session stores QoS 1/2 messages while offline (amqtt skipped
        # anonymous ones); QoS 0 may be dropped.
        if not session.clean_session and message.qos > 0:
            queue = self._offline(session)
            if len(queue) >= self._settings.max_queued:
                self._stats["dropped_offline"] += 1
                return
            queue.append(message)

    # ------------------------------------------------------------------------------ retained quota

    async def retain_message(
        self, source_session: Session | None, topic_name: str | None, data: bytes | bytearray | None,
        qos: int | None = None,
    ) -> None:
        if topic_name is None:
            return
        prev = self._retained_by.get(topic_name)
        if data and source_session is not None:  # the broker's own retained messages are not counted
            owner = source_session.username
            size = len(data) + len(topic_name)
            use = self._retained_use.get(owner, [0, 0])
            topics, total = use[0] + 1, use[1] + size
            if prev is not None and prev[0] == owner:  # replacing one of its own
                topics, total = topics - 1, total - prev[1]
            most_topics, most_bytes = self._settings.max_retained_per_identity
            if topics > most_topics or total > most_bytes:
                self._stats["retained_refused"] += 1
                now = time.monotonic()
                if now - self._retained_refusal_logged > 10.0:
                    self._retained_refusal_logged = now
                    log.warning("not retaining a message of %r on %r: it keeps %d retained messages (%d bytes) "
                                "already, at most %d (%d bytes)", (owner or "")[:80], topic_name[:120], use[0],
                                use[1], most_topics, most_bytes)
                return
        await super().retain_message(source_session, topic_name, data, qos)
        if prev is not None:
            self._retained_by.pop(topic_name, None)
            old = self._retained_use.get(prev[0])
            if old is not None:
                old[0] -= 1
                old[1] -= prev[1]
                if old[0] <= 0:
                    self._retained_use.pop(prev[0], None)
        if data and source_session is not None and topic_name in self._retained_messages:
            owner = source_session.username
            size = len(data) + len(topic_name)
            self._retained_by[topic_name] = (owner, size)
            use = self._retained_use.setdefault(owner, [0, 0])
            use[0] += 1
            use[1] += size

    # ------------------------------------------------------------------------------ publish path

    async def _handle_message_delivery(self, client_session: Session, handler: Any, wait_deliver: Any) -> bool:
        app_message = wait_deliver.result()
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_RECEIVED, client_id=client_session.client_id, message=app_message
        )
        if app_message is None:
            return True
        topic = app_message.topic
        data = bytes(app_message.data or b"")
        verdict = self._accept_publish(client_session, handler, topic, data)
        if verdict is None:
            return False
        if not verdict:
            return True
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_BROADCAST, client_id=client_session.client_id, message=app_message
        )
        qos = app_message.qos if app_message.qos is not None else 0
        await self._broadcast_message(client_session, topic, data, qos)
        if app_message.publish_packet is not None and app_message.publish_packet.retain_flag:
            await self.retain_message(client_session, topic, data, qos)
        return True

    def _accept_publish(self, client_session: Session, handler: Any, topic: str | None, data: bytes) -> bool | None:
        """True: route it; False: drop it (counted); None: close the connection (a protocol violation)."""
        if not topic or not valid_topic(topic) or topic.startswith("$"):
            log.warning("client %r published to invalid topic %r: closing", client_session.client_id,
                        (topic or "")[:120])
            return None
        if len(data) > self._settings.max_payload:
            self._stats["oversize"] += 1
            first = not getattr(handler, "oversize_logged", True)
            if first:
                handler.oversize_logged = True
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "dropped a %d-byte message from %r on %r (max_payload %d)",
                len(data),
                client_session.client_id,
                topic[:120],
                self._settings.max_payload,
            )
            return False
        if not self._allowed(client_session, "publish", topic):
            log.info("client %r may not publish to %r", client_session.client_id, topic[:120])
            return False
        hook = self._settings.on_publish
        if hook is not None:
            try:
                hook(client_session.username, topic, data)
            except Exception:
                log.exception("on_publish hook failed on %r", topic[:120])
        return True

    def _fast_route(self, handler: _Handler, topic: str, data: bytes) -> None:
        """A QoS 0, non-retained PUBLISH routed as it is read: no application-message objects, no queue,
        no task (heartbeats, telemetry).  The same checks as every other publish."""
        session = handler.session
        if session is None:
            return
        verdict = self._accept_publish(session, handler, topic, data)
        if verdict is None:
            handler.kill("published to an invalid topic")
        elif verdict:
            self._broadcast_now(topic, data, 0)

    async def _run_broadcast(self, running_tasks: Any) -> None:
        broadcast = await self._broadcast_queue.get()
        self._broadcast_now(broadcast["topic"], bytes(broadcast["data"] or b""), broadcast.get("qos"))

    def _broadcast_now(self, topic: str, data: bytes, publish_qos: int | None) -> None:
        # One copy per client, at the highest QoS among its matching subscriptions (as mosquitto).
        targets: dict[str, tuple[Session, int]] = {}
        for subscriptions in self._matching_subscriptions(topic):
            for session, sub_qos in subscriptions:
                previous = targets.get(session.client_id)
                if previous is None or sub_qos > previous[1]:
                    targets[session.client_id] = (session, sub_qos)
        packet: bytes | None = None
        for session, sub_qos in targets.values():
            if not self._allowed(session, "receive", topic):
                continue
            qos = sub_qos if publish_qos is None else min(publish_qos, sub_qos)
            if qos == 0 and packet is None:
                packet = encode_qos0_publish(topic, data)  # once, for every QoS 0 subscriber
            self._deliver(session, Outgoing(topic, data, qos, False, packet if qos == 0 else None))

    def _matching_subscriptions(self, topic: str) -> list[list[tuple[Session, int]]]:
        found: list[list[tuple[Session, int]]] = []
        exact = self._subscriptions.get(topic)
        if exact:
            found.append(exact)
        for topic_filter in self._wildcard_filters.match(topic):
            subscriptions = self._subscriptions.get(topic_filter)
            if subscriptions is None:
                self._wildcard_filters.discard(topic_filter)
            elif subscriptions:
                found.append(subscriptions)
        return found

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter, sub_qos = subscription
        for topic, retained in list(self._retained_messages.items()):
            if not topic_matches(topic_filter, topic) or not self._allowed(session, "receive", topic):
                continue
            qos = sub_qos if retained.qos is None else min(sub_qos, retained.qos)
            self._deliver(session, Outgoing(topic, bytes(retained.data), qos, True), bounded=False)

    # ------------------------------------------------------------------------------ subscriptions, ACL

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        topic_filter, qos = subscription
        if qos not in (0, 1, 2) or not valid_filter(topic_filter):
            return SUBACK_FAILURE
        if topic_filter.startswith("$share/"):
            return SUBACK_FAILURE  # shared subscriptions are MQTT 5; amqtt granted them and delivered nothing
        if not self._allowed(session, "subscribe", topic_filter):
            return SUBACK_FAILURE
        subscriptions = self._subscriptions.get(topic_filter, [])
        for index, (existing, _) in enumerate(subscriptions):
            if existing.client_id == session.client_id:
                subscriptions[index] = (session, qos)  # [MQTT-3.8.4-3]: replace, new QoS
                return qos
        held = self._subscription_counts.get(session.client_id, 0)
        if held >= MAX_SUBSCRIPTIONS_PER_CLIENT:
            self._stats["subscriptions_refused"] += 1
            now = time.monotonic()
            if now - self._subscription_refusal_logged > 10.0:
                self._subscription_refusal_logged = now
                log.warning("refused a subscription of client %r of %r: it holds %d filters, at most %d",
                            session.client_id[:80], (session.username or "")[:80], held,
                            MAX_SUBSCRIPTIONS_PER_CLIENT)
            return SUBACK_FAILURE
        self._subscriptions.setdefault(topic_filter, subscriptions).append((session, qos))
        if "+" in topic_filter or "#" in topic_filter:
            self._wildcard_filters.add(topic_filter)
        self._subscription_counts[session.client_id] = held + 1
        return qos

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        # amqtt left the filter's (empty) list behind on UNSUBSCRIBE: one entry per filter ever used
        deleted: int = super()._del_subscription(a_filter, session)
        if deleted:
            left = self._subscription_counts.get(session.client_id, 0) - deleted
            if left > 0:
                self._subscription_counts[session.client_id] = left
            else:
                self._subscription_counts.pop(session.client_id, None)
        if deleted and not self._subscriptions.get(a_filter, True):
            del self._subscriptions[a_filter]
            self._wildcard_filters.discard(a_filter)
        return deleted

    async def _del_all_subscriptions(self, session: Session) -> None:
        for topic_filter in list(self._subscriptions):  # _del_subscription may delete the entry
            self._del_subscription(topic_filter, session)

    async def _topic_filtering(self, session: Session, topic: str, action: Any) -> bool:
        return self._allowed(session, str(action), topic)

    def _allowed(self, session: Session, action: str, topic: str) -> bool:
        acl = self._settings.acl
        if acl is None:
            return True
        key = (session.username, action, topic)  # the same few topics come back many times a second
        ok = self._acl_cache.get(key)
        if ok is None:
            try:
                ok = bool(acl(session.username, action, topic))
            except Exception:
                log.exception("ACL callback failed for %s on %r: denied", action, topic)
                ok = False
            if len(self._acl_cache) >= ACL_CACHE_SIZE:
                self._acl_cache.clear()
            self._acl_cache[key] = ok
        if not ok:
            self._stats["acl_denied"] += 1
        return ok


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class PreauthLogLimit(logging.Filter):
    """amqtt logs a warning for every connection that fails before its CONNECT is read (garbage, silence,
    too many from one address), with the peer's address: a stranger's stream of junk connections cost a
    line each.  Let one such line through per interval; the rest are in the ``preauth_*`` counters."""

    def __init__(self, interval_s: float = PREAUTH_LOG_INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last = -interval_s
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Failed to initialize client session"):
            return True
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self.suppressed += 1
            return False
        self._last = now
        if self.suppressed:
            record.msg = f"{record.msg} ({self.suppressed} more such connections since the last line)"
            record.args = None
            self.suppressed = 0
        return True


def is_address_in_use(exc: BaseException) -> bool:
    """True if ``exc`` (or what caused it) is a bind failure on a port already taken."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.EADDRINUSE:
            return True
        if "address already in use" in str(current).lower():
            return True
        current = current.__cause__ or current.__context__
    return False
