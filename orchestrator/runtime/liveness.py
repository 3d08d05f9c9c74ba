"""Who is online: births, wills and heartbeats, reconciled with birth counters.

A part's retained state and its Will carry the same birth counter.  A message whose birth is older
than the live birth (a late Will of an old connection, a stale heartbeat) is ignored, so it can
never mark a newer connection offline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from orchestrator.protocol.codec import Envelope
from orchestrator.protocol.messages import PartPulse, PartState, PartStateName, PartStatus


@dataclass
class _Entry:
    status: PartStatus
    heartbeat_s: float
    misses: int
    jitter_s: float = 0.0  # smoothed |interval - heartbeat_s| of the heartbeats heard (RFC 3550 style, 1/16)
    last_sent: float | None = None  # the sender's uptime in its last heartbeat


Listener = Callable[[str, PartStatus, PartStatus | None], None]


class Liveness:
    """Tracks the parts named at construction; calls ``listener(part, new, old)`` on every change."""

    def __init__(self, parts: Iterable[tuple[str, float, int]], listener: Listener | None = None) -> None:
        self._e: dict[str, _Entry] = {
            name: _Entry(PartStatus(state=PartStateName.OFFLINE, online=False), hb, misses)
            for name, hb, misses in parts
        }
        self._listener = listener
        self.ignored_stale = 0

    def __contains__(self, part: str) -> bool:
        return part in self._e

    def status(self, part: str) -> PartStatus:
        return self._e[part].status

    def pulse(self, now: float | None = None) -> dict[str, PartPulse]:
        """Every part's heartbeat age and jitter (the primary publishes it on ``robot/liveness``)."""
        now = time.time() if now is None else now
        return {k: PartPulse(online=e.status.online,
                             age_s=None if e.status.last_heartbeat is None else
                             round(max(0.0, now - e.status.last_heartbeat), 4),
                             jitter_s=round(e.jitter_s, 4), heartbeat_s=e.heartbeat_s)
                for k, e in self._e.items()}

    def pulse_dict(self, now: float | None = None) -> dict[str, dict[str, object]]:
        """:meth:`pulse` as plain dicts of :class:`PartPulse`'s fields (what goes on the wire every second)."""
        now = time.time() if now is None else now
        out: dict[str, dict[str, object]] = {}
        for k, e in self._e.items():
            last = e.status.last_heartbeat
            out[k] = {"online": e.status.online, "age_s": None if last is None else round(max(0.0, now - last), 4),
                      "jitter_s": round(e.jitter_s, 4), "heartbeat_s": e.heartbeat_s}
        return out

    def snapshot(self) -> dict[str, PartStatus]:
        return {k: v.status.model_copy() for k, v in self._e.items()}

    def _set(self, part: str, new: PartStatus) -> None:
        e = self._e[part]
        old = e.status
        e.status = new
        if self._listener is not None and (
            old.state != new.state or old.online != new.online or old.birth != new.birth
        ):
            self._listener(part, new, old)

    def on_state(self, part: str, env: Envelope, state: PartState, now: float | None = None) -> bool:
        """Apply a state message (birth, transition or Will).  Returns False if it was stale."""
        if part not in self._e:
            return False
        now = time.time() if now is None else now
        cur = self._e[part].status
        if env.birth < cur.birth:
            self.ignored_stale += 1
            return False
        online = state.state != PartStateName.OFFLINE
        if env.birth == cur.birth and cur.state == PartStateName.OFFLINE and online and cur.birth:
            # the same connection cannot come back after its own Will
            self.ignored_stale += 1
            return False
        # the heartbeat period is the configuration's: a part's own claim (state.heartbeat_s) is not believed
        restarts = cur.restarts + (1 if env.birth != cur.birth and cur.birth and online else 0)
        new = PartStatus(
            state=state.state,
            online=online,
            birth=env.birth,
            since=now if (cur.state != state.state or cur.birth != env.birth) else cur.since,
            last_heartbeat=now if online else cur.last_heartbeat,
            parent=state.parent,
            pid=state.pid,
            reason=state.reason,
            restarts=restarts,
        )
        self._set(part, new)
        return True

    def on_heartbeat(self, part: str, birth: int, now: float | None = None, sent: float | None = None) -> None:
        """A heartbeat heard at ``now``; ``sent``: the sender's uptime in it.  With ``sent`` the jitter is
        that of the intervals as the part sent them (heartbeats read in batches arrive in bunches), else
        that of the arrivals."""
        if part not in self._e:
            return
        now = time.time() if now is None else now
        e = self._e[part]
        cur = e.status
        if birth < cur.birth:
            self.ignored_stale += 1
            return
        last_sent, e.last_sent = e.last_sent, sent
        if birth == cur.birth and cur.online:
            if sent is not None and last_sent is not None and sent > last_sent:
                e.jitter_s += (abs((sent - last_sent) - e.heartbeat_s) - e.jitter_s) / 16
            elif sent is None and cur.last_heartbeat is not None:
                e.jitter_s += (abs((now - cur.last_heartbeat) - e.heartbeat_s) - e.jitter_s) / 16
            cur.last_heartbeat = now
            return
        if birth > cur.birth or (not cur.online and cur.reason == "heartbeat timeout"):
            # heartbeats resumed (frozen part thawed) or birth seen first through a heartbeat
            state = cur.state if cur.state != PartStateName.OFFLINE else PartStateName.RUNNING
            self._set(
                part,
                cur.model_copy(
                    update={"online": True, "state": state, "birth": birth, "last_heartbeat": now,
                            "since": now, "reason": None}
                ),
            )

    def resync(self, now: float) -> None:
        """After our own outage: whoever was online gets a fresh interval to be heard from again (we heard
        nobody while we were cut off, which says nothing about them)."""
        for e in self._e.values():
            if e.status.online:
                e.status.last_heartbeat = now

    def check_timeouts(self, now: float | None = None) -> list[str]:
        """Mark parts silent for ``heartbeat_s * misses`` offline; returns those newly marked."""
        now = time.time() if now is None else now
        out = []
        for name, e in self._e.items():
            st = e.status
            if not st.online or st.last_heartbeat is None:
                continue
            if st.state in (PartStateName.STOPPED,):
                continue
            if now - st.last_heartbeat > e.heartbeat_s * e.misses:
                self._set(
                    name,
                    st.model_copy(update={"online": False, "since": now, "reason": "heartbeat timeout"}),
                )
                out.append(name)
        return out
