"""The Dynamixel plugin (parts/dynamixel): the Protocol 2.0 simulator, the servo through a pty and the
vendor SDK, and a robot hosting it on a real broker.

Every wait polls a condition under a bounded deadline; nothing sleeps a fixed time to let
something happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dynamixel_sdk import (
    BROADCAST_ID,
    COMM_RX_CORRUPT,
    COMM_RX_TIMEOUT,
    COMM_SUCCESS,
    GroupSyncRead,
    GroupSyncWrite,
    PacketHandler,
    PortHandler,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from inproc import client_for, running_robot
from orchestrator_dynamixel import DynamixelServo, DynamixelServoAttributes
from orchestrator_dynamixel import control_table as ct
from orchestrator_dynamixel import protocol as p
from orchestrator_dynamixel.bus import Bus
from orchestrator_dynamixel.errors import BusTimeout, CommError, HardwareAlert, ServoNotFound, ValueRefused
from orchestrator_dynamixel.simulator import DynamixelSimulator
from pydantic import ValidationError

from orchestrator import DeadlineExceeded, InternalError, InvalidArgument
from orchestrator.config import load_config
from orchestrator.resources.base import Servo
from orchestrator.resources.registry import default_registry
from orchestrator.rpc.methods import api_methods

HERE = Path(__file__).parent
ROOT = HERE.parent
pytestmark = pytest.mark.timeout(30)


# ----------------------------------------------------------------------------------------- helpers


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.005)


async def until(cond: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll ``cond`` (plain or async) until it holds; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.005)


@pytest.fixture(autouse=True)
def no_bus_left_open() -> Iterator[None]:
    yield
    leftover = dict(Bus._registry)
    for bus in leftover.values():  # a failed test must not hand a stale port to the next one
        bus.users = 1
        bus.release()
    assert not leftover, f"buses left open: {sorted(leftover)}"


@pytest.fixture
def sim() -> Iterator[DynamixelSimulator]:
    with DynamixelSimulator([1, 2]) as s:
        yield s


@contextlib.asynccontextmanager
async def started(sim: DynamixelSimulator, name: str = "wrist", **attrs: Any) -> AsyncIterator[DynamixelServo]:
    a = {"port": sim.port, "id": 1, "timeout_s": 0.5, **attrs}  # generous: a loaded machine, not a timeout test
    servo = DynamixelServo(name, DynamixelServoAttributes.model_validate(a))
    await servo.start()
    try:
        yield servo
    finally:
        await servo.close()


@contextlib.contextmanager
def sdk_port(sim: DynamixelSimulator, baudrate: int = 57600) -> Iterator[tuple[Any, Any]]:
    port = PortHandler(sim.port)
    assert port.openPort() and port.setBaudRate(baudrate)
    try:
        yield port, PacketHandler(2.0)
    finally:
        port.closePort()


def status(sim: DynamixelSimulator, dxl_id: int, instruction: int, params: bytes = b"") -> list[p.Packet]:
    """Hand one instruction to the simulator (no pty); its decoded status packets."""
    return [p.decode(raw) for raw in sim.handle(p.decode(p.encode(dxl_id, instruction, params)))]


def error_of(packets: list[p.Packet]) -> int:
    assert len(packets) == 1, packets
    return packets[0].params[0]


def u16(v: int) -> bytes:
    return v.to_bytes(2, "little")


def le(v: int, n: int) -> bytes:
    return (v & ((1 << (8 * n)) - 1)).to_bytes(n, "little")


# ------------------------------------------------------------------------- protocol: CRC, stuffing

# Packets printed in the ROBOTIS e-manual (Protocol 2.0 page), CRC included.
EMANUAL_PACKETS = [
    "FF FF FD 00 01 03 00 01 19 4E",                                # Ping, ID 1
    "FF FF FD 00 01 07 00 55 00 06 04 26 65 5D",                    # its status: model 1030, fw 38
    "FF FF FD 00 FE 03 00 01 31 42",                                # broadcast Ping
    "FF FF FD 00 02 07 00 55 00 06 04 26 6F 6D",                    # ID 2 status
    "FF FF FD 00 01 07 00 02 84 00 04 00 1D 15",                    # Read Present Position
    "FF FF FD 00 01 08 00 55 00 A6 00 00 00 8C C0",                 # its status: 166
    "FF FF FD 00 01 09 00 03 74 00 00 02 00 00 CA 89",              # Write Goal Position 512
    "FF FF FD 00 01 04 00 55 00 A1 0C",                             # its status
    "FF FF FD 00 01 09 00 04 68 00 C8 00 00 00 AE 8E",              # Reg Write Goal Velocity 200
    "FF FF FD 00 01 03 00 05 02 CE",                                # Action
    "FF FF FD 00 01 03 00 08 2F 4E",                                # Reboot
    "FF FF FD 00 FE 09 00 82 84 00 04 00 01 02 CE FA",              # Sync Read ids 1, 2
    "FF FF FD 00 02 08 00 55 00 1F 08 00 00 BA BE",                 # ID 2 status: 2079
    "FF FF FD 00 FE 11 00 83 74 00 04 00 01 96 00 00 00 02 AA 00 00 00 82 87",  # Sync Write
    "FF FF FD 00 FE 0D 00 92 01 90 00 02 00 02 92 00 01 00 1A 05",  # Bulk Read
    "FF FF FD 00 01 06 00 03 40 00 01 DB 66",                       # Torque Enable = 1 (ROBOTIS forum)
]


@pytest.mark.parametrize("packet", EMANUAL_PACKETS)
def test_crc_matches_the_e_manual_examples(packet: str) -> None:
    raw = bytes.fromhex(packet)
    crc = p.crc16(raw[:-2])
    assert bytes([crc & 0xFF, crc >> 8]) == raw[-2:]
    assert p.decode(raw).crc_ok


def test_encoding_reproduces_the_e_manual_packets() -> None:
    assert p.encode(1, p.PING).hex(" ") == "ff ff fd 00 01 03 00 01 19 4e"
    assert p.encode_status(1, 0, bytes([0x06, 0x04, 0x26])) == bytes.fromhex(EMANUAL_PACKETS[1])
    assert p.encode(1, p.WRITE, u16(116) + le(512, 4)) == bytes.fromhex(EMANUAL_PACKETS[6])
    assert p.encode(p.BROADCAST_ID, p.SYNC_READ, u16(132) + u16(4) + bytes([1, 2])) == \
        bytes.fromhex(EMANUAL_PACKETS[11])


def test_the_crc_table_is_the_e_manuals() -> None:
    # a few entries of the table printed in the e-manual (and in the SDK)
    assert p.CRC_TABLE[:8] == (0x0000, 0x8005, 0x800F, 0x000A, 0x801B, 0x001E, 0x0014, 0x8011)
    assert p.CRC_TABLE[-8:] == (0x8213, 0x0216, 0x021C, 0x8219, 0x0208, 0x820D, 0x8207, 0x0202)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_our_crc_equals_the_sdks(data: bytes) -> None:
    assert p.crc16(data) == PacketHandler(2.0).updateCRC(0, list(data), len(data))


def test_stuffing_inserts_fd_after_ff_ff_fd() -> None:
    assert p.stuff(b"\x03\xff\xff\xfd\x01") == b"\x03\xff\xff\xfd\xfd\x01"
    assert p.stuff(b"\xff\xff\xfd\xfd") == b"\xff\xff\xfd\xfd\xfd"  # an existing FF FF FD FD too
    assert p.unstuff(b"\x03\xff\xff\xfd\xfd\x01") == b"\x03\xff\xff\xfd\x01"
    packet = p.encode(1, p.WRITE, u16(20) + bytes([0xFF, 0xFF, 0xFD, 0xFF]))
    assert packet[5] == 10  # length counts the stuffed byte: inst + 2 addr + 5 data + 2 CRC
    assert b"\xff\xff\xfd\xfd" in packet
    assert p.decode(packet).params == u16(20) + bytes([0xFF, 0xFF, 0xFD, 0xFF])


class _FakePort:
    """Enough of the SDK's PortHandler for its packet handler to encode to / decode from bytes."""

    def __init__(self, incoming: bytes = b"") -> None:
        self.is_using = False
        self.written = b""
        self.incoming = bytearray(incoming)

    def clearPort(self) -> None:  # the SDK's names
        pass

    def writePort(self, packet: list[int]) -> int:
        self.written = bytes(packet)
        return len(packet)

    def readPort(self, length: int) -> list[int]:
        out = list(self.incoming[:length])
        del self.incoming[:length]
        return out

    def isPacketTimeout(self) -> bool:
        return True


