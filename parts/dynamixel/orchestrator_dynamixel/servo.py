"""``orc:dynamixel:servo``: one Dynamixel X-series servo in position control mode, over Protocol 2.0.

Degrees follow :mod:`.control_table`: 4096 position values per revolution, ``raw = round(deg *
4096 / 360)``, 180 deg = 2048, 0-359.912 deg.  Every transaction runs on the bus's worker thread
(:mod:`.bus`); the async methods await it with a bound, so a hung bus costs a call an error and
never blocks the part.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.errors import InternalError, InvalidArgument
from orchestrator.resources.base import Resource, Servo, actuating
from orchestrator_dynamixel import control_table as ct
from orchestrator_dynamixel.bus import GRACE_S, Bus, Link
from orchestrator_dynamixel.errors import BusTimeout, NotPositionMode, ServoNotFound

__all__ = ["DynamixelServo", "DynamixelServoAttributes"]

log = logging.getLogger("orchestrator.dynamixel")

T = TypeVar("T")

Baudrate = Literal[9600, 57600, 115200, 1_000_000, 2_000_000, 3_000_000, 4_000_000]


class DynamixelServoAttributes(BaseModel):
    """Attributes of ``orc:dynamixel:servo`` (strict: ``"90"`` is not a number, NaN is refused)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    port: str = Field(min_length=1, description="serial device of the bus, e.g. /dev/ttyUSB0 (a U2D2), "
                                                "or the simulator's pty")
    baudrate: Baudrate = Field(default=57600, description="bus speed in bps; the X series' factory "
                                                          "default is 57600; every servo of a port shares it")
    id: int = Field(ge=0, le=252, description="the servo's Dynamixel id (factory default 1)")
    min_deg: float = Field(default=0.0, ge=0.0, le=ct.MAX_DEG,
                           description="lowest angle move() accepts (0 deg = position value 0)")
    max_deg: float = Field(default=ct.MAX_DEG, ge=0.0, le=ct.MAX_DEG,
                           description="highest angle move() accepts (at most 359.912 deg = position 4095)")
    profile_velocity: int | None = Field(
        default=None, ge=0, le=ct.PROFILE_VELOCITY_MAX,
        description="Profile Velocity (112) written at start, in 0.229 rev/min (about 1.374 deg/s) per unit; "
                    "0 = as fast as the motor can; absent = leave the servo's value")
    stop_mode: Literal["hold", "torque_off"] = Field(
        default="hold", description="stop(): 'hold' sets Goal Position to Present Position (the servo holds "
                                    "where it is, under torque); 'torque_off' turns torque off (it goes limp)")
    timeout_s: float = Field(default=0.1, gt=0.0, le=5.0,
                             description="how long one status packet may take, beyond its transmission time")

    @model_validator(mode="after")
    def _limits(self) -> DynamixelServoAttributes:
        if self.min_deg >= self.max_deg:
            raise ValueError(f"min_deg ({self.min_deg}) must be below max_deg ({self.max_deg})")
        return self


@dataclass(frozen=True)
class DeviceInfo:
    model_number: int
    min_raw: int  # Min Position Limit (52)
    max_raw: int  # Max Position Limit (48)

    @property
    def model(self) -> str:
        return ct.model_name(self.model_number)


