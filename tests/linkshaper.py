"""A userspace Ethernet link with delay, for the net lab: what ``tc netem delay`` would do, on a kernel without netem.

    python tests/linkshaper.py IFACE_A IFACE_B

Run inside a namespace of its own that holds two interfaces and nothing else (``NetLab`` builds it for a
host made with ``shaped=True``): every frame that arrives on one interface is sent out of the other after
``delay`` seconds, in order.  Unlike the TCP fault proxy, nothing is terminated: the host's TCP
connections run end to end through it, so the delay sits in their own round trip, on the same hop as
the loss nftables puts on the host's interface.

Frames are read and written with ``AF_PACKET`` sockets with ``PACKET_VNET_HDR``: each frame carries the
kernel's offload header (checksum to complete, segmentation), which the sending side hands back to the
kernel, so veth offloads need no switching off (there is no ethtool here).

Control, one line each on standard input, answered ``ok`` (or ``error ...``) on standard output:
``delay SECONDS`` (0 to 5, each way), ``stats`` (answers ``stats FORWARDED_A FORWARDED_B HELD``).  It exits
when its standard input closes.  Memory is bounded: at most ``MAX_HELD`` frames are held per direction;
beyond that, new frames are dropped (counted), as a router's queue would.
"""

from __future__ import annotations

import collections
import socket
import sys
import threading
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
BUFFER = 256 * 1024  # a GSO frame (64 KiB) plus headers, with room
MAX_HELD = 20_000
MAX_DELAY_S = 5.0


class Direction:
    def __init__(self, src: socket.socket, dst: socket.socket, shaper: Shaper) -> None:
        self.src, self.dst, self.shaper = src, dst, shaper
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.cond = threading.Condition()
        self.forwarded = 0
        self.dropped = 0
        self.last_due = 0.0

    def read(self) -> None:
        while True:
            try:
                data, addr = self.src.recvfrom(BUFFER)
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING:  # our own sends on this interface, seen again
                continue
            with self.cond:
                if len(self.queue) >= MAX_HELD:
                    self.dropped += 1
                    continue
                # in order, whatever the delay did meanwhile: a frame never overtakes the one before it
                due = max(time.monotonic() + self.shaper.delay_s, self.last_due)
                self.last_due = due
                self.queue.append((due, data))
                self.cond.notify()

    def write(self) -> None:
        while True:
            with self.cond:
                while not self.queue:
                    self.cond.wait()
                due, data = self.queue[0]
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self.cond:
                self.queue.popleft()
            try:
                self.dst.send(data)
                self.forwarded += 1
            except OSError:  # the interface is down, or the frame was refused: a lost frame
                self.dropped += 1


class Shaper:
    def __init__(self, a: str, b: str) -> None:
        self.delay_s = 0.0
        sa, sb = self._open(a), self._open(b)
        self.dirs = (Direction(sa, sb, self), Direction(sb, sa, self))

    @staticmethod
    def _open(iface: str) -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        s.bind((iface, ETH_P_ALL))
        return s

    def start(self) -> None:
        for d in self.dirs:
            for fn, what in ((d.read, "read"), (d.write, "write")):
                threading.Thread(target=fn, name=f"shaper-{what}", daemon=True).start()

    def command(self, line: str) -> str:
        words = line.split()
        if words[:1] == ["delay"] and len(words) == 2:
            try:
                value = float(words[1])
            except ValueError:
                return f"error: not a number: {words[1]!r}"
            if not 0.0 <= value <= MAX_DELAY_S:
                return f"error: delay {value} not within [0, {MAX_DELAY_S}]"
            self.delay_s = value
            return "ok"
        if words == ["stats"]:
            held = sum(len(d.queue) for d in self.dirs)
            dropped = sum(d.dropped for d in self.dirs)
            return f"stats {self.dirs[0].forwarded} {self.dirs[1].forwarded} {held} {dropped}"
        return f"error: unknown command {line.strip()!r}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: linkshaper.py IFACE_A IFACE_B", file=sys.stderr)
        return 2
    shaper = Shaper(argv[0], argv[1])
    shaper.start()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip():
            print(shaper.command(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
