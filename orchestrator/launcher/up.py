"""``orchestrator up``: the embedded broker, every part as a child process, live status, shutdown.

1. Starts the embedded broker (unless the config names external brokers), enforcing the robot's
   identities and topic rights.
2. Starts each part as soon as its parent runs (siblings together, not level by level).
3. Shows state changes as they happen; restarts a part that exits on its own per its restart
   policy, with a rate limit.
4. On Ctrl-C or SIGTERM asks the primary to shut the robot down (SIGTERM to the primary, which runs
   the bottom-up conversation on the wire), kills a part recorded as forced as soon as its parent
   gives up on it, and waits for the primary's timeline of *this* shutdown.  If the primary does not
   finish (it hangs, goes silent, or dies), `up` stops every part still running itself, bottom-up:
   SIGTERM to the deepest parts first (each stops its actuators and exits), SIGKILL only after that
   part's own deadline, and says so in the timeline.  Then it closes the broker last and returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.config.loader import LoadedConfig
from orchestrator.config.models import LAUNCHER_CLIENT
from orchestrator.config.topology import MESSAGE_MARGIN_S
from orchestrator.launcher.processes import PartProcess
from orchestrator.protocol.codec import Envelope, decode, encode
from orchestrator.protocol.messages import (
    AdminDisconnect,
    Notice,
    PartState,
    PartStateName,
    ReloadRequest,
    StopReport,
    Timeline,
    TimelineEntry,
)
from orchestrator.protocol.refusals import Refusals
from orchestrator.protocol.topics import ClientId, PartId, Topics
from orchestrator.security.access import Access, store_for
from orchestrator.security.acl import AclChecker, rights
from orchestrator.transport.client import Message, MqttClient, private_client_id

log = logging.getLogger("orchestrator.up")

KILL_GRACE_S = 1.0  # after a part's own deadline, before SIGKILL


class Launcher:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        console: Console | None = None,
        timeline_json: Path | None = None,
        start_timeout_s: float = 30.0,
        credentials: str | Path | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.topology = loaded.topology
        self.topics = Topics(self.config.robot, self.topology.primary)
        self.console = console or Console(stderr=False)
        self.timeline_json = timeline_json
        self.start_timeout_s = start_timeout_s
        self.procs: dict[str, PartProcess] = {}
        self.states: dict[str, tuple[int, PartStateName]] = {}
        self._state_events: dict[str, asyncio.Event] = {}
        self.timeline: Timeline | None = None
        self._timeline_event = asyncio.Event()
        self._shutdown = asyncio.Event()
        self._stop_signal = signal.SIGTERM  # what the primary is sent; SIGINT if `up` got SIGINT (Ctrl-C)
        self._shutting_down = False
        self.shutdown_id = ""  # of the shutdown under way, from the primary's going_down notice
        self._t0 = time.time()
        self._broker: Any = None
        self.web: Any = None  # the control panel's HTTP server (orchestrator.web), with `web:` in the config
        self.bridge: Any = None
        self.monitor: MqttClient | None = None
        self._watchers: list[asyncio.Task[Any]] = []
        self.urls: list[tuple[str, int]] = []
        self.credentials = credentials
        self.refusals = Refusals("up")
        self._primary_heard = time.monotonic()
        self._forcing: dict[str, asyncio.Task[None]] = {}  # parts recorded as forced, being stopped
        # this shutdown's lines, from the reports parts sent their parents: a primary that hangs in the
        # middle of a shutdown publishes no timeline, and the parts it stopped before must still be in `up`'s
        self._reported: dict[str, TimelineEntry] = {}
        # `up` talks to the broker as the reserved client identity "up" (it reads reports, asks for reloads)
        self.me = ClientId(self.config.robot, LAUNCHER_CLIENT)
        self.access = Access.of(self.config, loaded.path, self.me, credentials)
        # a robot with TLS serves its panel over HTTPS with the broker's certificate: missing, `up` exits 2 now
        # (CredentialsMissing), before a broker is started, and never serves the page over plain HTTP instead
        self._panel_certificate: tuple[Path, Path] | None = None
        if self.config.web is not None and self.config.web.enabled:
            from orchestrator.web.server import panel_certificate

            self._panel_certificate = panel_certificate(self.config, loaded.path, credentials)
        if not self.config.security.insecure:
            # every part would refuse to start without these: say so now, before a broker is started
            # (on main the primary then failed its restarts and `up` ran on with no robot)
            store = store_for(self.config, loaded.path, credentials)
            store.session_key()
            for name in self.topology.start_order():
                store.password(PartId(self.config.robot, name))
        self.primary_sender = PartId(self.config.robot, self.topology.primary).sender

    # -- output -----------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        now = time.time()  # read once: seconds and milliseconds from the same instant
        ts = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        self.console.print(f"[dim]{ts}[/dim] {text}", highlight=False)

    # -- main -------------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            await self._start_broker()
            self._start_web()
            await self._start_bridge()
            await self._start_monitor()
            await self._start_parts()
            if not self._shutdown.is_set():
                self.say(f"[bold green]robot {self.config.robot} running[/] "
                         f"({len(self.procs)} parts, broker {self._broker_url()}); Ctrl-C to stop")
            await self._shutdown.wait()
            await self._stop_robot()
            return 0
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for t in self._watchers:
                t.cancel()
            if any(p.alive for p in self.procs.values()):
                # leaving early (an error): never kill a part that was not asked to stop first
                self._shutting_down = True
                await asyncio.shield(self._stop_bottom_up("`up` is exiting"))
            if self.web is not None:
                await asyncio.to_thread(self.web.close)
            if self.monitor is not None:
                await self.monitor.close()
            if self.bridge is not None:
                await self.bridge.close()
            if self._broker is not None:
                await self._broker.close()

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        """SIGINT or SIGTERM: the primary is sent the same signal, so the timeline names the real one."""
        if not self._shutdown.is_set():
            self._stop_signal = sig
        self.request_shutdown(sig.name)

    def request_shutdown(self, why: str = "") -> None:
        if not self._shutdown.is_set():
            self.say(f"[bold yellow]{why or 'shutdown'}: stopping the robot bottom-up[/]")
            self._shutdown.set()

    def request_reload(self) -> None:
        """SIGHUP: validate the file again; if valid, ask the primary to reload (it tells every part)."""
        task = asyncio.ensure_future(self._reload())
        self._watchers.append(task)

    async def _reload(self) -> None:
        from orchestrator.errors import ConfigError
        from orchestrator.security.signed import load_effective

        try:
            load_effective(self.loaded.path, self.credentials)
        except ConfigError as exc:
            self.say(f"[red]SIGHUP: configuration invalid, nothing reloaded:[/]\n{exc}")
            return
        if self.monitor is None:
            return
        self.say("SIGHUP: asking the robot to reload its configuration")
        await self.monitor.publish(self.topics.client_reload(self.me.name),
                                   encode(self.me.sender, ReloadRequest(reason="SIGHUP to up")), qos=1, timeout=5)

    def _broker_url(self) -> str:
        h, p = self.urls[0]
        return f"{'mqtts' if self.config.broker.tls is not None else 'mqtt'}://{h}:{p}"

    async def _start_broker(self) -> None:
        emb = self.config.broker.embedded
        if emb is None:
            self.urls = self.config.broker.client_urls()
            return
        from orchestrator.broker import EmbeddedBroker
        from orchestrator.security.tls import BROKER_CERT, BROKER_KEY

        store = store_for(self.config, self.loaded.path, self.credentials)
        listeners: dict[str, Any] = {"websocket_port": emb.websocket_port}
        if emb.tls_port is not None:
            listeners.update(tls_port=emb.tls_port, certfile=str(store.path(BROKER_CERT)),
                             keyfile=str(store.path(BROKER_KEY)))
            # a robot with TLS: the panel's WebSocket listener is wss:// with the same certificate (docs/web.md)
            listeners.update(websocket_tls=emb.websocket_port is not None)
        if self.config.security.insecure:
            self.say("[bold red]INSECURE[/]: the embedded broker admits anonymous clients with every right "
                     "(security.insecure: true)")
            self._broker = EmbeddedBroker(emb.host, emb.port, **listeners)
        else:
            acl = AclChecker(rights(self.config, self.topology))
            self._broker = EmbeddedBroker(emb.host, emb.port, passwords=store.password_file(), acl=acl, **listeners)
        self._broker.on_publish = self._broker_admin
        await self._broker.start()
        host = "127.0.0.1" if emb.host in ("0.0.0.0", "::") else emb.host
        port = self._broker.tls_port if self.config.broker.tls is not None else self._broker.port
        self.urls = [(host, port)]
        extra = [f"TLS on {self._broker.tls_port}"] if self._broker.tls_port else []
        ws = "WebSocket over TLS" if self._broker.websocket_tls else "WebSocket"
        extra += [f"{ws} on {self._broker.websocket_port}"] if self._broker.websocket_port else []
        self.say(f"embedded broker listening on {self._broker.url}" + (f" ({', '.join(extra)})" if extra else ""))

    def _start_web(self) -> None:
        """The control panel (docs/web.md): static files and the page's config.json, on a thread of its own."""
        web = self.config.web
        if web is None or not web.enabled:
            return
        from orchestrator.errors import PortInUse
        from orchestrator.web.server import panel_server

        ws_port = self._broker.websocket_port if self._broker is not None else None
        try:
            self.web = panel_server(self.config, websocket_port=ws_port, certificate=self._panel_certificate)
        except OSError as exc:
            raise PortInUse(f"web panel: cannot listen on {web.host}:{web.port} ({exc.strerror or exc}) - "
                            "choose another web.port", host=web.host, port=web.port) from exc
        self.web.start()
        host = "127.0.0.1" if web.host in ("0.0.0.0", "::") else web.host
        self.say(f"web control panel on {self.web.scheme}://{host}:{self.web.port}/"
                 + (f" (broker WebSocket {web.websocket_url})" if web.websocket_url else ""))

    async def _start_bridge(self) -> None:
        """The embedded broker's bridge to the upstream broker (with mosquitto, its own bridge does this)."""
        if self.config.upstream is None or self._broker is None:
            return
        from orchestrator.launcher.bridge import UpstreamBridge

        self.bridge = UpstreamBridge(self.config, self.loaded.path, self.urls, credentials=self.credentials)
        await self.bridge.start()
        self.say(f"bridge to the upstream broker {self.config.upstream.url} started (link {self.bridge.state})")

    def _broker_admin(self, username: str | None, topic: str, payload: bytes) -> None:
        """The embedded broker saw a publish: the primary asking it to close a client's connections."""
        if topic != self.topics.robot_admin("disconnect") or self._broker is None:
            return
        primary = PartId(self.config.robot, self.topology.primary).username
        if not self.config.security.insecure and username != primary:
            return  # the ACL already refuses it; only the primary's own credential may ask
        try:
            req = decode(payload).parse(AdminDisconnect)
        except Exception:
            self.refusals.refuse("admin:malformed", topic)
            return
        closed = self._broker.disconnect(req.username, req.client_ids, req.reason)
        if closed:
            self.say(f"closed {closed} connection(s) of {req.username}: {req.reason}")

    async def _start_monitor(self) -> None:
        cfg = self.config.broker
        self.monitor = MqttClient(private_client_id(f"{self.config.robot}.launcher"), self.urls,
                                  keepalive=cfg.keepalive_s, username=self.access.username,
                                  password=self.access.password, tls=self.access.tls)
        t = self.topics
        await self.monitor.subscribe(t.all_part_states(), self._on_state)
        await self.monitor.subscribe(t.all_part_reports(), self._on_report)
        await self.monitor.subscribe(t.robot_timeline(), self._on_timeline)
        await self.monitor.subscribe(t.robot_notice(), self._on_notice)
        await self.monitor.subscribe(t.part_heartbeat(self.topology.primary), self._on_primary_heartbeat, qos=0)
        await self.monitor.start()

    def _argv(self, name: str) -> list[str]:
        scheme = "mqtts" if self.config.broker.tls is not None else "mqtt"
        argv = [sys.executable, "-m", "orchestrator.runtime", str(self.loaded.path), "--name", name,
                "--broker", ",".join(f"{scheme}://{h}:{p}" for h, p in self.urls)]
        if self.credentials is not None:
            argv += ["--credentials", str(self.credentials)]
        return argv

    # -- start ------------------------------------------------------------------------------------
    async def _start_parts(self) -> None:
        """Each part starts as soon as its parent runs: a slow sibling delays only its own subtree."""
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        for name in self.topology.start_order():
            self.procs[name] = PartProcess(self.config.part(name), self._argv(name), env)

        async def start(name: str) -> None:
            parent = self.topology.parent(name)
            if parent is not None and not await self._wait_running(parent):
                return
            if self._shutdown.is_set():
                return
            pp = self.procs[name]
            await pp.spawn()
            self._watchers.append(asyncio.create_task(self._watch(pp), name=f"up.watch[{name}]"))

        await asyncio.gather(*(start(n) for n in self.topology.start_order()))
        if self._shutdown.is_set():
            return
        results = await asyncio.gather(*(self._wait_running(n) for n in self.topology.start_order()))
        slow = [n for n, ok in zip(self.topology.start_order(), results, strict=True) if not ok]
        if slow and not self._shutdown.is_set():
            self.say(f"[red]not running after {self.start_timeout_s:g} s: {', '.join(slow)}[/]")

    async def _wait_running(self, name: str) -> bool:
        ev = self._state_events.setdefault(name, asyncio.Event())
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            st = self.states.get(name)
            if st is not None and st[1] == PartStateName.RUNNING:
                return True
            if self._shutdown.is_set():
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ev.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), min(remaining, 0.5))

    async def _watch(self, pp: PartProcess) -> None:
        """Restart a part that exits on its own, per its policy and rate limit."""
        while True:
            code = await pp.exited()
            pp.exits.append(code)
            if self._shutting_down or pp.stopping:
                return
            ok, why = pp.may_restart(code)
            self.say(f"[red]part {pp.name} exited with code {code}[/]: {why}")
            if not ok:
                pp.gave_up = True
                return
            await asyncio.sleep(pp.config.restart.backoff_s)
            if self._shutting_down:
                return
            await pp.spawn()

    # -- wire observations --------------------------------------------------------------------------
    def _trusted(self, msg: Message) -> Envelope | None:
        """Believed only from the identity the topic is reserved to; never a retained message of an
        earlier run for a decision (the caller checks ``msg.retain`` where it matters)."""
        try:
            env = decode(msg.payload)
        except Exception:
            self.refusals.refuse("malformed", msg.topic)
            return None
        if not self.topics.authentic(msg.topic, env.src):
            self.refusals.refuse("forged_sender", msg.topic)
            return None
        return env

    def _on_state(self, msg: Message) -> None:
        part = self.topics.part_of(msg.topic)
        if part is None or part not in self.topology.parts:
            return
        env = self._trusted(msg)
        if env is None:
            return
        try:
            st = env.parse(PartState)
        except Exception:
            self.refusals.refuse("bad_state", msg.topic)
            return
        prev = self.states.get(part)
        if prev is not None and env.birth < prev[0]:
            return  # a late Will of an older connection
        self.states[part] = (env.birth, st.state)
        if prev is None or prev[1] != st.state:
            colour = {"running": "green", "offline": "red", "stopping": "yellow", "stopped": "cyan"}.get(
                st.state.value, "white")
            extra = f" ({st.reason})" if st.reason else ""
            self.say(f"part [bold]{part}[/]: [{colour}]{st.state.value}[/]{extra}")
        self._state_events.setdefault(part, asyncio.Event()).set()

    def _on_primary_heartbeat(self, msg: Message) -> None:
        if self._trusted(msg) is not None:
            self._primary_heard = time.monotonic()

    def _on_report(self, msg: Message) -> None:
        """Kill a part as soon as its parent records it as forced (it may still drive something)."""
        reporter = self.topics.part_of(msg.topic)
        if not self._shutting_down or msg.retain or reporter is None or reporter not in self.topology.parts:
            return
        env = self._trusted(msg)
        if env is None:
            return
        try:
            rep = env.parse(StopReport)
        except Exception:
            self.refusals.refuse("bad_report", msg.topic)
            return
        if self.shutdown_id and rep.shutdown_id != self.shutdown_id:
            self.refusals.refuse("report:other_shutdown", msg.topic)
            return
        below = set(self.topology.descendants(reporter))  # a part speaks only for its own subtree
        children = [e for e in rep.children if e.part in below]
        self._remember_report(reporter, rep, children)
        self._kill_forced(children)

    def _remember_report(self, reporter: str, rep: StopReport, children: list[TimelineEntry]) -> None:
        """Keep the reporter's own line and those of its subtree (the first line of each part wins)."""
        own = TimelineEntry(part=reporter, parent=self.topology.parent(reporter), asked_at=rep.asked_at,
                            began_at=rep.began_at, stopped_at=rep.stopped_at, reported_at=time.time(),
                            resources_stopped=rep.resources_stopped, errors=rep.errors)
        for e in (own, *children):
            self._reported.setdefault(e.part, e)

    def _kill_forced(self, entries: list[TimelineEntry]) -> None:
        """Stop each part recorded as forced, graceful first: SIGTERM (a part that can still run stops its
        actuators and exits), SIGKILL only after that part's own deadline."""
        for e in entries:
            pp = self.procs.get(e.part)
            if e.forced and pp is not None and pp.alive and e.part not in self._forcing:
                self.say(f"[red]part {e.part} forced by its parent: SIGTERM to pid {pp.pid}, SIGKILL after its "
                         "deadline[/]")
                task = asyncio.get_running_loop().create_task(self._stop_forced(pp), name=f"up.force[{e.part}]")
                self._forcing[e.part] = task

    async def _stop_forced(self, pp: PartProcess) -> None:
        pp.stopping = True
        pp.signal(signal.SIGTERM)
        own = self.config.part(pp.name).stop_deadline_s + MESSAGE_MARGIN_S + KILL_GRACE_S
        if await pp.wait(own) is None:
            self.say(f"[red]part {pp.name} (forced) did not exit within {own:g} s of SIGTERM: killing pid "
                     f"{pp.pid}[/]")
            pp.kill()
            await pp.wait(2.0)

    def _on_notice(self, msg: Message) -> None:
        """The primary began a shutdown (perhaps asked over MQTT): follow it, do not restart what exits."""
        if msg.retain:
            return
        env = self._trusted(msg)
        if env is None:
            return
        try:
            notice = env.parse(Notice)
        except Exception:
            self.refusals.refuse("bad_notice", msg.topic)
            return
        if notice.kind == "going_down":
            self.shutdown_id = notice.shutdown_id
            if not self._shutting_down:
                self._shutting_down = True
                self.request_shutdown(f"robot going down ({notice.reason})")

    def _on_timeline(self, msg: Message) -> None:
        if msg.retain:
            return  # the timeline of an earlier run, kept by the broker: never acted on
        if not self._shutting_down:
            # a timeline while nothing is shutting down answers nothing; kept, it would end the next real
            # shutdown at once (and have `up` kill every part it records as forced)
            self.refusals.refuse("timeline:not_shutting_down", msg.topic, message=msg)
            return
        env = self._trusted(msg)
        if env is None:
            return
        try:
            tl = env.parse(Timeline)
        except Exception:
            self.refusals.refuse("bad_timeline", msg.topic)
            return
        if (self.shutdown_id and tl.shutdown_id != self.shutdown_id) or tl.started_at < self._t0:
            self.refusals.refuse("timeline:other_shutdown", msg.topic)
            return
        self.timeline = tl
        self._timeline_event.set()

    # -- shutdown ---------------------------------------------------------------------------------
    async def _stop_robot(self) -> None:
        self._shutting_down = True
        started = time.time()
        # the primary waits for live parts up to the robot's bound; `up` gives up early only on a primary
        # that exits or goes silent
        bound = max(self.config.shutdown_timeout_s, self.topology.shutdown_bound() + 2.0)
        primary = self.procs.get(self.topology.primary)
        fallback: list[TimelineEntry] = []
        if primary is not None and primary.alive:
            primary.stopping = True
            primary.signal(self._stop_signal)
            why = await self._wait_for_primary(primary, bound)
            if self.timeline is not None:
                self._kill_forced(self.timeline.entries)
                await primary.wait(max(0.5, bound - (time.time() - started)))
                if self._forcing:
                    await asyncio.gather(*self._forcing.values(), return_exceptions=True)
            else:
                self.say(f"[bold red]the primary did not finish the shutdown ({why}): `up` stops the remaining "
                         "parts itself, bottom-up[/]")
                fallback = await self._stop_bottom_up(f"primary {why}")
        else:
            self.say("[yellow]primary is not running: `up` stops the parts itself, bottom-up[/]")
            fallback = await self._stop_bottom_up("primary not running")
        # parts that reported exit by themselves right after; a part that does not is stopped, not killed
        grace = time.monotonic() + 1.0
        for pp in self.procs.values():
            await pp.wait(max(0.01, grace - time.monotonic()))
        if any(pp.alive for pp in self.procs.values()):
            self.say("[red]parts still running after the shutdown: stopping them bottom-up[/]")
            fallback += await self._stop_bottom_up("still running after the shutdown")
        if fallback:
            self._merge_fallback(fallback, started)
        self._print_timeline(started)

    async def _wait_for_primary(self, primary: PartProcess, bound: float) -> str:
        """Wait for this shutdown's timeline; give up early when the primary exits or goes silent."""
        deadline = time.monotonic() + bound
        silent_after = self.config.part(self.topology.primary).heartbeat_s * \
            self.config.part(self.topology.primary).heartbeat_misses
        self._primary_heard = max(self._primary_heard, time.monotonic())
        primary.progressing()  # the first measure of its CPU time
        while not self._timeline_event.is_set():
            now = time.monotonic()
            if now >= deadline:
                return f"no timeline within {bound:g} s"
            if not primary.alive:
                # it may have published the timeline just before exiting: give the message a moment
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._timeline_event.wait(), 1.0)
                return "finished" if self._timeline_event.is_set() else "exited without a timeline"
            if now - self._primary_heard > silent_after + 0.5:
                if primary.progressing():
                    # its heartbeats do not reach us, but its process runs: a broker or a machine too busy to
                    # carry them, not a hung primary (which uses no CPU); the bound above still holds
                    self._primary_heard = now - silent_after
                else:
                    return f"silent for {now - self._primary_heard:.1f} s"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timeline_event.wait(), min(0.1, deadline - now))
        return "finished"

    async def _stop_bottom_up(self, why: str) -> list[TimelineEntry]:
        """Stop every part still running, deepest first: SIGTERM (the part stops its actuators, closes its
        resources and exits), SIGKILL only after that part's own deadline.  Parts of one depth at once."""
        by_depth: dict[int, list[PartProcess]] = {}
        for name, pp in self.procs.items():
            if pp.alive:
                by_depth.setdefault(self.topology.depth(name), []).append(pp)
        entries: list[TimelineEntry] = []

        async def stop(pp: PartProcess) -> None:
            pp.stopping = True
            asked = time.time()
            pp.signal(signal.SIGTERM)
            own = self.config.part(pp.name).stop_deadline_s + MESSAGE_MARGIN_S + KILL_GRACE_S
            code = await pp.wait(own)
            killed = False
            if code is None:
                self.say(f"[red]part {pp.name} did not stop within its deadline of {own:g} s: killing pid "
                         f"{pp.pid}[/]")
                pp.kill()
                await pp.wait(2.0)
                killed = True
            else:
                self.say(f"part [bold]{pp.name}[/] stopped by `up` (exit {code})")
            entries.append(TimelineEntry(
                part=pp.name, parent=self.topology.parent(pp.name), asked_at=asked, stopped_at=time.time(),
                forced=killed, killed=killed, by="up",
                errors=[f"stopped by `up`: {why}"] + ([f"killed after {own:g} s"] if killed else [])))

        for depth in sorted(by_depth, reverse=True):
            await asyncio.gather(*(stop(pp) for pp in by_depth[depth]))
        return entries

    def _merge_fallback(self, fallback: list[TimelineEntry], started: float) -> None:
        """The timeline of a shutdown `up` had to finish: what the primary published, if anything, with
        the parts `up` stopped itself (each once)."""
        tl = self.timeline or Timeline(shutdown_id=self.shutdown_id or uuid.uuid4().hex[:12],
                                       reason="stopped by `up` (the primary did not finish)", started_at=started,
                                       finished_at=time.time())
        mine = {e.part for e in fallback}
        kept = [e for e in tl.entries if e.part not in mine]
        listed = mine | {e.part for e in kept}
        # the parts that stopped (and reported) before the primary hung, which `up` no longer had to stop
        reported = [e for p, e in self._reported.items() if p not in listed]
        tl.entries = kept + reported + fallback
        tl.finished_at = time.time()
        self.timeline = tl

    def _print_timeline(self, started: float) -> None:
        tl = self.timeline
        if tl is None:
            self.say("[red]no shutdown timeline was published (primary not running or forced)[/]")
            data: dict[str, Any] = {"timeline": None, "killed": [n for n, p in self.procs.items() if p.killed]}
        else:
            for e in tl.entries:
                pp = self.procs.get(e.part)
                if pp is not None and pp.killed:
                    e.killed = True
            self.console.print(timeline_table(self.config.robot, tl))
            if tl.clients_closed_at is not None:
                self.say(f"clients closed at {(tl.clients_closed_at - tl.started_at) * 1000:.1f} ms")
            self.say(f"shutdown took {(time.time() - started) * 1000:.0f} ms")
            data = {"timeline": tl.model_dump(mode="json"),
                    "killed": [n for n, p in self.procs.items() if p.killed]}
        if self.timeline_json is not None:
            self.timeline_json.write_text(json.dumps(data, indent=2))


def timeline_table(robot: str, tl: Timeline) -> Table:
    """A shutdown timeline as a table (``up`` and ``shutdown --wait`` print it): ms since the request."""
    t0 = tl.started_at

    def ms(t: float | None) -> str:
        return "-" if t is None else f"{(t - t0) * 1000:.1f}"

    table = Table(title=f"shutdown of {robot} ({tl.reason}) — ms since the request")
    for col in ("part", "parent", "asked", "began", "stopped", "reported", "forced", "by", "stopped resources"):
        table.add_column(col)
    for e in sorted(tl.entries, key=lambda e: (e.began_at or e.asked_at or 0.0)):
        table.add_row(e.part, e.parent or "-", ms(e.asked_at), ms(e.began_at), ms(e.stopped_at),
                      ms(e.reported_at), "[red]FORCED[/]" + (" killed" if e.killed else "") if e.forced
                      else "no", e.by or "parent", ", ".join(e.resources_stopped) or "-")
    return table


async def run_up(loaded: LoadedConfig, *, timeline_json: Path | None = None, console: Console | None = None,
                 credentials: str | Path | None = None) -> int:
    return await Launcher(loaded, timeline_json=timeline_json, console=console, credentials=credentials).run()