RICH = st.lists(st.sampled_from([0x00, 0x01, 0xFD, 0xFF]), max_size=24)  # bytes that make stuffing happen


def _sdk_packet(dxl_id: int, instruction: int, params: bytes) -> list[int]:
    """A packet as the SDK lays it out before sending: header, id, length, instruction, params, CRC room."""
    return [0xFF, 0xFF, 0xFD, 0x00, dxl_id, (len(params) + 3) & 0xFF, (len(params) + 3) >> 8, instruction,
            *params, 0, 0]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([p.WRITE, p.STATUS]), RICH)
def test_our_stuffing_is_the_sdks(instruction: int, data: list[int]) -> None:
    out = PacketHandler(2.0).addStuffing(_sdk_packet(1, instruction, bytes(data)))
    length = out[5] | (out[6] << 8)
    assert bytes(out[7:7 + length - 2]) == p.stuff(bytes([instruction, *data]))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 252), RICH)
def test_the_sdk_decodes_our_status_packets(dxl_id: int, data: list[int]) -> None:
    ph = PacketHandler(2.0)
    body = bytes([0x00, *data])  # error byte, then the parameters
    # The SDK's removeStuffing is not the inverse of its own addStuffing for a few payloads (e.g.
    # FF FF FD FF FD FD): there it would garble a real servo's answer too.  Judge ours elsewhere.
    stuffed = ph.addStuffing(_sdk_packet(dxl_id, p.STATUS, body))
    assume(bytes(ph.removeStuffing(list(stuffed))[8:8 + len(body)]) == body)
    rx, result = ph.rxPacket(_FakePort(p.encode_status(dxl_id, 0, bytes(data))), False)
    assert result == COMM_SUCCESS
    assert (rx[4], rx[5] | (rx[6] << 8), bytes(rx[9:9 + len(data)])) == (dxl_id, len(data) + 4, bytes(data))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 252), st.sampled_from([p.WRITE, p.REG_WRITE]), RICH)
