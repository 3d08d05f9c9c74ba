"""Making calls: one reply subscription per caller, correlation ids, deadlines in the envelope.

Used by :class:`~orchestrator.client.RobotClient` and by parts that depend on a resource of
another part.  One broker round trip each way: caller -> broker -> part -> broker -> caller.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from orchestrator.errors import DeadlineExceeded, PartOffline, ProtocolError, from_wire
from orchestrator.protocol.codec import decode, decode_body, encode
from orchestrator.protocol.messages import CallReply, PartState, PartStateName
from orchestrator.protocol.topics import Topics
from orchestrator.sessions.context import current
from orchestrator.transport.client import Message, MqttClient

log = logging.getLogger("orchestrator.rpc")


_DEFAULT: Any = object()  # "the caller's session": the context's, else this client's own


class RpcClient:
    def __init__(self, client: MqttClient, topics: Topics, sender: str, *, default_timeout: float = 10.0) -> None:
        self.client = client
        self.topics = topics
        self.sender = sender
        self.default_timeout = default_timeout
        self._pending: dict[str, tuple[str, asyncio.Future[Any]]] = {}
        self._ids = itertools.count()
        self._prefix = f"{os.getpid():x}.{id(self) & 0xFFFF:x}."
        self.part_states: dict[str, tuple[int, PartStateName]] = {}
        self.session: str | None = None
        # called once, on the first call made in this client's own session (a part heartbeats its
        # own session only once it drives something on another part)
        self.session_activate: Callable[[], Awaitable[None]] | None = None

    async def start(self) -> None:
        await self.client.subscribe(self.topics.replies_to(self.sender), self._on_reply)
        await self.client.subscribe(self.topics.all_part_states(), self._on_state)

    def offline(self, part: str) -> bool:
        st = self.part_states.get(part)
        return st is not None and st[1] in (PartStateName.OFFLINE, PartStateName.STOPPED)

    async def call(self, part: str, resource: str, method: str, args: dict[str, Any] | None = None, *,
                   timeout: float | None = None, session: Any = _DEFAULT) -> Any:
        if self.offline(part):
            raise PartOffline(f"part {part} is {self.part_states[part][1].value}", part=part)
        timeout = self.default_timeout if timeout is None else timeout
        rid = self._prefix + str(next(self._ids))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (part, fut)
        on_behalf = None
        ctx = current.get()
        if session is not _DEFAULT:
            pass  # explicit: a given session, or None for a call outside any session
        elif ctx is not None and ctx.caller != self.sender:
            # called from inside a call we serve: the resources we drive belong to the caller's session
            session, on_behalf = ctx.session, ctx.caller
        else:
            session = self.session
            if session is not None and self.session_activate is not None:
                activate, self.session_activate = self.session_activate, None
                await activate()
        # the CallRequest body, built directly: this is the hot path (see messages.CallRequest)
        req = {"id": rid, "method": method, "args": args or {}, "deadline": time.time() + timeout,
               "session": session if isinstance(session, str) else None, "on_behalf": on_behalf}
        try:
            if not self.client.publish_nowait(self.topics.call(self.sender, part, resource),
                                              encode(self.sender, req), qos=1):
                raise PartOffline(f"not connected to the broker: cannot call {part}/{resource}", part=part)
            try:
                # a small grace over the deadline so the part's own DeadlineExceeded usually wins
                async with asyncio.timeout(timeout + 0.25):
                    return await fut
            except TimeoutError:
                raise DeadlineExceeded(f"{part}/{resource}.{method}: no reply within {timeout:g} s",
                                       part=part, resource=resource, method=method) from None
        finally:
            self._pending.pop(rid, None)

    def _on_reply(self, msg: Message) -> None:
        try:
            _src, body = decode_body(msg.payload)
            rid, ok = body.get("id"), body.get("ok")
            if not isinstance(rid, str) or not isinstance(ok, bool):
                rep = CallReply.model_validate(body)  # raises the precise error
                rid, ok = rep.id, rep.ok
        except (ProtocolError, ValidationError) as exc:
            log.warning("%s: malformed reply dropped: %s", self.sender, exc)
            return
        got = self._pending.get(rid)
        if got is None or got[1].done():
            return
        if ok:
            got[1].set_result(body.get("result"))
        else:
            err = body.get("error")
            got[1].set_exception(from_wire(err if isinstance(err, dict) else {}))

    def _on_state(self, msg: Message) -> None:
        part = self.topics.part_of(msg.topic)
        if part is None:
            return
        try:
            env = decode(msg.payload)
            st = env.parse(PartState)
        except ProtocolError:
            return
        prev = self.part_states.get(part)
        if prev is not None and env.birth < prev[0]:
            return
        self.part_states[part] = (env.birth, st.state)
        if st.state in (PartStateName.OFFLINE, PartStateName.STOPPED):
            for rid, (p, fut) in list(self._pending.items()):
                if p == part and not fut.done():
                    fut.set_exception(PartOffline(f"part {part} went {st.state.value} during the call", part=part))
                    self._pending.pop(rid, None)
