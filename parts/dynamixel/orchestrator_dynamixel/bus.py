"""One serial port, one worker thread: the vendor SDK's blocking calls never run on the event loop.

Every servo on a port shares one :class:`Bus` (looked up by port path, reference counted).  Its
worker thread owns the SDK's ``PortHandler`` and runs *jobs* one at a time, so transactions from
several servos never interleave on the wire.  A job is a function of a :class:`Link` (the
transactions with one id); it runs whole, so a read-then-write (stop in ``hold`` mode) is never
split by another servo's traffic.

Callers wait for a job with a bound: :meth:`Bus.run` from the event loop, :meth:`Bus.run_sync`
from any other thread (the part's watchdog calls ``emergency_stop()`` from its own thread while
the loop is stalled).  A job that misses its bound costs its caller a :class:`BusTimeout`; it is
cancelled if it has not started yet, so a late move never reaches the servo.  Urgent jobs (an
emergency stop) go ahead of the queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from dynamixel_sdk import (  # type: ignore[import-untyped]
    COMM_RX_CORRUPT,
    COMM_RX_TIMEOUT,
    COMM_SUCCESS,
    PacketHandler,
    PortHandler,
)

from orchestrator.errors import InvalidArgument
from orchestrator_dynamixel import control_table as ct
from orchestrator_dynamixel.errors import BusTimeout, CommError, HardwareAlert, StatusError, ValueRefused

__all__ = ["Bus", "Link"]

log = logging.getLogger("orchestrator.dynamixel")

T = TypeVar("T")

# Slack added to a job's bound on top of its transactions' timeouts: thread hand-over and a busy
# machine.  A job still unfinished then means the bus (or the adapter's driver) is hung.
GRACE_S = 0.5


class _Port(PortHandler):  # type: ignore[misc]
    """The SDK's PortHandler with our status-packet timeout instead of its USB-latency guess."""

    def __init__(self, port_name: str) -> None:
        super().__init__(port_name)
        self.status_timeout_ms = 100.0

    def setPacketTimeout(self, packet_length: int) -> None:  # the SDK names it so
        super().setPacketTimeout(packet_length)
        self.packet_timeout = self.tx_time_per_byte * packet_length + self.status_timeout_ms


_Job = tuple["concurrent.futures.Future[Any]", Callable[["Bus"], Any]]