def test_the_simulator_reads_what_the_sdk_sends(dxl_id: int, instruction: int, data: list[int]) -> None:
    params = bytes([20, 0, *data])
    # dynamixel-sdk 4.x's txPacket drops addStuffing's result when stuffing lengthens the packet, so
    # FF FF FD goes out unstuffed; a servo (and the simulator) frames by length and CRC and only
    # removes an FD that follows FF FF FD, so such a packet still arrives intact unless it holds FF FF FD FD.
    assume(b"\xff\xff\xfd\xfd" not in params)
    port = _FakePort()
    assert PacketHandler(2.0).txPacket(port, _sdk_packet(dxl_id, instruction, params)) == COMM_SUCCESS
    got = p.decode(port.written)
    assert (got.id, got.instruction, got.params, got.crc_ok) == (dxl_id, instruction, params, True)
    if b"\xff\xff\xfd" not in params:
        assert port.written == p.encode(dxl_id, instruction, params)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0x00, 0xFD, 0xFF, 0x55]), max_size=40))
def test_unstuff_undoes_stuff(body: list[int]) -> None:
    stuffed = p.stuff(bytes(body))
    assert p.unstuff(stuffed) == bytes(body)
    # no header can appear inside a stuffed body
    assert all(stuffed[i + 3] == 0xFD for i in range(len(stuffed) - 3) if stuffed[i:i + 3] == b"\xff\xff\xfd")


def test_the_parser_resynchronises_after_noise_and_splits_packets() -> None:
    parser = p.Parser()
    a, b = p.encode(1, p.PING), p.encode(2, p.READ, u16(132) + u16(4))
    got = parser.feed(b"\x00\xff\xfd" + a[:5], now=0.0) + parser.feed(a[5:] + b + b"\xff", now=0.01)
    assert [(x.id, x.instruction) for x in got] == [(1, p.PING), (2, p.READ)]
    assert parser.pending == 1
    bad = bytearray(p.encode(1, p.PING))
    bad[-1] ^= 0xFF
    assert parser.feed(bytes(bad), now=0.02) == [p.Packet(1, p.PING, b"", crc_ok=False)]
    # a partial packet that never completes is dropped once stale
    parser.feed(p.HEADER + b"\x01\x20\x00", now=1.0)
    assert parser.feed(b"", now=2.0) == [] and parser.pending < 7
    assert parser.feed(p.encode(1, p.PING), now=2.01)[-1].id == 1


# ------------------------------------------------------------------------ simulator: status errors