class DynamixelServo(Servo):
    """A Dynamixel X-series servo (Protocol 2.0) in position control mode."""

    def __init__(self, name: str, attributes: DynamixelServoAttributes,
                 deps: dict[str, Resource] | None = None) -> None:
        super().__init__(name)
        self.attributes = attributes
        self.info: DeviceInfo | None = None
        self._bus: Bus | None = None
        self.min_deg = attributes.min_deg
        self.max_deg = attributes.max_deg

    # -- plumbing --------------------------------------------------------------------------

    def _bound(self, transactions: int) -> float:
        # each transaction: its timeout plus the transmission of ~20 bytes; one more for an alert read
        per = self.attributes.timeout_s + 200.0 / self.attributes.baudrate
        return (transactions + 1) * per + GRACE_S

    def _link(self, bus: Bus) -> Link:
        return bus.link(self.attributes.id, self.attributes.timeout_s, self.name)

    def _bus_or_raise(self) -> Bus:
        if self._bus is None:
            raise InternalError(f"{self.name}: not started (or already closed)")
        return self._bus

    async def _run(self, job: Callable[[Link], T], transactions: int, what: str, *, alerts: bool = True) -> T:
        """Run ``job`` on the bus worker, bounded; a status packet's alert bit raises HardwareAlert."""
        bus = self._bus_or_raise()

        def wrapped(b: Bus) -> T:
            link = self._link(b)
            out = job(link)
            if alerts:
                link.raise_alert()
            elif link.alert:
                log.warning("%s: closed with a hardware alert pending (Hardware Error Status is set)", self.name)
            return out

        return await bus.run(wrapped, self._bound(transactions), f"{self.name}.{what}")

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        a = self.attributes
        bus = await asyncio.to_thread(Bus.acquire, a.port, a.baudrate)
        self._bus = bus
        try:
            info = await self._run(self._start_job, 8, "start")
        except BaseException:
            self._bus = None
            await asyncio.to_thread(bus.release)
            raise
        self.info = info
        self.min_deg = max(a.min_deg, ct.raw_to_deg(info.min_raw))
        self.max_deg = min(a.max_deg, ct.raw_to_deg(info.max_raw))
        log.info("%s: %s id %d on %s at %d bps, torque on, moves within [%.3f, %.3f] deg",
                 self.name, info.model, a.id, a.port, a.baudrate, self.min_deg, self.max_deg)

    def _start_job(self, link: Link) -> DeviceInfo:
        a = self.attributes
        try:
            model = link.ping()
        except BusTimeout:
            raise ServoNotFound(
                f"{self.name}: no Dynamixel answered a PING for id {a.id} on {a.port} at {a.baudrate} bps "
                f"within {a.timeout_s:g} s: check the id, the baudrate, the power supply and the wiring",
                port=a.port, id=a.id) from None
        if model not in ct.X_SERIES_MODELS:
            log.warning("%s: id %d on %s is model number %d, not a known X-series model; assuming the "
                        "X-series control table", self.name, a.id, a.port, model)
        mode = link.read(ct.OPERATING_MODE)
        if mode != ct.POSITION_CONTROL_MODE:
            raise NotPositionMode(
                f"{link.where} ({ct.model_name(model)}) is in operating mode {mode}; this plugin drives "
                f"position control mode ({ct.POSITION_CONTROL_MODE}): set Operating Mode (11) to 3 "
                f"with torque off (e.g. with DYNAMIXEL Wizard)", port=a.port, id=a.id)
        lo, hi = link.read(ct.MIN_POSITION_LIMIT), link.read(ct.MAX_POSITION_LIMIT)
        if max(a.min_deg, ct.raw_to_deg(lo)) > min(a.max_deg, ct.raw_to_deg(hi)):
            raise InvalidArgument(
                f"{self.name}: min_deg/max_deg [{a.min_deg}, {a.max_deg}] do not overlap the servo's Min/Max "
                f"Position Limit [{ct.raw_to_deg(lo):.3f}, {ct.raw_to_deg(hi):.3f}] deg ({lo}-{hi})",
                port=a.port, id=a.id)
        if a.profile_velocity is not None:
            link.write(ct.PROFILE_VELOCITY, a.profile_velocity)
        present = link.read(ct.PRESENT_POSITION)
        if not lo <= present <= hi:
            raise InvalidArgument(
                f"{link.where}: Present Position {present} ({ct.raw_to_deg(present):.3f} deg) is outside its "
                f"Min/Max Position Limit [{lo}, {hi}]: turning torque on would move it; move it within the "
                f"limits by hand, or widen them", port=a.port, id=a.id)
        # hold where it is: the goal first (a RAM write, accepted with torque off), then torque on
        link.write(ct.GOAL_POSITION, present)
        link.write(ct.TORQUE_ENABLE, 1)
        return DeviceInfo(model, lo, hi)

    async def close(self) -> None:
        bus = self._bus
        if bus is None:
            return
        try:
            await self._run(self._torque_off_job, 1, "close", alerts=False)
        finally:
            self._bus = None
            await asyncio.to_thread(bus.release)

    # -- the Servo API ---------------------------------------------------------------------

    @actuating
    async def move(self, angle_deg: float) -> None:
        """Go to ``angle_deg`` (returns once the servo accepted the goal; poll is_moving())."""
        if not isinstance(angle_deg, int | float) or isinstance(angle_deg, bool) or not math.isfinite(angle_deg):
            raise InvalidArgument(f"{self.name}.move: angle_deg must be a finite number, got {angle_deg!r}")
        if not self.min_deg <= angle_deg <= self.max_deg:
            raise InvalidArgument(
                f"{self.name}.move: angle_deg must be within [{self.min_deg:g}, {self.max_deg:g}] deg "
                f"(min_deg/max_deg and the servo's position limits), got {angle_deg:g}")
        raw = ct.deg_to_raw(angle_deg)
        if self.info is not None:
            raw = min(max(raw, self.info.min_raw), self.info.max_raw)
        await self._run(lambda link: self._move_job(link, raw), 5, f"move({angle_deg:g})")

    def _move_job(self, link: Link, raw: int) -> None:
        # Torque may be off: after a torque_off stop or a power cycle; then hold first, torque on,
        # then go.  A servo reporting an alert (shut down on a hardware error) is sent nothing.
        torque = link.read(ct.TORQUE_ENABLE)
        if link.alert:
            return  # the job's end raises HardwareAlert
        if not torque:
            link.write(ct.GOAL_POSITION, self._hold_goal(link.read(ct.PRESENT_POSITION)))
            link.write(ct.TORQUE_ENABLE, 1)
        link.write(ct.GOAL_POSITION, raw)

    async def get_position(self) -> float:
        """Present Position (132) in degrees."""
        return ct.raw_to_deg(await self._run(lambda link: link.read(ct.PRESENT_POSITION), 1, "get_position"))

    async def is_moving(self) -> bool:
        """Moving (122): 1 while the profile towards Goal Position runs."""
        return bool(await self._run(lambda link: link.read(ct.MOVING), 1, "is_moving"))

    async def stop(self) -> None:
        """Per ``stop_mode``: hold (Goal Position := Present Position) or torque off."""
        if self._bus is None:
            return  # nothing was started: nothing moves
        await self._run(self._stop_job, 2, "stop")

    def emergency_stop(self) -> None:
        """Synchronous and thread-safe: what stop() does, ahead of the bus queue, without the event loop.

        In ``hold`` mode a failure to hold (the goal write refused, the position unreadable) falls
        back to turning torque off.
        """
        bus = self._bus
        if bus is None:
            return

        def job(b: Bus) -> None:
            link = self._link(b)
            try:
                self._stop_job(link)
            except Exception:
                if self.attributes.stop_mode != "hold":
                    raise
                log.exception("%s: emergency hold failed, turning torque off", self.name)
                self._torque_off_job(link)
            link.raise_alert()

        bus.run_sync(job, self._bound(3), f"{self.name}.emergency_stop")

    # -- jobs (bus worker) -----------------------------------------------------------------

    def _hold_goal(self, present: int) -> int:
        if self.info is None:
            return present
        return min(max(present, self.info.min_raw), self.info.max_raw)

    def _stop_job(self, link: Link) -> None:
        if self.attributes.stop_mode == "torque_off":
            self._torque_off_job(link)
            return
        link.write(ct.GOAL_POSITION, self._hold_goal(link.read(ct.PRESENT_POSITION)))

    def _torque_off_job(self, link: Link) -> None:
        link.write(ct.TORQUE_ENABLE, 0)

