"""What the kernel knows about a connection that the MQTT layer cannot see: is the link lossy or dead?

A lossy link and a dead one look the same from above TCP for a while: both delay the echo of our own
heartbeats.  TCP hides a lost segment as delay (it retransmits after its RTO, at least 200 ms, doubled
on each repeated loss) and head-of-line blocking holds everything behind the hole: a segment lost twice
in a row stalls a connection for 0.6 s plus the round trip, three times for 1.4 s.  At 10 % loss that
is one segment in a hundred, a few times a minute for a part beating five times a second.

The kernel tells the two apart (Linux ``TCP_INFO``):

- *we* are recovering a loss and the peer's host acknowledges what passes: unacknowledged data with a
  retransmission under way or segments the peer selectively acknowledged past the hole (``unacked`` with
  ``retransmits``, ``retrans``, ``lost`` or ``sacked``), and a segment from the peer recently
  (``last_ack_recv``: the time since the kernel last processed one);
- the *peer* is recovering a loss towards us: its data segments keep arriving (``data_segs_in`` grows:
  it counts segments out of order too) while nothing can be read behind the hole.

A blackholed or cut link shows neither (nothing at all comes back), nor does a frozen broker whose kernel
still acknowledges our bytes (everything acknowledged, no data from it).  So this may only ever *extend*
a deadline, bounded, never replace it.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

# struct tcp_info (linux/tcp.h): u8 state, ca_state, retransmits, probes, backoff, options, wscale, flags;
# then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked, lost, retrans, fackets, last_data_sent,
# last_ack_sent, last_data_recv, last_ack_recv, ... (offset 56), then later (offset 152) data_segs_in.
_HEAD = struct.Struct("=8B13I")
_DATA_SEGS_IN = struct.Struct("=I")
_DATA_SEGS_IN_OFFSET = 152  # Linux 4.6 and later
_TCP_INFO_LEN = 232
_TCP_INFO = getattr(socket, "TCP_INFO", None)


@dataclass(frozen=True, slots=True)
class TcpInfo:
    retransmits: int  # RTO retransmissions in a row without progress
    unacked: int  # segments sent and not acknowledged yet
    sacked: int  # of those, selectively acknowledged by the peer (it received past a hole)
    lost: int
    retrans: int  # retransmitted segments in flight
    peer_silent_s: float  # since the kernel last processed a segment from the peer
    data_segs_in: int | None  # data segments received, in order or not (None: an older kernel)

    def recovering_a_loss(self) -> bool:
        """We have data in flight that TCP is retransmitting or that the peer acknowledged around."""
        return self.unacked > 0 and (self.retransmits > 0 or self.retrans > 0 or self.lost > 0 or self.sacked > 0)


def raw_socket(sock: Any) -> socket.socket | None:
    """The TCP socket under what paho hands out (a plain socket, an SSL socket or paho's WebSocket
    wrapper, which keeps the real one in ``_socket``)."""
    if isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
        return sock
    inner = getattr(sock, "_socket", None)
    return inner if isinstance(inner, socket.socket) else None


def tcp_info(sock: Any) -> TcpInfo | None:
    """The kernel's view of a connection, or None where it cannot say (not Linux, not TCP, closed)."""
    raw = raw_socket(sock)
    if raw is None or _TCP_INFO is None:
        return None
    try:
        info = raw.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(info) < _HEAD.size:
        return None
    f = _HEAD.unpack_from(info)
    segs_in = (_DATA_SEGS_IN.unpack_from(info, _DATA_SEGS_IN_OFFSET)[0]
               if len(info) >= _DATA_SEGS_IN_OFFSET + 4 else None)
    return TcpInfo(retransmits=f[2], unacked=f[12], sacked=f[13], lost=f[14], retrans=f[15],
                   peer_silent_s=f[20] / 1000.0, data_segs_in=segs_in)