def test_status_errors_of_the_simulator() -> None:
    s = DynamixelSimulator([1])
    assert error_of(status(s, 1, 0x77)) == ct.ERR_INSTRUCTION
    assert error_of(status(s, 1, p.WRITE, u16(132) + le(5, 4))) == ct.ERR_ACCESS       # read-only
    assert error_of(status(s, 1, p.WRITE, u16(66) + b"\x00")) == ct.ERR_ACCESS         # undefined
    assert error_of(status(s, 1, p.WRITE, u16(116) + le(1, 2))) == ct.ERR_DATA_LENGTH  # half an item
    assert error_of(status(s, 1, p.WRITE, u16(64) + b"\x02")) == ct.ERR_DATA_RANGE     # torque 2
    assert error_of(status(s, 1, p.WRITE, u16(112) + le(40000, 4))) == ct.ERR_DATA_RANGE
    assert error_of(status(s, 1, p.READ, u16(140) + u16(20))) == ct.ERR_ACCESS         # past the table
    assert error_of(status(s, 1, p.ACTION)) == ct.ERR_INSTRUCTION                      # no REG_WRITE
    assert error_of(status(s, 1, p.WRITE, u16(48) + le(3000, 4))) == 0                 # EEPROM, torque off
    assert error_of(status(s, 1, p.WRITE, u16(116) + le(3500, 4))) == ct.ERR_DATA_LIMIT  # beyond 3000
    assert error_of(status(s, 1, p.WRITE, u16(64) + b"\x01")) == 0
    assert error_of(status(s, 1, p.WRITE, u16(48) + le(4095, 4))) == ct.ERR_ACCESS     # EEPROM, torque on
    # a corrupted instruction is answered with a CRC error
    bad = bytearray(p.encode(1, p.PING))
    bad[-2] ^= 0x01
    assert [p.decode(r).params[0] for r in s.handle(p.Parser().feed(bytes(bad))[0])] == [ct.ERR_CRC]
    # nobody answers for an absent id, broadcast writes are not answered
    assert status(s, 9, p.PING) == []
    assert status(s, p.BROADCAST_ID, p.WRITE, u16(65) + b"\x01") == [] and s.value(1, 65) == 1


def test_alert_bit_and_reboot() -> None:
    s = DynamixelSimulator([1])
    status(s, 1, p.WRITE, u16(64) + b"\x01")
    s.inject_hardware_error(1, ct.HW_OVERHEATING)
    assert not s.torque(1)  # overheating is in Shutdown (63) by default: torque off
    (st_,) = status(s, 1, p.READ, u16(70) + u16(1))
    assert st_.params == bytes([ct.ERRBIT_ALERT, ct.HW_OVERHEATING])
    status(s, 1, p.WRITE, u16(64) + b"\x01")
    assert not s.torque(1)  # only REBOOT turns torque on again
    assert error_of(status(s, 1, p.REBOOT)) & ct.ERRBIT_ALERT  # the reboot's own status still alerts
    assert error_of(status(s, 1, p.PING)) == 0 and s.value(1, 70) == 0
    assert error_of(status(s, 1, p.WRITE, u16(64) + b"\x01")) == 0 and s.torque(1)


def test_status_return_level_and_broadcast_ping() -> None:
    s = DynamixelSimulator([3, 1, 2])
    assert [(x.id, x.params) for x in status(s, p.BROADCAST_ID, p.PING)] == \
        [(i, bytes([0x00, 0xFC, 0x03, 48])) for i in (1, 2, 3)]  # model 1020 = 0x03FC, by id order
    status(s, 2, p.WRITE, u16(68) + b"\x00")
    assert status(s, 2, p.READ, u16(132) + u16(4)) == [] and len(status(s, 2, p.PING)) == 1
    status(s, 3, p.WRITE, u16(68) + b"\x01")
    assert len(status(s, 3, p.READ, u16(132) + u16(4))) == 1 and status(s, 3, p.WRITE, u16(65) + b"\x01") == []


# --------------------------------------------------------------- simulator: through a pty, real SDK


def test_the_sdk_talks_to_the_simulator_through_the_pty(sim: DynamixelSimulator) -> None:
    with sdk_port(sim) as (port, ph):
        assert ph.ping(port, 1) == (1020, COMM_SUCCESS, 0)
        assert ph.ping(port, 2)[0] == 1020
        assert ph.ping(port, 3)[1] == COMM_RX_TIMEOUT
        assert ph.read2ByteTxRx(port, 1, 0) == (1020, COMM_SUCCESS, 0)
        assert ph.read4ByteTxRx(port, 1, 132) == (2048, COMM_SUCCESS, 0)
        # a value whose bytes are FF FF FD FF: stuffed both ways by the SDK and by us
        assert ph.write4ByteTxRx(port, 2, 20, -131073 & 0xFFFFFFFF) == (COMM_SUCCESS, 0)
        assert ph.read4ByteTxRx(port, 2, 20)[0] == -131073 & 0xFFFFFFFF
        assert sim.value(2, 20) == -131073
        assert ph.write4ByteTxRx(port, 1, 116, 5000) == (COMM_SUCCESS, ct.ERR_DATA_LIMIT)
        assert ph.write1ByteTxRx(port, 1, 11, 4) == (COMM_SUCCESS, 0)  # EEPROM, torque off: fine
        assert ph.write1ByteTxRx(port, 1, 11, 3) == (COMM_SUCCESS, 0)


