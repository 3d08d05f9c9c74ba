"""Session heartbeats from a thread of their own, so a busy or blocked event loop does not expire them."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading

from orchestrator.protocol.codec import encode
from orchestrator.protocol.messages import SessionHeartbeat
from orchestrator.sessions.tokens import heartbeat_tag, short
from orchestrator.transport.client import MqttClient

log = logging.getLogger("orchestrator.sessions")


class Heartbeater:
    """Publishes ``SessionHeartbeat`` every ``interval_s`` on the owner's heartbeat topic until stopped.

    It runs on a thread of its own over a connection of its own (``<client id>.hb<n>``, paho on its own
    network thread), so neither a busy event loop nor the data connection's traffic delays it.  Each
    session gets a client id of its own: two heartbeat connections under one id would take it over from
    each other, and neither session would be heard.
    """

    def __init__(self, mqtt: MqttClient, topic: str, sender: str, session: str, secret: str,
                 interval_s: float, client_id: str | None = None) -> None:
        self.mqtt = MqttClient(client_id or self.client_id_for(mqtt), mqtt.urls, keepalive=mqtt.keepalive,
                               username=mqtt.username, password=mqtt.password, tls=mqtt.tls,
                               connect_timeout=mqtt.connect_timeout,
                               threaded=True)
        self.topic = topic
        self.sender = sender
        self.session = session
        self.secret = secret
        self.interval_s = interval_s
        self.n = 0
        self.sent = 0
        self.started = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"session-heartbeat[{short(session)}]", daemon=True)

    _ids = itertools.count(1)

    @classmethod
    def client_id_for(cls, mqtt: MqttClient) -> str:
        """A new MQTT client id for a heartbeat connection that goes with a data connection (one per session)."""
        return f"{mqtt.client_id}.hb{next(cls._ids)}"

    def stop_soon(self) -> None:
        """Stop beating (from the event loop, without waiting for the thread): the robot ended the session."""
        self._stop.set()

    async def start(self, auto: bool = True, wait: bool = True) -> None:
        """Connect (``wait``: until connected, bounded by the connect timeout) and, if ``auto``, start
        beating; otherwise the owner calls :meth:`beat` itself (the manual API)."""
        self.started = True
        await self.mqtt.start(wait=wait)
        if auto:
            self._thread.start()

    def beat(self, close: bool = False) -> bool:
        """One heartbeat now (also callable from the event loop: the manual API)."""
        with self._lock:
            self.n += 1
            n = self.n
        body = SessionHeartbeat(session=self.session, n=n, tag=heartbeat_tag(self.secret, self.session, n),
                                close=close)
        ok = self.mqtt.publish_nowait(self.topic, encode(self.sender, body), qos=0 if not close else 1)
        if ok:
            self.sent += 1
        return ok

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # never let the thread die silently: log and go on beating
                log.exception("session heartbeat failed")

    def stop(self, close: bool = False) -> None:
        """Stop beating (thread-safe); ``close=True`` tells the parts the session is closed."""
        self._stop.set()
        if close:
            self.beat(close=True)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2 * self.interval_s + 1)

    async def aclose(self, close: bool = False) -> None:
        """Stop and close the heartbeat connection (a closing heartbeat is delivered first)."""
        if not self.started:
            return
        await asyncio.to_thread(self.stop, close)
        await self.mqtt.close()
