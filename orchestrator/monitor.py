"""``orchestrator monitor``: the robot live in a terminal (textual).

The parts tree with state, liveness, heartbeat age, uptime and restarts; every resource with its status
and the session that owns it; the sessions; the upstream link; telemetry; and a scrolling log of what
happened (offline/online, session ends, restarts, reloads, refusals, part logs).  ``/`` filters every
table and the log by a word, ``s`` stops the resource under the cursor, ``q`` quits.  Everything comes
from :class:`orchestrator.observe.RobotView`: the robot's topics, no plugin, no config file needed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Input, RichLog, Static

from orchestrator.observe import Event, RobotView
from orchestrator.transport.client import private_client_id

if TYPE_CHECKING:
    from orchestrator.cli_watch import WatchTarget

__all__ = ["MonitorApp"]

REFRESH_S = 0.5
STATE_STYLE = {"running": "green", "starting": "yellow", "stopping": "yellow", "stopped": "dim",
               "offline": "bold red", "unknown": "red", "degraded": "bold yellow", "resyncing": "yellow"}
LEVEL_STYLE = {"warning": "yellow", "error": "bold red", "critical": "bold red", "debug": "dim"}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


class MonitorApp(App[None]):
    TITLE = "orchestrator monitor"
    CSS = """
    #top { height: 1fr; }
    #left { width: 3fr; }
    #right { width: 2fr; }
    DataTable { height: 1fr; }
    #events { height: 12; border-top: solid $accent; }
    #filter { display: none; }
    #filter.shown { display: block; }
    #header { height: 1; background: $boost; }
    """
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("q", "quit", "quit"),
        Binding("slash", "filter", "filter"),
        Binding("s", "stop", "stop resource"),
        Binding("escape", "clear_filter", "clear filter", show=False),
    ]

    def __init__(self, target: WatchTarget, timeout: float | None = None) -> None:
        super().__init__()
        self.target = target
        self.timeout = timeout
        self.view: RobotView | None = None
        self.word = ""
        self._pending: list[Event] = []  # events not drawn yet
        self._rows: list[tuple[str, str]] = []  # (part, resource) per row of the resources table
        self._started = time.monotonic()

    def compose(self) -> ComposeResult:
        yield Static("connecting...", id="header")
        yield Input(placeholder="filter: a part, resource, state or word (Enter; Esc clears)", id="filter")
        with Horizontal(id="top"):
            with Vertical(id="left"):
                yield DataTable(id="parts", cursor_type="row", zebra_stripes=True)
                yield DataTable(id="resources", cursor_type="row", zebra_stripes=True)
            with Vertical(id="right"):
                yield DataTable(id="sessions", cursor_type="row")
                yield DataTable(id="telemetry", cursor_type="row")
        yield RichLog(id="events", max_lines=1000, wrap=False, markup=False)
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#parts", DataTable).add_columns("part", "state", "live", "heartbeat", "jitter", "uptime",
                                                        "restarts", "birth", "pid", "reason")
        self.query_one("#resources", DataTable).add_columns("part/resource", "model", "status", "owned by")
        self.query_one("#sessions", DataTable).add_columns("session", "owner", "part", "owns")
        self.query_one("#telemetry", DataTable).add_columns("reading", "value", "age")
        t = self.target
        self.view = RobotView(t.robot, t.urls, username=t.username, password=t.password, tls=t.tls,
                              client_id=private_client_id(f"{t.robot}.monitor.{t.identity}"),
                              connect_timeout=3.0)
        self.view.listeners.append(lambda ev: self._pending.append(ev))
        try:
            await self.view.start()
        except Exception as exc:  # no broker, refused credentials: say so and quit
            self.exit(message=f"monitor: cannot reach the robot {t.robot}: {exc}")
            return
        self.set_interval(REFRESH_S, self.refresh_view)
        self.refresh_view()

    async def on_unmount(self) -> None:
        if self.view is not None:
            await self.view.close()

    # -- actions ----------------------------------------------------------------------------------
    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("shown")
        self.word = ""
        self.refresh_view()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.word = event.value.strip().lstrip("/").strip().lower()
        if not self.word:
            event.input.remove_class("shown")
        self.query_one("#resources", DataTable).focus()
        log = self.query_one("#events", RichLog)
        log.clear()
        if self.view is not None:  # the recent events again, through the new filter
            self._pending = list(self.view.events)[-200:]
        self.refresh_view()

    async def action_stop(self) -> None:
        table = self.query_one("#resources", DataTable)
        if not self._rows or table.cursor_row is None or not 0 <= table.cursor_row < len(self._rows):
            self.note("select a resource first (arrow keys in the resources table)", "warning")
            return
        part, resource = self._rows[table.cursor_row]
        self.note(f"stopping {part}/{resource}...", "info")
        self.run_worker(self._stop(part, resource), exclusive=False)

    async def _stop(self, part: str, resource: str) -> None:
        from orchestrator.client import RobotClient

        t = self.target
        try:
            async with RobotClient(t.robot, t.urls, name=t.identity, username=t.username, password=t.password,
                                   tls=t.tls, sessions=False, connect_timeout=3.0, timeout=5.0) as client:
                await client.call(f"{part}/{resource}", "stop", {})
            self.note(f"{part}/{resource} stopped", "info")
        except Exception as exc:
            self.note(f"stop {part}/{resource}: {type(exc).__name__}: {exc}", "error")

    def note(self, text: str, level: str) -> None:
        self.query_one("#events", RichLog).write(Text(f"{time.strftime('%H:%M:%S')} monitor: {text}",
                                                      style=LEVEL_STYLE.get(level, "")))

    # -- drawing ----------------------------------------------------------------------------------
    def _keep(self, *fields: Any) -> bool:
        return not self.word or any(self.word in str(f).lower() for f in fields)

    def refresh_view(self) -> None:
        view = self.view
        if view is None:
            return
        if self.timeout is not None and time.monotonic() - self._started > self.timeout:
            self.exit()
            return
        snap = view.to_json()
        up = snap["upstream"]
        up_text = up.get("state") if isinstance(up, dict) else up
        state = snap["state"]
        header = Text.assemble(("robot ", "bold"), (view.robot, "bold"), ": ",
                               (state, STATE_STYLE.get(state.split()[0], "")),
                               f"   primary {snap['primary'] or '-'}   upstream {up_text or 'none'}   "
                               f"parts {sum(1 for p in snap['parts'].values() if p['online'])}/{len(snap['parts'])} "
                               f"online   filter: {self.word or '-'}")
        self.query_one("#header", Static).update(header)
        self._draw_parts(view, snap)
        self._draw_resources(snap)
        self._draw_sessions(snap)
        self._draw_telemetry(view)
        self._draw_events(view)

    def _draw_parts(self, view: RobotView, snap: dict[str, Any]) -> None:
        table = self.query_one("#parts", DataTable)
        table.clear()
        for name, p in snap["parts"].items():
            live = "yes" if p["online"] else "NO"
            if not self._keep(name, p["state"], p["reason"], live):
                continue
            shown = p["state"] if p["online"] or p["state"] in ("stopped", "offline") else f"{p['state']} (silent)"
            style = STATE_STYLE.get(p["state"], "") if p["online"] else "bold red"
            jitter = p["heartbeat_jitter_s"]
            table.add_row(Text("  " * view.depth(name) + name), Text(shown, style=style),
                          Text(live, style="green" if p["online"] else "bold red"), _age(p["heartbeat_age_s"]),
                          "-" if jitter is None else f"{jitter * 1000:.0f}ms", _age(p["uptime_s"]),
                          str(p["restarts"]), str(p["birth"] or "-"),
                          str(p["pid"] or "-"), Text(str(p["reason"] or "")[:80]))

    def _draw_resources(self, snap: dict[str, Any]) -> None:
        table = self.query_one("#resources", DataTable)
        row = table.cursor_row
        table.clear()
        self._rows = []
        for name, p in snap["parts"].items():
            for r in p["resources"]:
                rname = str(r.get("name", "?"))
                status = str(r.get("status", "?"))
                owner = r.get("owner") or "-"
                if not self._keep(name, rname, r.get("model"), status, owner):
                    continue
                self._rows.append((name, rname))
                table.add_row(f"{name}/{rname}", str(r.get("model", "")),
                              Text(status, style="green" if status == "ready" else "red"), str(owner))
        if self._rows and row is not None:
            table.move_cursor(row=min(row, len(self._rows) - 1))

    def _draw_sessions(self, snap: dict[str, Any]) -> None:
        table = self.query_one("#sessions", DataTable)
        table.clear()
        for name, p in snap["parts"].items():
            for s in p["sessions"]:
                sid = str(s.get("session", ""))[:12]
                if not self._keep(sid, s.get("owner"), name, *s.get("resources", [])):
                    continue
                table.add_row(sid, str(s.get("owner", "")), name, ", ".join(s.get("resources", [])) or "-")

    def _draw_telemetry(self, view: RobotView) -> None:
        table = self.query_one("#telemetry", DataTable)
        table.clear()
        now = time.time()
        for name in view.ordered_parts():
            pv = view.parts.get(name)
            if pv is None:
                continue
            for key, samples in list(pv.samples.items())[:200]:
                if not samples or not self._keep(name, key):
                    continue
                at, value = samples[-1]
                table.add_row(f"{name}/{key}", f"{value:.4g}", _age(max(0.0, now - at)))

    def _draw_events(self, view: RobotView) -> None:
        log = self.query_one("#events", RichLog)
        pending, self._pending = self._pending, []
        for ev in pending:
            if self._keep(ev.part, ev.kind, ev.text):
                log.write(_event_line(ev))


def _event_line(ev: Event) -> Text:
    stamp = time.strftime("%H:%M:%S", time.localtime(ev.at))
    return Text(f"{stamp} [{ev.part}] {ev.kind}: {ev.text}", style=LEVEL_STYLE.get(ev.level, ""))