def test_sync_write_and_sync_read_of_several_ids(sim: DynamixelSimulator) -> None:
    with sdk_port(sim) as (port, ph):
        torque = GroupSyncWrite(port, ph, 64, 1)
        goal = GroupSyncWrite(port, ph, 116, 4)
        for dxl_id, target in ((1, 2100), (2, 1900)):
            assert torque.addParam(dxl_id, [1])
            assert goal.addParam(dxl_id, list(target.to_bytes(4, "little")))
        assert torque.txPacket() == COMM_SUCCESS and goal.txPacket() == COMM_SUCCESS
        wait_until(lambda: sim.position(1) == 2100 and sim.position(2) == 1900, 5, "both servos at their goals")
        read = GroupSyncRead(port, ph, 132, 4)
        assert read.addParam(1) and read.addParam(2)
        assert read.txRxPacket() == COMM_SUCCESS
        assert (read.getData(1, 132, 4), read.getData(2, 132, 4)) == (2100, 1900)
        # REG_WRITE, then a broadcast ACTION starts the registered move
        assert ph.regWriteTxRx(port, 1, 116, 4, list((2000).to_bytes(4, "little"))) == (COMM_SUCCESS, 0)
        assert sim.value(1, 69) == 1 and sim.goal(1) == 2100
        assert ph.action(port, BROADCAST_ID) == COMM_SUCCESS
        wait_until(lambda: sim.position(1) == 2000, 5, "the registered goal")


def test_motion_follows_the_profile_velocity_and_moving_drops_at_the_goal(sim: DynamixelSimulator) -> None:
    with sdk_port(sim) as (port, ph):
        ph.write4ByteTxRx(port, 1, 112, 100)  # 100 x 0.229 rev/min = 137.4 deg/s
        ph.write1ByteTxRx(port, 1, 64, 1)
        t0 = time.monotonic()
        assert ph.write4ByteTxRx(port, 1, 116, 2048 + 512) == (COMM_SUCCESS, 0)  # +45 deg
        assert ph.read1ByteTxRx(port, 1, 122)[0] == 1
        positions = []
        while ph.read1ByteTxRx(port, 1, 122)[0]:
            positions.append(ph.read4ByteTxRx(port, 1, 132)[0])
            assert time.monotonic() - t0 < 5, "still moving after 5 s"
        elapsed = time.monotonic() - t0
        assert positions == sorted(positions) and len(set(positions)) > 3
        assert ph.read4ByteTxRx(port, 1, 132)[0] == 2560
        assert 45 / 137.4 * 0.8 < elapsed < 45 / 137.4 + 2.0


def test_torque_off_ignores_goals_and_torque_on_holds(sim: DynamixelSimulator) -> None:
    with sdk_port(sim) as (port, ph):
        assert ph.write4ByteTxRx(port, 1, 116, 3000) == (COMM_SUCCESS, 0)  # accepted, not executed
        assert sim.position(1) == 2048 and ph.read1ByteTxRx(port, 1, 122)[0] == 0
        assert ph.write1ByteTxRx(port, 1, 64, 1) == (COMM_SUCCESS, 0)
        assert sim.goal(1) == 2048 and not sim.moving(1)  # torque on: holds where it is


def test_knobs_drop_and_corrupt_responses(sim: DynamixelSimulator) -> None:
    with sdk_port(sim) as (port, ph):
        sim.drop_responses(1, dxl_id=1)
        assert ph.write1ByteTxRx(port, 1, 65, 1) == (COMM_RX_TIMEOUT, 0)
        assert sim.value(1, 65) == 1  # executed, only the status packet was lost
        sim.corrupt_responses(1)
        assert ph.read4ByteTxRx(port, 1, 132)[1] == COMM_RX_CORRUPT
        assert ph.read4ByteTxRx(port, 1, 132) == (2048, COMM_SUCCESS, 0)
        assert sim.counts["dropped"] == 1 and sim.counts["corrupted"] == 1
        sim.inject_hardware_error(2, ct.HW_OVERLOAD)
        assert ph.ping(port, 2) == (1020, COMM_SUCCESS, ct.ERRBIT_ALERT)


@pytest.mark.timeout(30)
def test_the_simulator_runs_as_a_command(tmp_path: Path) -> None:
    link = tmp_path / "dxl"
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator_dynamixel.simulator", "--ids", "1,2",
                             "--link", str(link)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/pts/"), path
        assert os.path.realpath(link) == path
        port = PortHandler(str(link))
        assert port.openPort()
        try:
            ph = PacketHandler(2.0)
            assert ph.ping(port, 2)[:2] == (1020, COMM_SUCCESS)
        finally:
            port.closePort()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not link.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


# ---------------------------------------------------------------------------- the plugin, directly


