"""Making calls: one reply subscription per caller, correlation ids, deadlines in the envelope.

Used by :class:`~orchestrator.client.RobotClient` and by parts that depend on a resource of
another part.  One broker round trip each way: caller -> broker -> part -> broker -> caller.

Calls fail fast instead of waiting out their deadline when the robot already knows the answer:

- the caller is not connected to the broker: :class:`~orchestrator.errors.ConnectionLost` at once,
  and every call in flight fails the same way when the connection drops;
- the part is offline (its Will, or the primary's robot status after missed heartbeats) or stopped:
  :class:`~orchestrator.errors.PartOffline` at once, and calls in flight to it fail as soon as the
  robot learns it (within the primary's detection bound);
- no part of that name exists in the robot status: :class:`~orchestrator.errors.UnknownResource`.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from pydantic import ValidationError

from orchestrator.errors import (
    ConnectionLost,
    DeadlineExceeded,
    InvalidArgument,
    PartOffline,
    ProtocolError,
    SessionExpired,
    UnknownResource,
    from_wire,
)
from orchestrator.protocol.codec import Envelope, check_value, decode_body, encode
from orchestrator.protocol.messages import CallReply, PartState, PartStateName, RobotStatus
from orchestrator.protocol.refusals import Refusals
from orchestrator.protocol.topics import Topics, valid_level
from orchestrator.protocol.trust import authentic_envelope
from orchestrator.sessions.context import current
from orchestrator.transport.client import Message, MqttClient

log = logging.getLogger("orchestrator.rpc")


_DEFAULT: Any = object()  # "the caller's session": the context's, else this client's own
MAX_TIMEOUT_S = 3600.0
GONE = (PartStateName.OFFLINE, PartStateName.STOPPED)


class RpcClient:
    def __init__(self, client: MqttClient, topics: Topics, sender: str, *, default_timeout: float = 10.0,
                 refusals: Refusals | None = None) -> None:
        self.client = client
        self.topics = topics
        self.sender = sender
        self.default_timeout = default_timeout
        self.refusals = refusals or Refusals(sender)
        self._pending: dict[str, tuple[str, asyncio.Future[Any]]] = {}
        self._ids = itertools.count()
        self._prefix = f"{os.getpid():x}.{id(self) & 0xFFFF:x}."
        self.part_states: dict[str, tuple[int, PartStateName]] = {}
        self.status: RobotStatus | None = None  # the primary's view, unless its Will says it is offline
        self.status_seen = asyncio.Event()  # set once a robot status was read (a retained one comes at once)
        self.session: str | None = None
        self.session_ended: str | None = None  # the robot ended self.session: why (calls in it fail at once)
        # called once, on the first call made in this client's own session (a part heartbeats its
        # own session only once it drives something on another part)
        self.session_activate: Callable[[], Awaitable[None]] | None = None
        # called with self.session when a part refuses a call made in it (SessionExpired): a part renews
        # its own session then (the refused call still fails: what it drove there was stopped)
        self.on_session_refused: Callable[[str], None] | None = None
        self.on_state_change: list[Callable[[str, PartStateName], None]] = []
        self._followed: set[str] | None = None  # the parts whose states are read (None: all), see start
        self._follows: set[asyncio.Task[None]] = set()

    async def start(self, *, follow_status: bool = True, follow_parts: Iterable[str] | None = None) -> None:
        """``follow_status``: also read the primary's robot status (which parts missed their heartbeats,
        which names exist) for calls that fail fast; a part that calls no other part skips it (a status
        of N parts, published on every change, read by N parts, is N^2 work on a busy robot).

        ``follow_parts``: the parts whose states to read (calls to them fail fast when they go); None: every
        part's.  A part follows the parts it depends on and the primary, not all of them: every state change
        of N parts read by N parts is N^2 deliveries at each start-up and shutdown of the robot.  A call to a
        part not followed yet starts following it (its retained state fails the call if it is gone)."""
        await self.client.subscribe(self.topics.replies_to(self.sender), self._on_reply)
        if follow_parts is None:
            self._followed = None
            await self.client.subscribe(self.topics.all_part_states(), self._on_state)
        else:
            self._followed = set(follow_parts)
            for part in sorted(self._followed):
                await self.client.subscribe(self.topics.part_state(part), self._on_state)
        if follow_status:
            await self.client.subscribe(self.topics.robot_status(), self._on_status)
        self.client.on_disconnect(self._on_disconnect)

    # -- what the robot knows ---------------------------------------------------------------------
    def offline(self, part: str) -> bool:
        return self.unavailable(part) is not None

    def unavailable(self, part: str) -> PartOffline | UnknownResource | None:
        """Why a call to ``part`` would fail at once, or None if it may be made."""
        st = self.part_states.get(part)
        if st is not None and st[1] in GONE:
            return PartOffline(f"part {part} is {st[1].value}", part=part)
        status = self.status
        if status is not None and status.state != "offline":
            known = status.parts.get(part)
            if known is None and part != status.primary:
                names = sorted({status.primary, *status.parts})
                close = difflib.get_close_matches(part, names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                return UnknownResource(f"robot {status.robot} has no part {part[:64]!r} ({hint}parts: "
                                       f"{', '.join(names[:50])})", part=part)
            if known is not None and not known.online and (st is None or known.birth >= st[0]):
                why = known.reason or ("not started" if not known.birth else known.state.value)
                return PartOffline(f"part {part} is offline ({why})", part=part)
        elif status is not None and part == status.primary:
            return PartOffline(f"part {part} (the primary) is offline ({status.reason or 'its Will'})", part=part)
        return None

    # -- calls ------------------------------------------------------------------------------------
    async def call(self, part: str, resource: str, method: str, args: dict[str, Any] | None = None, *,
                   timeout: float | None = None, session: Any = _DEFAULT) -> Any:
        if not valid_level(part) or not valid_level(resource) or not valid_level(method):
            raise InvalidArgument(f"{str(part)[:64]!r}/{str(resource)[:64]!r}.{str(method)[:64]}: not a part, resource "
                                  "and method name (1-64 characters, none of '/', '+', '#')")
        if session is _DEFAULT and self.session is not None and self.session_ended is not None and \
                current.get() is None:
            raise SessionExpired(f"the robot ended this client's session: {self.session_ended}")
        if not self.client.is_connected:
            raise ConnectionLost(f"not connected to the broker: cannot call {part}/{resource}", part=part)
        gone = self.unavailable(part)
        if gone is not None:
            raise gone
        try:
            check_value(args or {}, "arguments")  # refused here, not silently dropped by the part
        except ProtocolError as exc:
            raise InvalidArgument(f"{part}/{resource}.{method}: {exc.message}", part=part, resource=resource,
                                  method=method) from None
        timeout = self.default_timeout if timeout is None else timeout
        if not 0 < timeout <= MAX_TIMEOUT_S:  # NaN included: no comparison holds
            raise InvalidArgument(f"{part}/{resource}.{method}: timeout must be within (0, {MAX_TIMEOUT_S:g}] s, "
                                  f"got {timeout!r}"[:300], part=part, resource=resource, method=method)
        if self._followed is not None and part not in self._followed:
            self._follow(part)
        rid = self._prefix + str(next(self._ids))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (part, fut)
        on_behalf = None
        own = False  # the call is made in self.session (not given, not on a caller's behalf)
        ctx = current.get()
        if session is not _DEFAULT:
            pass  # explicit: a given session, or None for a call outside any session
        elif ctx is not None and ctx.caller != self.sender:
            # called from inside a call we serve: the resources we drive belong to the caller's session
            session, on_behalf = ctx.session, ctx.caller
        else:
            session, own = self.session, self.session is not None
            if session is not None and self.session_activate is not None:
                activate, self.session_activate = self.session_activate, None
                await activate()
        # the CallRequest body, built directly: this is the hot path (see messages.CallRequest)
        req = {"id": rid, "method": method, "args": args or {}, "deadline": time.time() + timeout,
               "session": session if isinstance(session, str) else None, "on_behalf": on_behalf}
        try:
            if not self.client.publish_nowait(self.topics.call(self.sender, part, resource),
                                              encode(self.sender, req), qos=1):
                raise ConnectionLost(f"not connected to the broker: cannot call {part}/{resource}", part=part)
            try:
                # a small grace over the deadline so the part's own DeadlineExceeded usually wins
                async with asyncio.timeout(timeout + 0.25):
                    return await fut
            except SessionExpired:
                if own and session == self.session and self.on_session_refused is not None:
                    self.on_session_refused(session)
                raise
            except TimeoutError:
                raise DeadlineExceeded(f"{part}/{resource}.{method}: no reply within {timeout:g} s",
                                       part=part, resource=resource, method=method) from None
        finally:
            self._pending.pop(rid, None)

    def _follow(self, part: str) -> None:
        """Start reading ``part``'s state (not awaited: the call goes out at once)."""
        assert self._followed is not None
        self._followed.add(part)

        async def subscribe() -> None:
            with contextlib.suppress(Exception):  # the call itself reports a lost connection
                await self.client.subscribe(self.topics.part_state(part), self._on_state)

        task = asyncio.get_running_loop().create_task(subscribe(), name=f"rpc[{self.sender}].follow[{part}]")
        self._follows.add(task)
        task.add_done_callback(self._follows.discard)

    def _fail(self, part: str | None, exc: Exception) -> None:
        for rid, (p, fut) in list(self._pending.items()):
            if (part is None or p == part) and not fut.done():
                fut.set_exception(exc)
                self._pending.pop(rid, None)

    def _on_disconnect(self, reason: str) -> None:
        self._fail(None, ConnectionLost(f"connection to the broker lost during the call ({reason})"))

    # -- what comes back --------------------------------------------------------------------------
    def _on_reply(self, msg: Message) -> None:
        replier = self.topics.sender_of(msg.topic)
        try:
            src, body = decode_body(msg.payload)
            rid, ok = body.get("id"), body.get("ok")
            if not isinstance(rid, str) or not isinstance(ok, bool):
                rep = CallReply.model_validate(body)  # raises the precise error
                rid, ok = rep.id, rep.ok
        except (ProtocolError, ValidationError) as exc:
            reason = exc.details.get("reason", "malformed") if isinstance(exc, ProtocolError) else "bad_reply"
            self.refusals.refuse(f"reply:{reason}", msg.topic, message=msg)
            return
        if src != replier:
            self.refusals.refuse("reply:forged_sender", msg.topic, message=msg)
            return
        got = self._pending.get(rid)
        if got is None or got[1].done():
            return
        if replier != f"part/{got[0]}":
            # another part answering for the one called
            self.refusals.refuse("reply:wrong_part", msg.topic, message=msg)
            return
        if ok:
            got[1].set_result(body.get("result"))
        else:
            err = body.get("error")
            got[1].set_exception(from_wire(err if isinstance(err, dict) else {}))

    def _trusted(self, msg: Message) -> Envelope | None:
        """The envelope, if it decodes and its sender is the identity the topic is reserved to."""
        return authentic_envelope(self.topics, self.refusals, msg.topic, msg.payload, message=msg)

    def _on_state(self, msg: Message) -> None:
        part = self.topics.part_of(msg.topic)
        env = self._trusted(msg) if part is not None else None
        if part is None or env is None:
            return
        try:
            st = env.parse(PartState)
        except ProtocolError:
            self.refusals.refuse("bad_state", msg.topic, message=msg)
            return
        prev = self.part_states.get(part)
        if prev is not None and env.birth < prev[0]:
            return
        self.part_states[part] = (env.birth, st.state)
        if prev is None or prev[1] != st.state:
            for cb in list(self.on_state_change):
                cb(part, st.state)
        if st.state in GONE:
            self._fail(part, PartOffline(f"part {part} went {st.state.value} during the call", part=part))

    def _on_status(self, msg: Message) -> None:
        env = self._trusted(msg)
        if env is None:
            return
        try:
            status = env.parse(RobotStatus)
        except ProtocolError:
            self.refusals.refuse("bad_status", msg.topic, message=msg)
            return
        self.status = status
        self.status_seen.set()
        if status.state == "offline":
            self._fail(status.primary, PartOffline(f"part {status.primary} (the primary) went offline during "
                                                   "the call", part=status.primary))
            return
        for part, p in status.parts.items():
            st = self.part_states.get(part)
            if not p.online and (st is None or p.birth >= st[0]):
                self._fail(part, PartOffline(f"part {part} went offline during the call ({p.reason or p.state})",
                                             part=part))
