"""A synchronous client for scripts and notebooks: the same :class:`RobotClient`, its event loop run in
a thread of its own.  Not a second implementation: every method hands a coroutine of the async
client to that loop and waits for its result::

    from orchestrator import Motor
    from orchestrator.client.sync import SyncRobotClient

    with SyncRobotClient.at("rover", "mqtt://192.168.1.20:1883", credentials="creds/") as robot:
        left = robot.resource("base/left", Motor)
        left.set_power(0.3)
        print(left.get_position())
        robot.complete(left, left.go_for(rpm=60, revolutions=2))   # blocks until the move ended

The session is heartbeated by the async client's own thread, so a script blocked in ``input()`` or
a notebook cell left idle keeps it; closing the client (or the interpreter exiting) ends it, and the
robot stops what it drove.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Generic, TypeVar

from orchestrator.config.loader import LoadedConfig
from orchestrator.resources.base import Resource

from .moves import STOP_BOUND_S
from .robot_client import RobotClient

T = TypeVar("T")
R = TypeVar("R", bound=Resource)

__all__ = ["SyncResource", "SyncRobotClient"]

# How long an interrupted call may take to unwind on the loop (moves.complete stops the actuator
# within its STOP_BOUND_S) before the KeyboardInterrupt reaches the script anyway.
INTERRUPT_BOUND_S = STOP_BOUND_S + 1.0


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="orchestrator.sync-client", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self.thread:
            raise RuntimeError("a SyncRobotClient method was called from its own event loop: use the async client")
        finished = threading.Event()

        async def watched() -> T:
            try:
                return await coro
            finally:
                finished.set()

        future: Future[T] = asyncio.run_coroutine_threadsafe(watched(), self.loop)
        try:
            return future.result(timeout)
        except KeyboardInterrupt:
            # Ctrl-C: the coroutine is cancelled on the loop, and the script sees the interrupt only once
            # it has finished (bounded): a move awaited with complete() has been stopped by then.  A
            # second Ctrl-C ends the wait.
            future.cancel()
            finished.wait(INTERRUPT_BOUND_S)
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):  # its worker threads end with it
            asyncio.run_coroutine_threadsafe(self.loop.shutdown_default_executor(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


class SyncResource(Generic[R]):
    """A resource proxy whose coroutine methods block until their result; ``.aio`` is the async proxy."""

    def __init__(self, proxy: R, runner: _LoopThread) -> None:
        self.aio = proxy
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.aio, name)
        if not callable(attr):
            return attr

        def method(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if asyncio.iscoroutine(result):
                return self._runner.run(result)
            return result

        method.__name__ = name
        return method

    def __repr__(self) -> str:
        return f"SyncResource({self.aio.__class__.__name__} {self.aio.name!r})"


class SyncRobotClient:
    """:class:`RobotClient` for code without an event loop.  Connects on ``with`` (or :meth:`connect`)."""

    def __init__(self, make: Callable[[], RobotClient]) -> None:
        self._runner = _LoopThread()
        self._closed = False
        try:
            self.aio: RobotClient = self._runner.run(self._make(make))
        except BaseException:  # a bad URL, identity or credentials: no thread is left behind
            self._closed = True
            self._runner.stop()
            raise

    @staticmethod
    async def _make(make: Callable[[], RobotClient]) -> RobotClient:
        return make()  # built on the loop's thread: its asyncio objects belong to that loop

    @classmethod
    def from_config(cls, config: str | Path | LoadedConfig, **kwargs: Any) -> SyncRobotClient:
        return cls(lambda: RobotClient.from_config(config, **kwargs))

    @classmethod
    def at(cls, robot: str, broker: str, **kwargs: Any) -> SyncRobotClient:
        return cls(lambda: RobotClient.at(robot, broker, **kwargs))

    def connect(self) -> SyncRobotClient:
        """Connect (and open the session).  If that fails the client is closed: its thread ends."""
        try:
            self._runner.run(self.aio.connect())
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> SyncRobotClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the session (the robot stops what it owns), disconnect, stop the thread.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._runner.run(self.aio.close(), timeout=30)
        finally:
            self._runner.stop()

    def resource(self, path: str, kind: type[R], *, timeout: float | None = None) -> SyncResource[R]:
        return SyncResource(self.aio.resource(path, kind, timeout=timeout), self._runner)

    def discover(self, path: str, **kwargs: Any) -> SyncResource[Resource]:
        return SyncResource(self._runner.run(self.aio.discover(path, **kwargs)), self._runner)

    def call(self, path: str, method: str, args: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return self._runner.run(self.aio.call(path, method, args, **kwargs))

    def resources(self) -> dict[str, list[dict[str, Any]]]:
        return self._runner.run(self.aio.resources())

    def complete(self, resource: SyncResource[Any] | Resource, start: Any, **kwargs: Any) -> float:
        """Start a move and block until it ends (Ctrl-C stops the actuator): see :func:`moves.complete`.
        ``start`` is what the sync proxy's method returned (None: the call already ran) or a coroutine."""
        from orchestrator.resources.base import Actuator

        from .moves import complete, until_stopped

        actuator = resource.aio if isinstance(resource, SyncResource) else resource
        if not isinstance(actuator, Actuator):
            raise TypeError(f"{actuator!r} is not an actuator: it has no move to wait for")
        if asyncio.iscoroutine(start):
            return self._runner.run(complete(actuator, start, **kwargs))
        return self._runner.run(complete(actuator, until_stopped(actuator), **kwargs))

    @contextlib.contextmanager
    def telemetry(self, path: str = "+/+") -> Iterator[Iterator[tuple[str, dict[str, Any]]]]:
        """:meth:`RobotClient.telemetry` as a blocking iterator of (``PART/RESOURCE``, readings)::

            with robot.telemetry("main/imu") as readings:
                for source, values in readings: ...
        """
        with self._blocking(self.aio.telemetry(path)) as items:
            yield items

    @contextlib.contextmanager
    def events(self, part: str = "+") -> Iterator[Iterator[dict[str, Any]]]:
        """:meth:`RobotClient.events` as a blocking iterator of event dicts."""
        with self._blocking(self.aio.events(part)) as items:
            yield items

    @contextlib.contextmanager
    def _blocking(self, subscription: AbstractAsyncContextManager[AsyncIterator[T]]) -> Iterator[Iterator[T]]:
        stream = self._runner.run(subscription.__aenter__())

        async def following() -> T:
            return await anext(stream)

        def items() -> Iterator[T]:
            while True:
                try:
                    yield self._runner.run(following())
                except StopAsyncIteration:
                    return

        try:
            yield items()
        finally:
            self._runner.run(subscription.__aexit__(None, None, None), timeout=10)

    def shutdown_robot(self, reason: str = "requested by a client") -> None:
        self._runner.run(self.aio.shutdown_robot(reason))