def test_registered_as_a_servo_with_the_servo_wire_methods() -> None:
    reg = default_registry().get("orc:dynamixel:servo")
    assert reg.cls is DynamixelServo and reg.kind is Servo
    methods = api_methods(DynamixelServo)
    assert set(methods) == {"move", "get_position", "is_moving", "stop", "do_command"}
    assert methods["move"].actuating and not methods["stop"].actuating
    assert list(methods["move"].params.model_fields) == ["angle_deg"]


def test_attributes_are_strict_and_documented() -> None:
    ok = DynamixelServoAttributes.model_validate({"port": "/dev/ttyUSB0", "id": 3})
    assert (ok.baudrate, ok.min_deg, ok.max_deg, ok.stop_mode, ok.profile_velocity) == \
        (57600, 0.0, ct.MAX_DEG, "hold", None)
    for bad in ({"id": 3}, {"port": "/dev/x", "id": 253}, {"port": "/dev/x", "id": "3"},
                {"port": "/dev/x", "id": 1, "min_deg": float("nan")}, {"port": "/dev/x", "id": 1, "max_deg": 360},
                {"port": "/dev/x", "id": 1, "min_deg": 90, "max_deg": 90}, {"port": "/dev/x", "id": 1, "baud": 1},
                {"port": "/dev/x", "id": 1, "baudrate": 12345}, {"port": "/dev/x", "id": 1, "stop_mode": "brake"},
                {"port": "/dev/x", "id": 1, "timeout_s": 0}, {"port": "/dev/x", "id": 1, "profile_velocity": -1}):
        with pytest.raises(ValidationError):
            DynamixelServoAttributes.model_validate(bad)
    schema = DynamixelServoAttributes.model_json_schema()
    assert all(f.get("description") for f in schema["properties"].values())


def test_degree_convention() -> None:
    assert ct.deg_to_raw(180.0) == 2048 and ct.raw_to_deg(2048) == 180.0
    assert ct.deg_to_raw(0.0) == 0 and ct.deg_to_raw(ct.MAX_DEG) == 4095
    assert ct.raw_to_deg(1024) == 90.0 and ct.deg_to_raw(0.088) == 1


async def test_start_pings_reads_the_model_and_enables_torque(sim: DynamixelSimulator) -> None:
    async with started(sim, profile_velocity=200) as servo:
        assert servo.info is not None and servo.info.model == "XM430-W350"
        assert sim.counts["PING"] == 1
        assert sim.torque(1) and sim.goal(1) == sim.position(1) == 2048
        assert sim.value(1, 112) == 200
        assert await servo.get_position() == 180.0 and not await servo.is_moving()
    assert not sim.torque(1)  # close() turns torque off


async def test_move_reaches_the_target(sim: DynamixelSimulator) -> None:
    async with started(sim, profile_velocity=300) as servo:
        await servo.move(225.5)
        assert sim.goal(1) == ct.deg_to_raw(225.5)
        await until(lambda: servo.is_moving(), 2, "the servo to start moving")
        await until(lambda: _not(servo.is_moving()), 5, "the servo to arrive")
        assert abs(await servo.get_position() - 225.5) <= ct.DEG_PER_VALUE / 2


async def _not(aw: Any) -> bool:
    return not await aw


async def test_moves_outside_the_limits_and_non_finite_angles_are_refused(sim: DynamixelSimulator) -> None:
    with sim.lock:
        sim.device(1)._set(48, 3072)  # the servo's own Max Position Limit: 270 deg
    async with started(sim, min_deg=30.0, max_deg=300.0) as servo:
        assert (servo.min_deg, servo.max_deg) == (30.0, 270.0)
        goals_before = len(sim.writes(1, 116))
        for angle in (29.9, 270.1, 300.0, float("nan"), float("inf"), -float("inf")):
            with pytest.raises(InvalidArgument):
                await servo.move(angle)
        assert len(sim.writes(1, 116)) == goals_before  # nothing reached the wire
        with pytest.raises(InvalidArgument, match="finite"):
            await servo.move(float("nan"))
        await servo.move(270.0)
        assert sim.goal(1) == 3072


async def test_stop_holds_the_present_position(sim: DynamixelSimulator) -> None:
    async with started(sim, profile_velocity=30) as servo:  # about 41 deg/s
        await servo.move(350.0)
        await until(lambda: sim.position(1) > 2048 + 40, 5, "some motion")
        await servo.stop()
        await until(lambda: _not(servo.is_moving()), 1, "the servo to stop")
        here = sim.position(1)
        assert sim.goal(1) == here < ct.deg_to_raw(350.0) - 100
        assert sim.torque(1)  # holding, under torque
        await servo.stop()  # again: harmless
        assert sim.position(1) == here


