"""A TCP proxy that injects delay, stalls, resets and refusals, for tests.

:class:`FaultProxy` listens on an address the test chooses and forwards every connection to one
target.  It runs an asyncio loop in a daemon thread of its own, so it works the same from
synchronous tests and from async tests (whose loop it never shares).  Its knobs may be turned from
any thread while connections are open:

- ``delay_s``: every chunk read from either side is held that long before it is written to the
  other side; chunks keep their order and are pipelined (the delay adds latency, not a rate limit).
- :meth:`~FaultProxy.stall` / :meth:`~FaultProxy.resume`: stop forwarding in both directions
  without closing anything, so each end sees a silent, half-open peer; resume forwards what was held.
- :meth:`~FaultProxy.reset`: send a TCP RST to both ends of every current connection.
- ``refuse``: while true, the listening socket is closed, so new connections get ECONNREFUSED;
  existing connections go on.

Memory is bounded: each direction holds at most ``max_chunks`` chunks of ``chunk_size`` bytes (plus
the asyncio stream buffers); when that fills, the proxy stops reading, so a stalled connection
pushes back on the sender through TCP flow control instead of buffering without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["FaultProxy", "ProxyStats"]

T = TypeVar("T")
CALL_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class ProxyStats:
    """Counters of a :class:`FaultProxy`; ``up`` is client to target, ``down`` target to client."""

    accepted: int = 0
    active: int = 0
    failed: int = 0  # accepted, but the target could not be reached
    resets: int = 0  # connections reset by reset()
    bytes_up: int = 0
    bytes_down: int = 0
    buffered: int = 0  # bytes read and not yet written, over every connection


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close the connection with SO_LINGER 0, so the kernel sends RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    """One proxied connection: the accepted socket, then its streams and the target's."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.client: asyncio.StreamWriter | None = None
        self.target: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.buffered = 0

    def abort(self) -> None:
        """RST whatever is still open of this connection."""
        if self.client is None:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        for writer in (self.client, self.target):
            if writer is not None and not writer.transport.is_closing():
                _abort_with_rst(writer)


