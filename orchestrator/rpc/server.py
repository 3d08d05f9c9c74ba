"""Serving calls to the resources of one part.

One subscription per part (``+/+/call/<part>/+``).  Each call runs in a task of its own, bounded
by the caller's deadline: a plugin that raises or hangs costs that call an error reply, never the
part; other calls keep being served.  Errors cross the wire with their stable code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from orchestrator.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    OrchestratorError,
    ProtocolError,
    Unavailable,
    UnknownMethod,
    UnknownResource,
)
from orchestrator.protocol.codec import decode_body, encode, encode_checked, validation_summary
from orchestrator.protocol.messages import CallReply, CallRequest
from orchestrator.protocol.refusals import Refusals
from orchestrator.protocol.topics import Topics, valid_level
from orchestrator.resources.base import Resource
from orchestrator.rpc.methods import MethodSpec, api_methods
from orchestrator.rpc.stats import CallStats
from orchestrator.sessions.context import CallContext, current
from orchestrator.tasks import cancel_and_wait
from orchestrator.transport.client import Message, MqttClient

log = logging.getLogger("orchestrator.rpc")

DEFAULT_TIMEOUT_S = 30.0
MAX_CALL_S = 3600.0  # a deadline further ahead is refused (long moves return at once and run on)
MAX_INFLIGHT = 1000  # calls served at once by one part; past that a call is answered "unavailable"
FAILURE_LOG_S = 60.0  # a plugin's traceback is logged once per resource, method and exception type in this

# before_call(context, direct, resource name, resource, spec): raise an OrchestratorError to refuse.
# ``direct`` is False for a part calling on behalf of the session it was itself called in.
BeforeCall = Callable[[CallContext, bool, str, Resource, MethodSpec], Awaitable[None]]


# the hot path's plain checks: (type, longest string) per field, the bounds of messages.CallRequest
_FIELDS: dict[str, tuple[type, int]] = {"id": (str, 200), "method": (str, 64)}
_OPTIONAL: dict[str, tuple[type | tuple[type, ...], int]] = {"deadline": ((int, float), 0), "session": (str, 200),
                                                             "on_behalf": (str, 200)}


def _fits(value: Any, kind: type | tuple[type, ...], longest: int) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool) and (not longest or len(str(value)) <= longest)


def _call_request(body: dict[str, Any]) -> CallRequest:
    """A CallRequest from a decoded body: plain type and length checks on the hot path, pydantic on anything
    else (which gives the precise error)."""
    args = body.get("args", {})
    if (
        all(_fits(body.get(k), *spec) for k, spec in _FIELDS.items())
        and isinstance(args, dict)
        and all(body.get(k) is None or _fits(body.get(k), *spec) for k, spec in _OPTIONAL.items())
    ):
        return CallRequest.model_construct(
            id=body["id"], method=body["method"], args=args, deadline=body.get("deadline"),
            session=body.get("session"), on_behalf=body.get("on_behalf"),
        )
    try:
        return CallRequest.model_validate(body)
    except ValidationError as exc:
        raise ProtocolError(f"bad CallRequest: {validation_summary(exc)}") from None


def to_wire(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="python")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


class RpcServer:
    def __init__(
        self,
        client: MqttClient,
        topics: Topics,
        part: str,
        sender: str,
        lookup: Callable[[str], Resource | None],
        describe_missing: Callable[[str], str | None] | None = None,
        refusals: Refusals | None = None,
        stats: CallStats | None = None,
    ) -> None:
        self.client = client
        self.stats = stats
        self.topics = topics
        self.part = part
        self.sender = sender
        self.lookup = lookup
        self.describe_missing = describe_missing
        self.before_call: list[BeforeCall] = []
        self.inflight: set[asyncio.Task[None]] = set()
        self.served = 0
        self.malformed = 0
        self.refusals = refusals or Refusals(f"part {part}")
        self._failures_logged: dict[tuple[str, str, str], float] = {}
        self._failures_suppressed: dict[tuple[str, str, str], int] = {}

    async def start(self) -> None:
        await self.client.subscribe(self.topics.calls_to(self.part), self._on_call)

    def _refuse(self, reason: str, topic: str, detail: str = "") -> None:
        self.malformed += 1
        self.refusals.refuse(f"call:{reason}", topic, detail)

    def _on_call(self, msg: Message) -> None:
        where = self.topics.call_parts(msg.topic)
        if where is None:
            self._refuse("bad_topic", msg.topic)
            return
        caller, _part, resource = where
        if msg.retain:
            # a call the broker kept (its caller set the retain flag) and hands every new subscription: served
            # again at each restart of this part, long after its caller stopped waiting.  Never a call.
            self._refuse("retained", msg.topic)
            return
        if not valid_level(resource) or not valid_level(caller.partition("/")[2]):
            self._refuse("bad_topic", msg.topic)  # names of 1-64 characters: nothing longer is echoed or tracked
            return
        try:
            src, body = decode_body(msg.payload)
        except ProtocolError as exc:  # no id we could reply to: count it and go on
            self._refuse(str(exc.details.get("reason", "malformed")), msg.topic, exc.message)
            return
        try:
            req = _call_request(body)
        except ProtocolError as exc:
            self._refuse("bad_request", msg.topic, exc.message)
            rid = body.get("id")
            if isinstance(rid, str) and len(rid) <= 200 and src == caller:
                self._reply(caller, CallReply(id=rid, ok=False, error=exc.to_wire()))
            return
        if src != caller:
            # the topic names the caller the broker let publish there; a different claim is a forgery
            self._refuse("forged_sender", msg.topic)
            self._reply(caller, CallReply(id=req.id, ok=False, error=ProtocolError(
                f"sender {src[:80]!r} does not match the call topic's identity {caller!r}").to_wire()))
            return
        if len(self.inflight) >= MAX_INFLIGHT:
            self._refuse("overloaded", msg.topic)
            self._reply(caller, CallReply(id=req.id, ok=False, error=Unavailable(
                f"part {self.part} is serving {MAX_INFLIGHT} calls: try again", part=self.part).to_wire()))
            return
        task = asyncio.create_task(self._serve(caller, resource, req),
                                   name=f"part[{self.part}].call[{resource}.{req.method}#{req.id}]")
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def _serve(self, caller: str, resource: str, req: CallRequest) -> None:
        t0 = time.monotonic()
        try:
            result = await self.invoke(caller, resource, req)
            reply = CallReply(id=req.id, ok=True, result=to_wire(result))
        except OrchestratorError as exc:
            reply = CallReply(id=req.id, ok=False, error=exc.to_wire())
        except Exception as exc:
            self._log_failure(resource, req.method, exc)
            err = InternalError(f"{resource}.{req.method} raised {type(exc).__name__}: {str(exc)[:300]}",
                                part=self.part, resource=resource)
            reply = CallReply(id=req.id, ok=False, error=err.to_wire())
        self.served += 1
        self._reply(caller, reply)
        if self.stats is not None:
            code = str(reply.error.get("code", "error")) if isinstance(reply.error, dict) else None
            self.stats.record(resource, req.method, time.monotonic() - t0, None if reply.ok else code)

    def _log_failure(self, resource: str, method: str, exc: Exception) -> None:
        """A plugin raised: its traceback, bounded (a caller chooses what the exception says, and how often),
        at most once per resource, method and exception type every FAILURE_LOG_S; the others are counted."""
        key = (resource, method, type(exc).__name__)
        now = time.monotonic()
        if now - self._failures_logged.get(key, -FAILURE_LOG_S) < FAILURE_LOG_S:
            self._failures_suppressed[key] = self._failures_suppressed.get(key, 0) + 1
            return
        self._failures_logged[key] = now
        if len(self._failures_logged) > 1000:
            self._failures_logged.pop(next(iter(self._failures_logged)))
        more = self._failures_suppressed.pop(key, 0)
        lines = [line[:300] for chunk in traceback.format_exception(exc) for line in chunk.rstrip().splitlines()]
        if len(lines) > 40:
            lines = [*lines[:20], f"... ({len(lines) - 40} lines)", *lines[-20:]]
        log.error("part %s: %s.%s raised%s\n%s", self.part, resource, method,
                  f" ({more} more times in the last {FAILURE_LOG_S:g} s)" if more else "", "\n".join(lines))

    def _reply(self, caller: str, reply: CallReply) -> None:
        body = {"id": reply.id, "ok": reply.ok, "result": reply.result, "error": reply.error}
        try:
            payload = encode_checked(self.sender, body)
        except Exception as exc:  # an unencodable result (a type msgpack cannot carry, NaN, too large)
            payload = encode(self.sender, CallReply(id=reply.id, ok=False, error=InternalError(
                f"result cannot be sent: {type(exc).__name__}: {str(exc)[:200]}").to_wire()))
        self.client.publish_nowait(self.topics.reply(self.part, caller), payload, qos=1)

    async def invoke(self, caller: str, resource: str, req: CallRequest) -> Any:
        res = self.lookup(resource)
        if res is None:
            why = self.describe_missing(resource) if self.describe_missing else None
            raise UnknownResource(f"part {self.part} has no resource {resource!r}" + (f" ({why})" if why else ""),
                                  part=self.part, resource=resource)
        spec = api_methods(type(res)).get(req.method)
        if spec is None:
            raise UnknownMethod(f"{resource} ({type(res).__name__}) has no method {req.method!r}",
                                part=self.part, resource=resource, method=req.method)
        try:
            args = spec.params.model_validate(req.args)
        except ValidationError as exc:
            raise InvalidArgument(f"{resource}.{req.method}: {validation_summary(exc)}", part=self.part,
                                  resource=resource, method=req.method) from None
        timeout = DEFAULT_TIMEOUT_S if req.deadline is None else req.deadline - time.time()
        if timeout <= 0:
            raise DeadlineExceeded(f"{resource}.{req.method}: deadline passed before the call started")
        if timeout > MAX_CALL_S:
            raise InvalidArgument(f"{resource}.{req.method}: deadline {timeout:.0f} s ahead; at most {MAX_CALL_S:g} s",
                                  part=self.part, resource=resource, method=req.method)
        # only a part may call on behalf of someone else (indirect control); a client's claim is ignored,
        # so its session is then checked against its own identity
        direct = req.on_behalf is None or not caller.startswith("part/")
        ctx = CallContext(caller if direct else str(req.on_behalf), req.session)
        token = current.set(ctx)
        try:
            for hook in self.before_call:
                await hook(ctx, direct, resource, res, spec)
            kwargs = {k: getattr(args, k) for k in type(args).model_fields}
            try:
                async with asyncio.timeout(timeout):
                    return await getattr(res, req.method)(**kwargs)
            except TimeoutError:
                raise DeadlineExceeded(f"{resource}.{req.method} did not finish within {timeout:.3f} s",
                                       part=self.part, resource=resource, method=req.method) from None
        finally:
            current.reset(token)

    async def close(self) -> None:
        await cancel_and_wait(list(self.inflight))