async def test_torque_off_mode_releases_and_a_move_takes_it_again(sim: DynamixelSimulator) -> None:
    async with started(sim, stop_mode="torque_off", profile_velocity=300) as servo:
        await servo.move(200.0)
        await servo.stop()
        assert not sim.torque(1) and not await servo.is_moving()
        await servo.move(100.0)
        assert sim.torque(1)
        await until(lambda: abs(sim.position_deg(1) - 100.0) < 0.1, 5, "the servo to reach 100 deg")
        with sim.lock:
            sim.device(1).reboot()  # as after a power cycle: RAM reset, torque off
        await servo.move(120.0)
        assert sim.torque(1) and sim.goal(1) == ct.deg_to_raw(120.0)


async def test_emergency_stop_from_another_thread_with_the_loop_blocked(sim: DynamixelSimulator) -> None:
    async with started(sim, profile_velocity=30) as servo:
        await servo.move(350.0)
        await until(lambda: sim.moving(1), 2, "motion")
        # the watchdog's situation: the event loop is stalled, another thread stops the servo
        t = threading.Thread(target=servo.emergency_stop, name="test.watchdog")
        t.start()
        t.join(5)  # blocks this event loop on purpose while emergency_stop() runs
        assert not t.is_alive()
        wait_until(lambda: not sim.moving(1), 1, "the servo to stop")
        assert sim.goal(1) == sim.position(1) < ct.deg_to_raw(350.0) - 100


async def test_an_absent_id_fails_start_clearly_and_releases_the_port(sim: DynamixelSimulator) -> None:
    servo = DynamixelServo("elbow", DynamixelServoAttributes(port=sim.port, id=7))
    with pytest.raises(ServoNotFound) as info:
        await servo.start()
    assert f"id 7 on {sim.port}" in str(info.value) and "57600 bps" in str(info.value)
    assert sim.port not in Bus._registry
    await servo.stop()  # a never-started servo stops without error


async def test_a_missing_port_fails_start_clearly(tmp_path: Path) -> None:
    servo = DynamixelServo("elbow", DynamixelServoAttributes(port=str(tmp_path / "ttyUSB9"), id=1))
    with pytest.raises(CommError, match="cannot open"):
        await servo.start()


async def test_a_hardware_error_surfaces_naming_the_alert(sim: DynamixelSimulator) -> None:
    async with started(sim) as servo:
        sim.inject_hardware_error(1, ct.HW_OVERLOAD | ct.HW_INPUT_VOLTAGE)
        goals = len(sim.writes(1, 116))
        with pytest.raises(HardwareAlert) as info:
            await servo.move(90.0)
        assert len(sim.writes(1, 116)) == goals  # a servo in alert is not sent a goal
        assert "overload error" in str(info.value) and "input voltage error" in str(info.value)
        assert info.value.details["hardware_error_status"] == 0x21 and info.value.code == "internal"
        with pytest.raises(HardwareAlert):
            await servo.get_position()


async def test_device_refusals_and_a_hung_bus(sim: DynamixelSimulator) -> None:
    async with started(sim, timeout_s=0.1) as servo:  # a move's bound: 6 x 0.1 s + 0.5 s
        with sim.lock:
            sim.device(1)._set(48, 2500)  # someone narrowed the limit after start
        with pytest.raises(ValueRefused, match="data limit error"):
            await servo.move(300.0)
        # a transaction that never returns costs its caller a bounded error, not the loop
        bus = Bus._registry[sim.port]
        release = threading.Event()
        blocker = bus.submit(lambda b: release.wait(10))
        t0 = time.monotonic()
        with pytest.raises(BusTimeout, match="did not finish"):
            await servo.move(100.0)
        assert time.monotonic() - t0 < 3
        release.set()
        await asyncio.wrap_future(blocker)
        assert sim.goal(1) == 2048  # the move that timed out in the queue never reached the servo
        await servo.move(100.0)
        assert sim.goal(1) == ct.deg_to_raw(100.0)


async def test_a_dropped_response_is_an_error_and_the_next_call_works(sim: DynamixelSimulator) -> None:
    async with started(sim, timeout_s=0.2) as servo:
        sim.drop_responses(1)
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"no status packet within 0\.2 s"):
            await servo.get_position()
        assert 0.2 <= time.monotonic() - t0 < 2
        sim.corrupt_responses(1)
        with pytest.raises(CommError, match="corrupt"):
            await servo.is_moving()
        assert await servo.get_position() == 180.0


