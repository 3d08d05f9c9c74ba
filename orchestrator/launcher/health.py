"""``orchestrator health``: is one part running and connected, as seen from its broker.

A container health check (docs/deploy.md) asks this every few seconds, so the answer must be quick,
bounded, read-only and honest:

1. connect to the part's broker as the part's own identity (its password is in the container; another
   client id, so the part itself is never disturbed) or as a client identity of the robot;
2. read the part's retained state: it must be ``running`` and authentic (published by that part);
3. the part must be connected *now*: a retained ``running`` outlives a connection the broker has not
   dropped yet, so wait for one of its live heartbeats, of the same birth (connection) as the state.
   Only parts and the launcher may read heartbeats; a client identity gets step 2 alone.

Nothing is published.  The result is one short line (docker keeps it in ``docker inspect``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from orchestrator.config.loader import LoadedConfig
from orchestrator.config.models import LAUNCHER_CLIENT
from orchestrator.errors import OrchestratorError, ProtocolError
from orchestrator.protocol.codec import decode
from orchestrator.protocol.messages import PartState, PartStateName
from orchestrator.protocol.topics import Topics
from orchestrator.security.access import Access
from orchestrator.transport.client import MqttClient, private_client_id

__all__ = ["Health", "check_health"]

# Seconds past the heartbeat window the answer may wait for one (a busy machine delays a beat).
HEARTBEAT_SLACK_S = 0.5
# What the answer keeps of its timeout for closing the connection and printing.
MARGIN_S = 0.1


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str

    def line(self) -> str:
        return f"{'healthy' if self.ok else 'unhealthy'}: {self.reason}"[:300]


async def check_health(loaded: LoadedConfig, part: str, urls: list[tuple[str, int]], access: Access,
                       timeout: float = 3.0) -> Health:
    """The health of ``part``, decided within ``timeout`` seconds (never raises an OrchestratorError)."""
    deadline = time.monotonic() + timeout - MARGIN_S  # the checks below end by then, the guard after it
    try:
        return await asyncio.wait_for(_check(loaded, part, urls, access, deadline), timeout)
    except TimeoutError:
        return Health(False, f"part {part}: no answer within {timeout:g} s")
    except OrchestratorError as exc:
        return Health(False, f"part {part}: {exc}")


async def _check(loaded: LoadedConfig, part: str, urls: list[tuple[str, int]], access: Access,
                 deadline: float) -> Health:
    cfg = loaded.config
    t = Topics(cfg.robot, loaded.topology.primary)
    pc = cfg.part(part)
    beats = access.identity.kind == "part" or access.identity.name == LAUNCHER_CLIENT
    filters = [t.part_state(part)] + ([t.part_heartbeat(part)] if beats else [])
    state: tuple[int, PartState] | None = None
    started = time.monotonic()
    window = pc.heartbeat_s * pc.heartbeat_misses + HEARTBEAT_SLACK_S
    remaining = deadline - time.monotonic()
    client_id = private_client_id(f"{cfg.robot}.health.{part}")  # never the part's own: it would be thrown off
    async with MqttClient(client_id, urls, keepalive=max(2, cfg.broker.keepalive_s),
                          connect_timeout=round(max(0.05, remaining), 2), username=access.username,
                          password=access.password, tls=access.tls) as client, \
            client.messages(*filters, qos=0) as stream:
        # the retained state comes right after the SUBACK; a beat within the window after that
        state_by = min(time.monotonic() + 1.0, deadline)
        beat_by: float | None = None
        while True:
            now = time.monotonic()
            until = beat_by if state is not None and beat_by is not None else state_by
            if now >= until:
                break
            try:
                msg = await stream.get(timeout=until - now)
            except TimeoutError:
                break
            try:
                env = decode(msg.payload)
                if not t.authentic(msg.topic, env.src):
                    raise ProtocolError(f"published by {env.src[:60]!r}, not by the part")
                if msg.topic == t.part_state(part):
                    st = env.parse(PartState)
                    if state is None or env.birth >= state[0]:
                        state = (env.birth, st)
                    if st.state != PartStateName.RUNNING:
                        why = f" ({st.reason})" if st.reason else ""
                        return Health(False, f"part {part} is {st.state.value}{why}")
                    if not beats:
                        return Health(True, f"part {part} is running (retained state; heartbeats not readable "
                                            f"as {access.identity.username})")
                    beat_by = min(time.monotonic() + window, deadline)
                elif state is not None and env.birth == state[0]:
                    return Health(True, f"part {part} is running and connected (pid {state[1].pid}, "
                                        f"host {state[1].host})")
            except ProtocolError as exc:  # a planted or malformed state says unhealthy; a bad beat is ignored
                if msg.topic == t.part_state(part):
                    return Health(False, f"part {part}: unreadable state: {exc.message[:120]}")
    if state is None:
        return Health(False, f"part {part}: no state on the broker (not started yet?)")
    return Health(False, f"part {part}: retained state running, but no heartbeat of that connection within "
                         f"{min(window, deadline - started):.2g} s (disconnected or frozen)")