class Bus:
    _registry: ClassVar[dict[str, Bus]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, port: str, baudrate: int) -> None:
        self.port_name = port
        self.baudrate = baudrate
        self.users = 0
        self.packet = PacketHandler(2.0)
        self.sdk_port: _Port | None = None
        self._queue: queue.PriorityQueue[tuple[int, int, _Job | None]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._work, name=f"dynamixel[{port}]", daemon=True)
        self._thread.start()

    # -- sharing ---------------------------------------------------------------------------

    @classmethod
    def acquire(cls, port: str, baudrate: int) -> Bus:
        """The bus of ``port`` (created on first use); every acquire needs one :meth:`release`."""
        with cls._registry_lock:
            bus = cls._registry.get(port)
            if bus is None:
                bus = cls._registry[port] = Bus(port, baudrate)
            elif bus.baudrate != baudrate:
                raise InvalidArgument(
                    f"{port} is already open at {bus.baudrate} bps for another servo; every servo on one "
                    f"bus must use the same baudrate (got {baudrate})", port=port)
            bus.users += 1
            return bus

    def release(self, timeout_s: float = 2.0) -> None:
        """Drop one user; the last one closes the port and ends the worker thread (bounded wait)."""
        with self._registry_lock:
            self.users -= 1
            if self.users > 0:
                return
            if self._registry.get(self.port_name) is self:
                del self._registry[self.port_name]
        self.submit(lambda bus: bus._close_port())
        self._queue.put((1, next(self._seq), None))
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("dynamixel bus %s: worker thread still busy after %.1f s (a hung transaction); "
                        "left behind as a daemon thread", self.port_name, timeout_s)

    # -- the worker ------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            _, _, job = self._queue.get()
            if job is None:
                return
            fut, fn = job
            if not fut.set_running_or_notify_cancel():
                continue  # its caller gave up before it started: never send a stale command
            try:
                if self.sdk_port is not None:
                    self.sdk_port.is_using = False  # serialised here: no transaction is in flight
                fut.set_result(fn(self))
            except BaseException as exc:  # handed to the caller, whatever it is
                fut.set_exception(exc)

    def submit(self, fn: Callable[[Bus], T], *, urgent: bool = False) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((0 if urgent else 1, next(self._seq), (fut, fn)))
        return fut

    async def run(self, fn: Callable[[Bus], T], bound_s: float, what: str) -> T:
        """Run ``fn`` on the worker; wait at most ``bound_s`` (then :class:`BusTimeout`)."""
        fut = self.submit(fn)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), bound_s)
        except TimeoutError:
            fut.cancel()
            raise self._hung(what, bound_s) from None

    def run_sync(self, fn: Callable[[Bus], T], bound_s: float, what: str, *, urgent: bool = True) -> T:
        """Same as :meth:`run`, from a thread that is not the event loop's (blocks that thread)."""
        fut = self.submit(fn, urgent=urgent)
        try:
            return fut.result(timeout=bound_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise self._hung(what, bound_s) from None

    def _hung(self, what: str, bound_s: float) -> BusTimeout:
        return BusTimeout(f"{what}: the bus worker of {self.port_name} did not finish within {bound_s:.2f} s "
                          f"(another transaction is hung, or the port is blocked)", port=self.port_name)

    # -- the port (worker thread only) -----------------------------------------------------

    def ensure_open(self) -> _Port:
        if self.sdk_port is not None:
            return self.sdk_port
        port = _Port(self.port_name)
        port.baudrate = self.baudrate  # openPort() opens at port.baudrate
        try:
            ok = port.openPort()
        except Exception as exc:  # pyserial: SerialException, OSError
            raise CommError(f"cannot open {self.port_name}: {exc}", port=self.port_name) from None
        if not ok:
            raise CommError(f"cannot open {self.port_name} at {self.baudrate} bps", port=self.port_name)
        self.sdk_port = port
        return port

    def _close_port(self) -> None:
        if self.sdk_port is not None:
            try:
                self.sdk_port.closePort()
            finally:
                self.sdk_port = None

    def link(self, dxl_id: int, timeout_s: float, who: str) -> Link:
        return Link(self, dxl_id, timeout_s, who)


class Link:
    """Transactions with one servo id.  Worker thread only (inside a job).

    A status packet's error number raises at once; its alert bit is only remembered
    (:attr:`alert`), since the data that came with it is valid: :meth:`raise_alert` at the end of
    the job reads Hardware Error Status and raises :class:`HardwareAlert` naming each alert.
    """

    def __init__(self, bus: Bus, dxl_id: int, timeout_s: float, who: str) -> None:
        self.bus = bus
        self.id = dxl_id
        self.timeout_s = timeout_s
        self.who = who
        self.alert = False
        self.port = bus.ensure_open()
        self.port.status_timeout_ms = timeout_s * 1000.0

    @property
    def where(self) -> str:
        return f"{self.who}: Dynamixel id {self.id} on {self.bus.port_name}"

    def _details(self) -> dict[str, Any]:
        return {"port": self.bus.port_name, "id": self.id}

    def check(self, result: int, error: int, what: str, *, alert_ok: bool = False) -> None:
        if result == COMM_RX_TIMEOUT:
            raise BusTimeout(f"{self.where}: no status packet within {self.timeout_s:g} s ({what})",
                             **self._details())
        if result == COMM_RX_CORRUPT:
            raise CommError(f"{self.where}: corrupt status packet, CRC mismatch or truncated ({what})",
                            **self._details())
        if result != COMM_SUCCESS:
            reason = str(self.bus.packet.getTxRxResult(result)).removeprefix("[TxRxResult] ")
            raise CommError(f"{self.where}: {reason} ({what})", **self._details())
        number = error & ~ct.ERRBIT_ALERT
        if number:
            name = ct.status_error_name(error)
            cls = ValueRefused if number in (ct.ERR_DATA_RANGE, ct.ERR_DATA_LIMIT) else StatusError
            raise cls(f"{self.where}: {name} ({what})", error=name, **self._details())
        if error & ct.ERRBIT_ALERT and not alert_ok:
            self.alert = True

    def ping(self) -> int:
        """PING; the model number the servo answers with."""
        model, result, error = self.bus.packet.ping(self.port, self.id)
        self.check(result, error, "PING")
        return int(model)

    def read(self, item: ct.Item) -> int:
        ph, port = self.bus.packet, self.port
        if item.size == 1:
            value, result, error = ph.read1ByteTxRx(port, self.id, item.address)
        elif item.size == 2:
            value, result, error = ph.read2ByteTxRx(port, self.id, item.address)
        else:
            value, result, error = ph.read4ByteTxRx(port, self.id, item.address)
        self.check(result, error, f"READ {item}")
        return ct.to_signed32(int(value)) if item.size == 4 else int(value)

    def write(self, item: ct.Item, value: int) -> None:
        ph, port = self.bus.packet, self.port
        if item.size == 1:
            result, error = ph.write1ByteTxRx(port, self.id, item.address, value)
        elif item.size == 2:
            result, error = ph.write2ByteTxRx(port, self.id, item.address, value)
        else:
            result, error = ph.write4ByteTxRx(port, self.id, item.address, value & 0xFFFFFFFF)
        self.check(result, error, f"WRITE {item} = {value}")

    def raise_alert(self) -> None:
        """If a status packet of this job had the alert bit: read Hardware Error Status, raise."""
        if not self.alert:
            return
        value, result, error = self.bus.packet.read1ByteTxRx(self.port, self.id, ct.HARDWARE_ERROR_STATUS.address)
        self.check(result, error, f"READ {ct.HARDWARE_ERROR_STATUS}", alert_ok=True)
        bits = int(value)
        names = ct.alert_names(bits) or ["alert bit set, Hardware Error Status 0"]
        raise HardwareAlert(
            f"{self.where}: hardware alert: {', '.join(names)} (Hardware Error Status 0x{bits:02X}); "
            f"the servo turns its torque off on the alerts set in Shutdown (63), and only a REBOOT "
            f"or a power cycle clears them", alerts=names, hardware_error_status=bits, **self._details())
