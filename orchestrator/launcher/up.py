"""``orchestrator up``: the embedded broker, every part as a child process, live status, shutdown.

1. Starts the embedded broker (unless the config names external brokers).
2. Starts the parts in start order, one depth level at a time (a level starts once its parents run).
3. Shows state changes as they happen; restarts a part that exits on its own per its restart
   policy, with a rate limit.
4. On Ctrl-C or SIGTERM asks the primary to shut the robot down (SIGTERM to the primary, which runs
   the bottom-up conversation on the wire), kills any part recorded as forced as soon as its parent
   gives up on it, waits for the primary (bounded), kills leftovers, prints the timeline, closes the
   broker last and returns 0.
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
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.config.loader import LoadedConfig
from orchestrator.config.models import LAUNCHER_CLIENT
from orchestrator.errors import ProtocolError
from orchestrator.launcher.processes import PartProcess
from orchestrator.protocol.codec import decode, encode
from orchestrator.protocol.messages import (
    Notice,
    PartState,
    PartStateName,
    ReloadRequest,
    StopReport,
    Timeline,
    TimelineEntry,
)
from orchestrator.protocol.topics import ClientId, Topics
from orchestrator.security.access import Access, store_for
from orchestrator.security.acl import AclChecker, rights
from orchestrator.transport.client import Message, MqttClient

log = logging.getLogger("orchestrator.up")


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
        self.topics = Topics(self.config.robot)
        self.console = console or Console(stderr=False)
        self.timeline_json = timeline_json
        self.start_timeout_s = start_timeout_s
        self.procs: dict[str, PartProcess] = {}
        self.states: dict[str, tuple[int, PartStateName]] = {}
        self._state_events: dict[str, asyncio.Event] = {}
        self.timeline: Timeline | None = None
        self._timeline_event = asyncio.Event()
        self._shutdown = asyncio.Event()
        self._shutting_down = False
        self._t0 = time.time()
        self._broker: Any = None
        self.monitor: MqttClient | None = None
        self._watchers: list[asyncio.Task[Any]] = []
        self.urls: list[tuple[str, int]] = []
        self.credentials = credentials
        # `up` talks to the broker as the reserved client identity "up" (it reads reports, asks for reloads)
        self.me = ClientId(self.config.robot, LAUNCHER_CLIENT)
        self.access = Access.of(self.config, loaded.path, self.me, credentials)

    # -- output -----------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        now = time.time()  # read once: seconds and milliseconds from the same instant
        ts = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        self.console.print(f"[dim]{ts}[/dim] {text}", highlight=False)

    # -- main -------------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_shutdown, signal.Signals(sig).name)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            await self._start_broker()
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
            for p in self.procs.values():
                p.kill()
            for p in self.procs.values():
                await p.wait(2.0)
            if self.monitor is not None:
                await self.monitor.close()
            if self._broker is not None:
                await self._broker.close()

    def request_shutdown(self, why: str = "") -> None:
        if not self._shutdown.is_set():
            self.say(f"[bold yellow]{why or 'shutdown'}: stopping the robot bottom-up[/]")
            self._shutdown.set()

    def request_reload(self) -> None:
        """SIGHUP: validate the file again; if valid, ask the primary to reload (it tells every part)."""
        task = asyncio.ensure_future(self._reload())
        self._watchers.append(task)

    async def _reload(self) -> None:
        from orchestrator.config.loader import load_config
        from orchestrator.errors import ConfigError

        try:
            load_config(self.loaded.path)
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
        return f"mqtt://{h}:{p}"

    async def _start_broker(self) -> None:
        emb = self.config.broker.embedded
        if emb is None:
            self.urls = self.config.broker.client_urls()
            return
        from orchestrator.broker import EmbeddedBroker

        if self.config.security.insecure:
            self.say("[bold red]INSECURE[/]: the embedded broker admits anonymous clients with every right "
                     "(security.insecure: true)")
            self._broker = EmbeddedBroker(emb.host, emb.port)
        else:
            store = store_for(self.config, self.loaded.path, self.credentials)
            acl = AclChecker(rights(self.config, self.topology))
            self._broker = EmbeddedBroker(emb.host, emb.port, passwords=store.password_file(), acl=acl)
        await self._broker.start()
        host = "127.0.0.1" if emb.host in ("0.0.0.0", "::") else emb.host
        self.urls = [(host, self._broker.port)]
        self.say(f"embedded broker listening on {self._broker.url}")

    async def _start_monitor(self) -> None:
        cfg = self.config.broker
        self.monitor = MqttClient(f"{self.config.robot}.launcher.{os.getpid()}", self.urls,
                                  keepalive=cfg.keepalive_s, username=self.access.username,
                                  password=self.access.password)
        t = self.topics
        await self.monitor.subscribe(t.all_part_states(), self._on_state)
        await self.monitor.subscribe(t.all_part_reports(), self._on_report)
        await self.monitor.subscribe(t.robot_timeline(), self._on_timeline)
        await self.monitor.subscribe(t.robot_notice(), self._on_notice)
        await self.monitor.start()

    def _argv(self, name: str) -> list[str]:
        argv = [sys.executable, "-m", "orchestrator.runtime", str(self.loaded.path), "--name", name,
                "--broker", ",".join(f"mqtt://{h}:{p}" for h, p in self.urls)]
        if self.credentials is not None:
            argv += ["--credentials", str(self.credentials)]
        return argv

    async def _start_parts(self) -> None:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        levels: dict[int, list[str]] = {}
        for name in self.topology.start_order():
            levels.setdefault(self.topology.depth(name), []).append(name)
        for depth in sorted(levels):
            names = levels[depth]
            for name in names:
                pp = PartProcess(self.config.part(name), self._argv(name), env)
                self.procs[name] = pp
                await pp.spawn()
                self._watchers.append(asyncio.create_task(self._watch(pp), name=f"up.watch[{name}]"))
            waits = [self._wait_running(n) for n in names]
            done = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), None)
            if self._shutdown.is_set():
                return
            slow = [n for n, ok in zip(names, done, strict=True) if ok is not True]
            if slow:
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
            assert pp.proc is not None
            code = await pp.proc.wait()
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
    def _on_state(self, msg: Message) -> None:
        part = self.topics.part_of(msg.topic)
        if part is None or (part not in self.procs and part not in self.topology.parts):
            return
        try:
            env = decode(msg.payload)
            st = env.parse(PartState)
        except ProtocolError:
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

    def _on_report(self, msg: Message) -> None:
        """Kill a part as soon as its parent records it as forced (it may still drive something)."""
        if not self._shutting_down:
            return
        try:
            rep = decode(msg.payload).parse(StopReport)
        except ProtocolError:
            return
        self._kill_forced(rep.children)

    def _kill_forced(self, entries: list[TimelineEntry]) -> None:
        for e in entries:
            pp = self.procs.get(e.part)
            if e.forced and pp is not None and pp.alive:
                self.say(f"[red]part {e.part} forced by its parent: killing pid {pp.pid}[/]")
                pp.kill()

    def _on_notice(self, msg: Message) -> None:
        """The primary began a shutdown it was asked for over MQTT: do not restart what exits."""
        try:
            notice = decode(msg.payload).parse(Notice)
        except ProtocolError:
            return
        if notice.kind == "going_down" and not self._shutting_down:
            self._shutting_down = True
            self.request_shutdown(f"robot going down ({notice.reason})")

    def _on_timeline(self, msg: Message) -> None:
        try:
            tl = decode(msg.payload).parse(Timeline)
        except ProtocolError:
            return
        if tl.started_at >= self._t0:
            self.timeline = tl
            self._timeline_event.set()

    # -- shutdown ---------------------------------------------------------------------------------
    async def _stop_robot(self) -> None:
        self._shutting_down = True
        started = time.time()
        bound = min(self.config.shutdown_timeout_s, self.topology.shutdown_bound() + 2.0)
        primary = self.procs.get(self.topology.primary)
        if primary is not None and primary.alive:
            primary.stopping = True
            primary.signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timeline_event.wait(), bound)
            if self.timeline is not None:
                self._kill_forced(self.timeline.entries)
            await primary.wait(max(0.5, bound - (time.time() - started)))
        else:
            await self._fallback_stop(bound)
        # parts that reported exit by themselves right after; give them a moment, then kill
        grace = time.monotonic() + 1.0
        for pp in self.procs.values():
            await pp.wait(max(0.01, grace - time.monotonic()))
        for pp in self.procs.values():
            if pp.alive:
                self.say(f"[red]part {pp.name} still running after the shutdown: killing pid {pp.pid}[/]")
                pp.kill()
                await pp.wait(2.0)
        self._print_timeline(started)

    async def _fallback_stop(self, bound: float) -> None:
        """No live primary: SIGTERM the parts deepest level first, each level bounded."""
        self.say("[yellow]primary is not running: stopping the parts level by level[/]")
        by_depth: dict[int, list[PartProcess]] = {}
        for name, pp in self.procs.items():
            by_depth.setdefault(self.topology.depth(name), []).append(pp)
        for depth in sorted(by_depth, reverse=True):
            for pp in by_depth[depth]:
                pp.stopping = True
                pp.signal(signal.SIGTERM)
            for pp in by_depth[depth]:
                await pp.wait(self.config.part(pp.name).stop_deadline_s)

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
            t0 = tl.started_at

            def ms(t: float | None) -> str:
                return "-" if t is None else f"{(t - t0) * 1000:.1f}"

            table = Table(title=f"shutdown of {self.config.robot} ({tl.reason}) — ms since the request")
            for col in ("part", "parent", "asked", "began", "stopped", "reported", "forced", "stopped resources"):
                table.add_column(col)
            for e in sorted(tl.entries, key=lambda e: (e.began_at or e.asked_at or 0.0)):
                table.add_row(e.part, e.parent or "-", ms(e.asked_at), ms(e.began_at), ms(e.stopped_at),
                              ms(e.reported_at), "[red]FORCED[/]" + (" killed" if e.killed else "") if e.forced
                              else "no", ", ".join(e.resources_stopped) or "-")
            self.console.print(table)
            self.say(f"clients closed at {ms(tl.clients_closed_at).strip()} ms; "
                     f"shutdown took {(time.time() - started) * 1000:.0f} ms")
            data = {"timeline": tl.model_dump(mode="json"),
                    "killed": [n for n, p in self.procs.items() if p.killed]}
        if self.timeline_json is not None:
            self.timeline_json.write_text(json.dumps(data, indent=2))


async def run_up(loaded: LoadedConfig, *, timeline_json: Path | None = None, console: Console | None = None,
                 credentials: str | Path | None = None) -> int:
    return await Launcher(loaded, timeline_json=timeline_json, console=console, credentials=credentials).run()