class FaultProxy:
    """Forward TCP from ``listen`` to ``target`` with faults that can be changed at runtime.

    ``with FaultProxy(("10.200.7.2", 1883), listen=(lab.gateway, 0)) as proxy:`` then connect to
    ``proxy.address``.  The proxy starts listening in the constructor; :meth:`close` (or leaving the
    ``with`` block) stops it and aborts the connections still open.
    """

    def __init__(
        self,
        target: tuple[str, int],
        listen: tuple[str, int] = ("127.0.0.1", 0),
        *,
        delay_s: float = 0.0,
        chunk_size: int = 65536,
        max_chunks: int = 16,
    ) -> None:
        self.target = target
        self.delay_s = delay_s
        self._chunk_size = chunk_size
        self._max_chunks = max_chunks
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys((f.name for f in dataclasses.fields(ProxyStats)), 0)
        self._conns: set[_Conn] = set()
        self._refuse = False
        self._closed = False
        self._listener: socket.socket | None = None
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._thread = threading.Thread(target=self._run_loop, name="faultproxy", daemon=True)
        self._thread.start()
        try:
            self.address: tuple[str, int] = self._call(self._listen, listen)
        except BaseException:
            self._stop_loop()
            raise

    # -- knobs, callable from any thread ------------------------------------------------------------

    def stall(self) -> None:
        """Stop forwarding in both directions; nothing is closed."""
        self._call(self._set_flowing, False)

    def resume(self) -> None:
        """Forward again, starting with what was held during the stall."""
        self._call(self._set_flowing, True)

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def reset(self) -> int:
        """RST both ends of every current connection; returns how many were reset."""
        return self._call(self._reset_all)

    @property
    def refuse(self) -> bool:
        return self._refuse

    @refuse.setter
    def refuse(self, value: bool) -> None:
        self._call(self._set_refuse, bool(value))

    def stats(self) -> ProxyStats:
        with self._lock:
            return ProxyStats(**self._counts)

    def close(self) -> None:
        """Stop listening, abort every connection, stop the loop thread.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError, TimeoutError):
            self._call(self._shutdown)
        self._stop_loop()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- loop side ----------------------------------------------------------------------------------

    def _call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the proxy's loop and wait for its result."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("FaultProxy knobs are for other threads, not the proxy's own loop")
        if self._loop.is_closed() or not self._thread.is_alive():
            raise RuntimeError("FaultProxy is closed")
        return asyncio.run_coroutine_threadsafe(fn(*args), self._loop).result(CALL_TIMEOUT)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        # As asyncio.run does: cancel what is left, then a few more turns, in which aborted
        # transports close their sockets.
        left = asyncio.all_tasks(self._loop)
        for task in left:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        for _ in range(3):
            self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for key, delta in deltas.items():
                self._counts[key] += delta

    # Our own accepting rather than asyncio.start_server: a socket is registered in the very
    # callback that accepts it, so reset() and close() never miss one.  (Python 3.11's Server trips
    # an assertion, leaking the socket, when closed between an accept and its transport; a task
    # awaiting loop.sock_accept() drops an accepted socket when cancelled at the wrong moment.)

    async def _listen(self, address: tuple[str, int]) -> tuple[str, int]:
        sock = socket.create_server(address)
        sock.setblocking(False)
        self._listener = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)
        host, port = sock.getsockname()[:2]
        return host, port

    async def _unlisten(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):
            try:
                sock, _ = listener.accept()
            except OSError:  # nothing more to accept (BlockingIOError), or a connection aborted early
                return
            sock.setblocking(False)
            conn = _Conn(sock)
            self._conns.add(conn)
            self._count(accepted=1, active=1)
            conn.task = asyncio.create_task(self._serve(conn))
            conn.task.add_done_callback(lambda _, conn=conn: self._forget(conn))  # type: ignore[misc]

    def _forget(self, conn: _Conn) -> None:
        conn.abort()  # if still open: the connection was cancelled (reset, or the proxy closing)
        self._conns.discard(conn)
        self._count(active=-1, buffered=-conn.buffered)

    async def _set_flowing(self, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _set_refuse(self, refuse: bool) -> None:
        if refuse == self._refuse:
            return
        if refuse:
            await self._unlisten()  # connections are untouched
        else:
            await self._listen(self.address)
        self._refuse = refuse

    async def _reset_all(self, count: bool = True) -> int:
        conns = list(self._conns)
        for conn in conns:
            conn.abort()
            if conn.task is not None:
                conn.task.cancel()
        for conn in conns:
            if conn.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await conn.task
        if count:
            self._count(resets=len(conns))
        return len(conns)

    async def _shutdown(self) -> None:
        await self._unlisten()
        await self._reset_all(count=False)

    async def _serve(self, conn: _Conn) -> None:
        client_r, client_w = await asyncio.open_connection(sock=conn.sock, limit=self._chunk_size)
        conn.client = client_w
        try:
            target_r, target_w = await asyncio.wait_for(
                asyncio.open_connection(*self.target, limit=self._chunk_size), CALL_TIMEOUT
            )
        except (OSError, TimeoutError):
            self._count(failed=1)
            _abort_with_rst(client_w)
            return
        conn.target = target_w
        try:
            async with asyncio.TaskGroup() as tg:
                self._pipe(tg, conn, client_r, target_w, "bytes_up")
                self._pipe(tg, conn, target_r, client_w, "bytes_down")
            client_w.close()
            target_w.close()
        except* OSError:
            conn.abort()  # one side failed (e.g. it was reset): pass the reset on to the other side

    def _pipe(
        self, tg: asyncio.TaskGroup, conn: _Conn, src: asyncio.StreamReader, dst: asyncio.StreamWriter, key: str
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(self._max_chunks)
        loop = asyncio.get_running_loop()

        async def read_side() -> None:
            while True:
                await self._flowing.wait()
                data = await src.read(self._chunk_size)
                await queue.put((loop.time() + self.delay_s, data))
                conn.buffered += len(data)
                self._count(buffered=len(data))
                if not data:
                    return

        async def write_side() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                dst.write(data)
                conn.buffered -= len(data)
                self._count(buffered=-len(data), **{key: len(data)})
                await dst.drain()

        tg.create_task(read_side())
        tg.create_task(write_side())
