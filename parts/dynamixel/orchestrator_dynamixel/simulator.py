"""A bus of simulated Dynamixel X-series servos speaking Protocol 2.0 on a pseudo-terminal.

The simulator opens a pty pair (raw mode) and answers on the master side; its :attr:`port`, the
slave path (``/dev/pts/N``), is opened by the vendor SDK's ``PortHandler`` exactly like a
``/dev/ttyUSB0`` behind a U2D2.  Every byte crosses the pty: framing, byte stuffing and CRC are
those of the e-manual (:mod:`.protocol`), nothing is shared with the SDK.

What is modelled, per id (XM430-W350, model number 1020, by default):

- the control table addresses 0-146 with their sizes, access (read-only / read-write), EEPROM or
  RAM area and value ranges; a read may span several items (and the gaps between them), a write
  must cover whole read-write items;
- instructions PING, READ, WRITE, REG_WRITE / ACTION, REBOOT, SYNC_READ, SYNC_WRITE (broadcast
  PING too); anything else is answered with an instruction error;
- status errors: CRC error (an instruction whose CRC does not match), instruction error, data
  length error (a write that ends inside an item, malformed parameters), data range error (a
  value outside an item's range), data limit error (Goal Position outside Min/Max Position
  Limit in position control mode), access error (writing a read-only or undefined address,
  writing the EEPROM area while torque is on, reading past the table), result fail (REG_WRITE
  of an invalid write, found at ACTION); the alert bit (0x80) while Hardware Error Status (70)
  is not zero;
- Status Return Level (68): 0 answers PING only, 1 PING and READ, 2 everything;
- motion: a thread moves Present Position towards Goal Position while torque is on, at the
  Profile Velocity (0 means the motor's no-load speed, ``max_speed_deg_s``); Moving (122) is 1
  while the goal is not reached;
- torque off: a Goal Position write is stored and accepted, but nothing moves.  It is no error:
  the Protocol 2.0 e-manual's Access Error covers a read-only or undefined address and "a value
  in the ROM domain while in a state of Torque Enable (ROM Lock)", and the XM430-W350 page says
  "Data in the EEPROM Area can only be written when the value of Torque Enable(64) is cleared to
  '0'"; Goal Position (116) is in the RAM area, so writing it with torque off is allowed.
  When torque is turned on, Goal Position is set to Present Position, so the servo holds where
  it is instead of jumping to a goal written long ago.  The e-manual does not say what Goal
  Position becomes at torque-on; this is the safe reading (ROBOTIS support reported this
  behaviour for an RX-28), and the servo plugin never depends on it: it writes the goal itself;
- a hardware error (:meth:`DynamixelSimulator.inject_hardware_error`) sets Hardware Error
  Status; if its bit is in Shutdown (63, default overload, electrical shock, overheating) torque
  goes off and cannot be turned on again until REBOOT, as the e-manual says.

Test knobs: :meth:`~DynamixelSimulator.drop_responses` (the instruction is executed, its status
packet never sent: the host times out), :meth:`~DynamixelSimulator.corrupt_responses` (the status
packet's CRC is wrong), :meth:`~DynamixelSimulator.inject_hardware_error`.

Run ``python -m orchestrator_dynamixel.simulator --ids 1,2`` for a demo bus: it prints the pty
path (and ``--link PATH`` makes a stable symlink to it) and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import pty
import select
import signal
import sys
import threading
import time
import tty
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from orchestrator_dynamixel import control_table as ct
from orchestrator_dynamixel import protocol as p

__all__ = ["DynamixelSimulator", "SimDevice", "main"]

TABLE_SIZE: Final = 147  # addresses 0-146 (indirect addresses are not modelled)
DEFAULT_MAX_SPEED_DEG_S: Final = 46.0 * 6.0  # XM430-W350 no-load speed at 12 V: 46 rev/min


@dataclass(frozen=True)
class Spec:
    """One item of the control table."""

    address: int
    size: int
    name: str
    writable: bool
    eeprom: bool
    lo: int = 0
    hi: int = 0
    default: int = 0
    signed: bool = False
    allowed: frozenset[int] | None = None

    def accepts(self, value: int) -> bool:
        if self.allowed is not None:
            return value in self.allowed
        return self.lo <= value <= self.hi


def _specs() -> dict[int, Spec]:
    rw, r = True, False
    items = [
        # EEPROM area (writable only while torque is off)
        Spec(0, 2, "Model Number", r, True),
        Spec(2, 4, "Model Information", r, True),
        Spec(6, 1, "Firmware Version", r, True),
        Spec(7, 1, "ID", rw, True, 0, p.MAX_ID, 1),
        Spec(8, 1, "Baud Rate", rw, True, 0, 7, 1),
        Spec(9, 1, "Return Delay Time", rw, True, 0, 254, 250),
        Spec(10, 1, "Drive Mode", rw, True, 0, 13, 0),
        Spec(11, 1, "Operating Mode", rw, True, default=3, allowed=frozenset({0, 1, 3, 4, 5, 16})),
        Spec(12, 1, "Secondary(Shadow) ID", rw, True, 0, 255, 255),
        Spec(13, 1, "Protocol Type", rw, True, default=2, allowed=frozenset({1, 2})),
        Spec(20, 4, "Homing Offset", rw, True, -1_044_479, 1_044_479, 0, signed=True),
        Spec(24, 4, "Moving Threshold", rw, True, 0, 1023, 10),
        Spec(31, 1, "Temperature Limit", rw, True, 0, 100, 80),
        Spec(32, 2, "Max Voltage Limit", rw, True, 95, 160, 160),
        Spec(34, 2, "Min Voltage Limit", rw, True, 95, 160, 95),
        Spec(36, 2, "PWM Limit", rw, True, 0, 885, 885),
        Spec(38, 2, "Current Limit", rw, True, 0, 1193, 1193),
        Spec(40, 4, "Acceleration Limit", rw, True, 0, 32767, 32767),
        Spec(44, 4, "Velocity Limit", rw, True, 0, 1023, 350),
        Spec(48, 4, "Max Position Limit", rw, True, 0, ct.MAX_POSITION, ct.MAX_POSITION),
        Spec(52, 4, "Min Position Limit", rw, True, 0, ct.MAX_POSITION, 0),
        Spec(63, 1, "Shutdown", rw, True, 0, 255, 0x34),
        # RAM area
        Spec(64, 1, "Torque Enable", rw, False, 0, 1, 0),
        Spec(65, 1, "LED", rw, False, 0, 1, 0),
        Spec(68, 1, "Status Return Level", rw, False, 0, 2, 2),
        Spec(69, 1, "Registered Instruction", r, False),
        Spec(70, 1, "Hardware Error Status", r, False),
        Spec(76, 2, "Velocity I Gain", rw, False, 0, 16383, 1920),
        Spec(78, 2, "Velocity P Gain", rw, False, 0, 16383, 100),
        Spec(80, 2, "Position D Gain", rw, False, 0, 16383, 0),
        Spec(82, 2, "Position I Gain", rw, False, 0, 16383, 0),
        Spec(84, 2, "Position P Gain", rw, False, 0, 16383, 800),
        Spec(88, 2, "Feedforward 2nd Gain", rw, False, 0, 16383, 0),
        Spec(90, 2, "Feedforward 1st Gain", rw, False, 0, 16383, 0),
        Spec(98, 1, "Bus Watchdog", rw, False, 0, 127, 0),
        Spec(100, 2, "Goal PWM", rw, False, -885, 885, 0, signed=True),
        Spec(102, 2, "Goal Current", rw, False, -1193, 1193, 0, signed=True),
        Spec(104, 4, "Goal Velocity", rw, False, -1023, 1023, 0, signed=True),
        Spec(108, 4, "Profile Acceleration", rw, False, 0, 32767, 0),
        Spec(112, 4, "Profile Velocity", rw, False, 0, ct.PROFILE_VELOCITY_MAX, 0),
        Spec(116, 4, "Goal Position", rw, False, -1_048_575, 1_048_575, 0, signed=True),
        Spec(120, 2, "Realtime Tick", r, False),
        Spec(122, 1, "Moving", r, False),
        Spec(123, 1, "Moving Status", r, False),
        Spec(124, 2, "Present PWM", r, False, signed=True),
        Spec(126, 2, "Present Current", r, False, signed=True),
        Spec(128, 4, "Present Velocity", r, False, signed=True),
        Spec(132, 4, "Present Position", r, False, signed=True),
        Spec(136, 4, "Velocity Trajectory", r, False, signed=True),
        Spec(140, 4, "Position Trajectory", r, False, signed=True),
        Spec(144, 2, "Present Input Voltage", r, False),
        Spec(146, 1, "Present Temperature", r, False),
    ]
    return {s.address: s for s in items}


SPECS: Final = _specs()
POSITION_MODES: Final = frozenset({3, 4, 5})  # modes in which Goal Position drives the motor


class SimDevice:
    """One simulated servo.  Every method is called with the bus lock held."""

    def __init__(self, dxl_id: int, *, model_number: int = 1020, firmware: int = 48,
                 position: int = 2048, max_speed_deg_s: float = DEFAULT_MAX_SPEED_DEG_S) -> None:
        self.mem = bytearray(TABLE_SIZE)
        self.model_number = model_number
        self.firmware = firmware
        self.max_speed_deg_s = max_speed_deg_s
        self.present = float(position)
        self.velocity_raw_s = 0.0
        self.registered: tuple[int, bytes] | None = None
        self._t0 = time.monotonic()
        self._last = self._t0
        self._reset_table(eeprom=True)
        self._set(7, dxl_id)
        self._set(116, position)

    # -- raw table access ------------------------------------------------------------------

    def _get(self, address: int) -> int:
        s = SPECS[address]
        return int.from_bytes(self.mem[address:address + s.size], "little", signed=s.signed)

    def _set(self, address: int, value: int) -> None:
        s = SPECS[address]
        self.mem[address:address + s.size] = (value & ((1 << (8 * s.size)) - 1)).to_bytes(s.size, "little")

    def _reset_table(self, *, eeprom: bool) -> None:
        """Initial values: of the RAM area (a REBOOT), or of the whole table too (a power-on)."""
        for s in SPECS.values():
            if eeprom or not s.eeprom:
                self._set(s.address, s.default)
        if eeprom:
            self._set(0, self.model_number)
            self._set(6, self.firmware)
        self._set(116, round(self.present))
        self.registered = None

    @property
    def id(self) -> int:
        return self.mem[7]

    @property
    def torque(self) -> bool:
        return bool(self.mem[64])

    @property
    def goal(self) -> int:
        return self._get(116)

    @property
    def moving(self) -> bool:
        return bool(self.mem[122])

    @property
    def hardware_error(self) -> int:
        return self.mem[70]

    @property
    def status_return_level(self) -> int:
        return self.mem[68]

    # -- motion -----------------------------------------------------------------------------

    def _speed_raw_s(self) -> float:
        pv = self._get(112)
        max_deg_s = self.max_speed_deg_s
        deg_s = max_deg_s if pv == 0 else min(max_deg_s, ct.profile_velocity_deg_s(pv))
        return deg_s / ct.DEG_PER_VALUE

    def advance(self, now: float) -> None:
        dt = max(0.0, now - self._last)
        self._last = now
        goal = float(self.goal)
        if self.torque and self.mem[11] in POSITION_MODES and self.present != goal:
            step = self._speed_raw_s() * dt
            delta = goal - self.present
            if abs(delta) <= step:
                self.present = goal
                self.velocity_raw_s = 0.0
            else:
                self.present += step if delta > 0 else -step
                self.velocity_raw_s = step / dt if dt > 0 else 0.0
                if delta < 0:
                    self.velocity_raw_s = -self.velocity_raw_s
        else:
            self.velocity_raw_s = 0.0
        moving = self.torque and self.present != goal
        self.mem[122] = int(moving)
        self.mem[123] = 0 if moving else 0x01  # bit 0: arrived (in position)
        self._set(128, round(self.velocity_raw_s * ct.DEG_PER_VALUE * 60 / 360 / ct.PROFILE_VELOCITY_RPM))
        self._set(132, round(self.present))
        self._set(136, self._get(128))
        self._set(140, round(self.present))
        self._set(120, int((now - self._t0) * 1000) % 32768)
        self._set(144, 120)  # 12.0 V
        self._set(146, 32)  # deg C

    # -- instructions ----------------------------------------------------------------------

    def read(self, address: int, length: int) -> tuple[int, bytes]:
        if length < 1:
            return ct.ERR_DATA_LENGTH, b""
        if address + length > TABLE_SIZE:
            return ct.ERR_ACCESS, b""
        return 0, bytes(self.mem[address:address + length])

    def check_write(self, address: int, data: bytes) -> tuple[int, list[tuple[Spec, int]]]:
        """Validate a write (all of it, before any of it is applied): (error number, items)."""
        if not data:
            return ct.ERR_DATA_LENGTH, []
        items: list[tuple[Spec, int]] = []
        i = 0
        while i < len(data):
            s = SPECS.get(address + i)
            if s is None:
                return ct.ERR_ACCESS, []
            if i + s.size > len(data):
                return ct.ERR_DATA_LENGTH, []
            value = int.from_bytes(data[i:i + s.size], "little", signed=s.signed)
            if not s.writable or (s.eeprom and self.torque):
                return ct.ERR_ACCESS, []
            if not s.accepts(value):
                return ct.ERR_DATA_RANGE, []
            if s.address == 116 and self.mem[11] == ct.POSITION_CONTROL_MODE \
                    and not self._get(52) <= value <= self._get(48):
                return ct.ERR_DATA_LIMIT, []
            items.append((s, value))
            i += s.size
        return 0, items

    def write(self, address: int, data: bytes) -> int:
        error, items = self.check_write(address, data)
        if error:
            return error
        for s, value in items:
            if s.address == 64:
                if value and not self.torque:
                    if self.hardware_error:
                        continue  # shut down: only REBOOT turns torque on again
                    self._set(116, round(self.present))  # hold where it is
                self._set(64, value)
                continue
            self._set(s.address, value)
        return 0

    def reg_write(self, address: int, data: bytes) -> int:
        if not data:
            return ct.ERR_DATA_LENGTH
        self.registered = (address, bytes(data))
        self.mem[69] = 1
        return 0

    def action(self) -> int:
        if self.registered is None:
            return ct.ERR_INSTRUCTION  # "Action has been used without Reg Write"
        address, data = self.registered
        self.registered = None
        self.mem[69] = 0
        return ct.ERR_RESULT_FAIL if self.write(address, data) else 0

    def reboot(self) -> None:
        self.velocity_raw_s = 0.0
        self._reset_table(eeprom=False)  # RAM back to its initial values: torque off, errors cleared

    def fault(self, bits: int) -> None:
        self.mem[70] |= bits
        if bits & self.mem[63]:
            self.mem[64] = 0  # shutdown: torque off, the motor's output becomes 0 %

    def ping_params(self) -> bytes:
        return bytes([self.model_number & 0xFF, self.model_number >> 8, self.firmware])


@dataclass(frozen=True)
class Received:
    at: float
    packet: p.Packet


class DynamixelSimulator:
    """A bus of simulated servos behind a pty.  ``with DynamixelSimulator([1, 2]) as sim: sim.port``."""

    def __init__(self, ids: Iterable[int] = (1,), *, model_number: int = 1020, position: int = 2048,
                 max_speed_deg_s: float = DEFAULT_MAX_SPEED_DEG_S, tick_s: float = 0.005,
                 link: str | None = None) -> None:
        self.lock = threading.RLock()
        self.devices: dict[int, SimDevice] = {}
        for i in ids:
            if not 0 <= i <= p.MAX_ID:
                raise ValueError(f"Dynamixel ids are 0-{p.MAX_ID}, got {i}")
            self.devices[i] = SimDevice(i, model_number=model_number, position=position,
                                        max_speed_deg_s=max_speed_deg_s)
        self.tick_s = tick_s
        self.link = link
        self.received: collections.deque[Received] = collections.deque(maxlen=10_000)
        self.counts: collections.Counter[str] = collections.Counter()
        self._drop: list[tuple[int | None, int]] = []
        self._corrupt: list[tuple[int | None, int]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._master = self._slave = -1
        self.port = ""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> DynamixelSimulator:
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline: bytes go through untouched
        self.port = os.ttyname(self._slave)
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)
            os.symlink(self.port, self.link)
        self._threads = [
            threading.Thread(target=self._serve, name="dxl-sim.bus", daemon=True),
            threading.Thread(target=self._move, name="dxl-sim.motion", daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                if os.path.islink(self.link) and os.readlink(self.link) == self.port:
                    os.unlink(self.link)

    def __enter__(self) -> DynamixelSimulator:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- state, for tests and the demo (thread-safe) ---------------------------------------

    def device(self, dxl_id: int) -> SimDevice:
        return self.devices[dxl_id]

    def _now(self, dxl_id: int) -> SimDevice:
        dev = self.devices[dxl_id]
        dev.advance(time.monotonic())
        return dev

    def position(self, dxl_id: int) -> int:
        with self.lock:
            return round(self._now(dxl_id).present)

    def position_deg(self, dxl_id: int) -> float:
        with self.lock:
            return ct.raw_to_deg(self._now(dxl_id).present)

    def goal(self, dxl_id: int) -> int:
        with self.lock:
            return self.devices[dxl_id].goal

    def torque(self, dxl_id: int) -> bool:
        with self.lock:
            return self.devices[dxl_id].torque

    def moving(self, dxl_id: int) -> bool:
        with self.lock:
            return self._now(dxl_id).moving

    def value(self, dxl_id: int, address: int) -> int:
        """An item of the control table, decoded (e.g. ``value(1, 112)`` is Profile Velocity)."""
        with self.lock:
            return self._now(dxl_id)._get(address)

    def writes(self, dxl_id: int, address: int) -> list[bytes]:
        """Data of every WRITE (or SYNC_WRITE) received for ``address`` of ``dxl_id``, oldest first."""
        out = []
        with self.lock:
            for r in self.received:
                pk = r.packet
                if pk.instruction == p.WRITE and pk.id == dxl_id and len(pk.params) >= 2 \
                        and pk.params[0] | (pk.params[1] << 8) == address:
                    out.append(pk.params[2:])
                elif pk.instruction == p.SYNC_WRITE and len(pk.params) >= 4 \
                        and pk.params[0] | (pk.params[1] << 8) == address:
                    n = pk.params[2] | (pk.params[3] << 8)
                    for k in range(4, len(pk.params) - n, n + 1):
                        if pk.params[k] == dxl_id:
                            out.append(pk.params[k + 1:k + 1 + n])
        return out

    # -- knobs -----------------------------------------------------------------------------

    def drop_responses(self, count: int = 1, *, dxl_id: int | None = None) -> None:
        """Execute the next ``count`` instructions (of ``dxl_id``, or any) but send no status packet."""
        with self.lock:
            self._drop.append((dxl_id, count))

    def corrupt_responses(self, count: int = 1, *, dxl_id: int | None = None) -> None:
        """Send the next ``count`` status packets (of ``dxl_id``, or any) with a wrong CRC."""
        with self.lock:
            self._corrupt.append((dxl_id, count))

    def inject_hardware_error(self, dxl_id: int, bits: int = ct.HW_OVERLOAD) -> None:
        """Raise a hardware error (Hardware Error Status bits); shuts the servo down per Shutdown (63)."""
        with self.lock:
            dev = self._now(dxl_id)
            dev.fault(bits)

    def clear_knobs(self) -> None:
        with self.lock:
            self._drop.clear()
            self._corrupt.clear()

    @staticmethod
    def _take(knobs: list[tuple[int | None, int]], dxl_id: int) -> bool:
        for i, (who, left) in enumerate(knobs):
            if who is None or who == dxl_id:
                if left <= 1:
                    del knobs[i]
                else:
                    knobs[i] = (who, left - 1)
                return True
        return False

    # -- the bus ---------------------------------------------------------------------------

    def _move(self) -> None:
        while not self._stop.wait(self.tick_s):
            now = time.monotonic()
            with self.lock:
                for dev in self.devices.values():
                    dev.advance(now)

    def _serve(self) -> None:
        parser = p.Parser()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.05)
            except (OSError, ValueError):
                return
            data = b""
            if ready:
                try:
                    data = os.read(self._master, 4096)
                except OSError:  # no process has the slave open: nothing to read yet
                    self._stop.wait(0.01)
                    continue
            for packet in parser.feed(data):
                for reply in self.handle(packet):
                    try:
                        os.write(self._master, reply)
                    except OSError:
                        pass

    def handle(self, packet: p.Packet) -> list[bytes]:
        """Execute one instruction packet; the status packets to send, in order."""
        with self.lock:
            now = time.monotonic()
            self.received.append(Received(now, packet))
            self.counts[packet.name] += 1
            alerting = set()
            for dev in self.devices.values():
                dev.advance(now)
                if dev.hardware_error:
                    alerting.add(dev.id)  # a REBOOT's own status still carries the alert
            replies = self._execute(packet)
            out = []
            for dxl_id, error, params in replies:
                if self._take(self._drop, dxl_id):
                    self.counts["dropped"] += 1
                    continue
                sender = self.devices.get(dxl_id)
                if dxl_id in alerting or (sender is not None and sender.hardware_error):
                    error |= ct.ERRBIT_ALERT
                raw = p.encode_status(dxl_id, error, params)
                if self._take(self._corrupt, dxl_id):
                    self.counts["corrupted"] += 1
                    raw = raw[:-2] + bytes([raw[-2] ^ 0xFF, raw[-1]])
                out.append(raw)
            return out

    def _answer(self, dev: SimDevice, instruction: int) -> bool:
        level = dev.status_return_level
        return instruction == p.PING or level == 2 or (level == 1 and instruction == p.READ)

    def _execute(self, pk: p.Packet) -> list[tuple[int, int, bytes]]:
        if not pk.crc_ok:
            dev = self.devices.get(pk.id)
            return [(pk.id, ct.ERR_CRC, b"")] if dev is not None else []
        if pk.id == p.BROADCAST_ID:
            return self._broadcast(pk)
        dev = self.devices.get(pk.id)
        if dev is None:
            return []
        error, params = self._unicast(dev, pk)
        if not self._answer(dev, pk.instruction):
            return []
        return [(dev.id, error, params)]

    def _unicast(self, dev: SimDevice, pk: p.Packet) -> tuple[int, bytes]:
        ins, prm = pk.instruction, pk.params
        if ins == p.PING:
            return 0, dev.ping_params()
        if ins == p.READ:
            if len(prm) != 4:
                return ct.ERR_DATA_LENGTH, b""
            return dev.read(prm[0] | (prm[1] << 8), prm[2] | (prm[3] << 8))
        if ins in (p.WRITE, p.REG_WRITE):
            if len(prm) < 3:
                return ct.ERR_DATA_LENGTH, b""
            address, data = prm[0] | (prm[1] << 8), bytes(prm[2:])
            old = dev.id
            error = dev.write(address, data) if ins == p.WRITE else dev.reg_write(address, data)
            if dev.id != old:  # the ID item was written: the device answers under its new id
                self.devices.pop(old, None)
                self.devices[dev.id] = dev
            return error, b""
        if ins == p.ACTION:
            return dev.action(), b""
        if ins == p.REBOOT:
            dev.reboot()
            return 0, b""
        return ct.ERR_INSTRUCTION, b""

    def _broadcast(self, pk: p.Packet) -> list[tuple[int, int, bytes]]:
        ins, prm = pk.instruction, pk.params
        devices = sorted(self.devices.values(), key=lambda d: d.id)
        if ins == p.PING:
            return [(d.id, 0, d.ping_params()) for d in devices]
        if ins == p.SYNC_READ:
            if len(prm) < 5:
                return []
            address, length = prm[0] | (prm[1] << 8), prm[2] | (prm[3] << 8)
            out = []
            for dxl_id in prm[4:]:  # answered in the order of the request
                dev = self.devices.get(dxl_id)
                if dev is not None:
                    error, data = dev.read(address, length)
                    out.append((dxl_id, error, data))
            return out
        if ins == p.SYNC_WRITE:
            if len(prm) < 5:
                return []
            address, length = prm[0] | (prm[1] << 8), prm[2] | (prm[3] << 8)
            body = prm[4:]
            for k in range(0, len(body) - length, length + 1):
                dev = self.devices.get(body[k])
                if dev is not None:
                    dev.write(address, bytes(body[k + 1:k + 1 + length]))
            return []
        for dev in devices:  # WRITE, REG_WRITE, ACTION, REBOOT to everyone, answered by no one
            if ins in (p.WRITE, p.REG_WRITE, p.ACTION, p.REBOOT):
                self._unicast(dev, pk)
        return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m orchestrator_dynamixel.simulator",
                                 description="Simulated Dynamixel X-series servos (Protocol 2.0) on a pty.")
    ap.add_argument("--ids", default="1", help="comma-separated ids on the bus (default: 1)")
    ap.add_argument("--model", type=int, default=1020, help="model number (default 1020, XM430-W350)")
    ap.add_argument("--link", help="also make this path a symlink to the pty (e.g. /tmp/dynamixel-sim)")
    args = ap.parse_args(argv)
    try:
        ids = [int(x) for x in args.ids.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--ids: comma-separated integers, got {args.ids!r}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with DynamixelSimulator(ids, model_number=args.model, link=args.link) as sim:
        print(sim.port, flush=True)
        if args.link:
            print(f"{args.link} -> {sim.port}", file=sys.stderr, flush=True)
        print(f"{ct.model_name(args.model)} ids {ids} at {sim.port}; Ctrl-C to stop", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