async def test_two_servos_share_one_bus(sim: DynamixelSimulator) -> None:
    async with started(sim, "a", id=1, profile_velocity=400) as a, \
            started(sim, "b", id=2, profile_velocity=400) as b:
        assert len(Bus._registry) == 1 and Bus._registry[sim.port].users == 2
        await asyncio.gather(a.move(120.0), b.move(240.0))
        await until(lambda: _both_still(a, b), 5, "both servos to arrive")
        half = ct.DEG_PER_VALUE / 2  # 120 deg is position 1365.33: the nearest value is 1365
        assert (await a.get_position(), await b.get_position()) == (pytest.approx(120.0, abs=half),
                                                                     pytest.approx(240.0, abs=half))
        with pytest.raises(InvalidArgument, match="same baudrate"):
            Bus.acquire(sim.port, 1_000_000)


async def _both_still(a: DynamixelServo, b: DynamixelServo) -> bool:
    moving = await asyncio.gather(a.is_moving(), b.is_moving())
    return not any(moving)


def test_the_example_config_validates() -> None:
    loaded = load_config(ROOT / "examples" / "dynamixel.yaml")
    models = {r.model for part in loaded.config.parts for r in part.resources}
    assert "orc:dynamixel:servo" in models


# --------------------------------------------------------------------- end to end, on real brokers

WINDOW = 0.3


def servo_part(sim: DynamixelSimulator, *extra: dict[str, Any], **attrs: Any) -> list[dict[str, Any]]:
    return [{"name": "main", "resources": [
        {"name": "wrist", "model": "orc:dynamixel:servo",
         "attributes": {"port": sim.port, "id": 1, "timeout_s": 0.25, **attrs}},
        *extra,
    ]}]


@pytest.mark.timeout(60)
async def test_a_client_moves_the_servo_over_mqtt(broker_kind: str, tmp_path: Path, sim: DynamixelSimulator) -> None:
    ghost = {"name": "ghost", "model": "orc:dynamixel:servo", "attributes": {"port": sim.port, "id": 7}}
    parts = servo_part(sim, ghost, profile_velocity=300, max_deg=270.0)
    async with running_robot(tmp_path, broker_kind, parts) as (loaded, running), client_for(loaded) as client:
        await until(lambda: "wrist" in running["main"].host.resources, 10, "the servo to start")
        # an absent id leaves its resource degraded with the reason; the part runs (and retries it)
        ghost_state = running["main"].host.states["ghost"]
        assert ghost_state.status == "degraded" and f"id 7 on {sim.port}" in str(ghost_state.reason)
        wrist = client.resource("main/wrist", Servo)
        await wrist.move(90.0)
        await until(lambda: _not(wrist.is_moving()), 10, "the move over MQTT to finish")
        assert await wrist.get_position() == 90.0 and sim.position(1) == 1024
        with pytest.raises(InvalidArgument, match="within"):
            await wrist.move(300.0)
        with pytest.raises(InvalidArgument, match="finite"):
            await wrist.move(float("nan"))
        sim.drop_responses(1)
        with pytest.raises(DeadlineExceeded, match="no status packet"):
            await wrist.get_position()
        assert await wrist.get_position() == 90.0  # the part kept serving
        sim.inject_hardware_error(1, ct.HW_OVERHEATING)
        with pytest.raises(InternalError, match="overheating error") as info:
            await wrist.move(45.0)
        assert info.value.details["alerts"] == ["overheating error"]


@pytest.mark.timeout(60)
async def test_a_session_expiry_stops_the_servo_through_the_protocol(
        broker_kind: str, tmp_path: Path, sim: DynamixelSimulator) -> None:
    parts = servo_part(sim, profile_velocity=20)  # about 27 deg/s: 180 -> 350 deg takes 6 s
    async with running_robot(tmp_path, broker_kind, parts, sessions={"heartbeat_window_s": WINDOW}) as robot:
        loaded, running = robot
        await until(lambda: "wrist" in running["main"].host.resources, 10, "the servo to start")
        argv = [sys.executable, str(HERE / "session_client.py"), str(loaded.path), robot.broker.url, "main/wrist",
                "move",
                '{"angle_deg": 350.0}', "wait"]
        proc = await asyncio.to_thread(subprocess.Popen, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
            assert line.startswith("ready "), line
            assert sim.goal(1) == ct.deg_to_raw(350.0)
            await until(lambda: sim.moving(1), 2, "the servo to move")
            holds_before = len(sim.writes(1, 116))
            proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await until(lambda: not sim.moving(1), 5, "the session's expiry to stop the servo")
            assert time.monotonic() - killed < WINDOW + 2.0
            here = sim.position(1)
            assert sim.goal(1) == here < ct.deg_to_raw(350.0) - 200  # held well before the target
            assert len(sim.writes(1, 116)) == holds_before + 1  # one Goal Position write: the hold
            assert sim.torque(1)
        finally:
            if proc.poll() is None:
                proc.kill()
            await asyncio.to_thread(proc.wait, 10)
