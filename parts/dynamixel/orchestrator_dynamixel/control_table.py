"""The part of the X-series control table (Protocol 2.0) this package uses, and the degree convention.

Addresses and sizes are those of the XM430-W350 e-manual (every X-series model in position
control mode shares them).  Both the servo plugin and the simulator use these constants; the
plugin talks to the wire through the vendor SDK, the simulator through :mod:`.protocol`.

Degrees: one revolution is 4096 position values, 0.087890625 degree each (the e-manual rounds
it to 0.088 deg/value).  ``raw = round(deg * 4096 / 360)``: 0 deg is value 0, 180 deg is value
2048 (the middle of the range), and the highest
value, 4095, is 359.912 deg.  Angles grow counter-clockwise seen from the front of the servo
(the e-manual's convention for Goal Position).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

VALUES_PER_REV: Final = 4096
MAX_POSITION: Final = VALUES_PER_REV - 1
DEG_PER_VALUE: Final = 360.0 / VALUES_PER_REV
MAX_DEG: Final = MAX_POSITION * DEG_PER_VALUE  # 359.912109375
PROFILE_VELOCITY_RPM: Final = 0.229  # rev/min per Profile Velocity value
PROFILE_VELOCITY_MAX: Final = 32767
POSITION_CONTROL_MODE: Final = 3


@dataclass(frozen=True)
class Item:
    address: int
    size: int
    name: str

    def __str__(self) -> str:
        return f"{self.name} ({self.address})"


MODEL_NUMBER: Final = Item(0, 2, "Model Number")
FIRMWARE_VERSION: Final = Item(6, 1, "Firmware Version")
OPERATING_MODE: Final = Item(11, 1, "Operating Mode")
MAX_POSITION_LIMIT: Final = Item(48, 4, "Max Position Limit")
MIN_POSITION_LIMIT: Final = Item(52, 4, "Min Position Limit")
SHUTDOWN: Final = Item(63, 1, "Shutdown")
TORQUE_ENABLE: Final = Item(64, 1, "Torque Enable")
LED: Final = Item(65, 1, "LED")
HARDWARE_ERROR_STATUS: Final = Item(70, 1, "Hardware Error Status")
PROFILE_VELOCITY: Final = Item(112, 4, "Profile Velocity")
GOAL_POSITION: Final = Item(116, 4, "Goal Position")
MOVING: Final = Item(122, 1, "Moving")
PRESENT_POSITION: Final = Item(132, 4, "Present Position")

# Hardware Error Status (70) bits, X-series (bits 1, 6 and 7 are unused).
HW_INPUT_VOLTAGE: Final = 0x01
HW_OVERHEATING: Final = 0x04
HW_MOTOR_ENCODER: Final = 0x08
HW_ELECTRICAL_SHOCK: Final = 0x10
HW_OVERLOAD: Final = 0x20
HARDWARE_ALERTS: Final[dict[int, str]] = {
    HW_INPUT_VOLTAGE: "input voltage error",
    HW_OVERHEATING: "overheating error",
    HW_MOTOR_ENCODER: "motor encoder error",
    HW_ELECTRICAL_SHOCK: "electrical shock error",
    HW_OVERLOAD: "overload error",
}

# The error field of a status packet: bit 7 is the alert, bits 0-6 an error number.
ERRBIT_ALERT: Final = 0x80
ERR_RESULT_FAIL: Final = 1
ERR_INSTRUCTION: Final = 2
ERR_CRC: Final = 3
ERR_DATA_RANGE: Final = 4
ERR_DATA_LENGTH: Final = 5
ERR_DATA_LIMIT: Final = 6
ERR_ACCESS: Final = 7
STATUS_ERRORS: Final[dict[int, str]] = {
    ERR_RESULT_FAIL: "result fail",
    ERR_INSTRUCTION: "instruction error",
    ERR_CRC: "CRC error",
    ERR_DATA_RANGE: "data range error",
    ERR_DATA_LENGTH: "data length error",
    ERR_DATA_LIMIT: "data limit error",
    ERR_ACCESS: "access error",
}

# Model numbers of the X series (Model Number, address 0), for messages.
X_SERIES_MODELS: Final[dict[int, str]] = {
    1000: "XH430-W350", 1001: "XD430-T350", 1010: "XH430-W210", 1011: "XD430-T210",
    1020: "XM430-W350", 1030: "XM430-W210", 1040: "XH430-V350", 1050: "XH430-V210",
    1060: "XL430-W250", 1070: "XC430-W150", 1080: "XC430-W240", 1090: "2XL430-W250",
    1100: "XH540-W270", 1101: "XD540-T270", 1110: "XH540-W150", 1111: "XD540-T150",
    1120: "XM540-W270", 1130: "XM540-W150", 1140: "XH540-V270", 1150: "XH540-V150",
    1160: "2XC430-W250", 1170: "XW540-T260", 1180: "XW540-T140", 1190: "XL330-M077",
    1200: "XL330-M288", 1210: "XC330-T181", 1220: "XC330-T288", 1230: "XC330-M181",
    1240: "XC330-M288", 1270: "XW430-T333", 1280: "XW430-T200", 1310: "XW540-H260",
}


def model_name(number: int) -> str:
    return X_SERIES_MODELS.get(number, f"model {number}")


def alert_names(bits: int) -> list[str]:
    """The alerts set in a Hardware Error Status value, by name."""
    names = [name for bit, name in HARDWARE_ALERTS.items() if bits & bit]
    unknown = bits & ~sum(HARDWARE_ALERTS)
    if unknown:
        names.append(f"unknown hardware error bits 0x{unknown:02X}")
    return names


def status_error_name(error: int) -> str:
    number = error & ~ERRBIT_ALERT
    return STATUS_ERRORS.get(number, f"unknown error number {number}")


def deg_to_raw(deg: float) -> int:
    """Degrees to a position value (4096 per revolution, 180 deg = 2048)."""
    return round(deg / DEG_PER_VALUE)


def raw_to_deg(raw: int | float) -> float:
    return raw * DEG_PER_VALUE


def profile_velocity_deg_s(value: int) -> float:
    """Degrees per second of a Profile Velocity value (0 means: as fast as the motor can)."""
    return value * PROFILE_VELOCITY_RPM * 360.0 / 60.0


def to_signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value
