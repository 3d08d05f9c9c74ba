"""The primary's Prometheus endpoint (``monitoring.metrics`` in the config; docs/operating.md).

What it serves comes from what the primary already knows (every part's liveness, restarts and
heartbeat age, the sessions it opened, the last shutdown) and from the retained ``part/<p>/metrics``
and ``part/<p>/counters`` each part publishes (calls and their latency, reconnects, stops on session
end, refused messages).  ``prometheus-client`` serves it from a thread of its own; the figures are
gathered on the primary's event loop, so nothing is read while the loop changes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.protocol.messages import Counters, PartMetrics, PartStateName
from orchestrator.transport.client import Message

if TYPE_CHECKING:
    from orchestrator.runtime.primary import Primary

__all__ = ["MetricsEndpoint"]

log = logging.getLogger("orchestrator.metrics")

GATHER_TIMEOUT_S = 2.0
MAX_PARTS = 10_000


class MetricsEndpoint(Collector):
    """Serves ``/metrics`` on ``host:port``; ``port`` is the one actually bound (``0`` in the config picks one)."""

    def __init__(self, primary: Primary, host: str, port: int) -> None:
        self.primary = primary
        self.host = host
        self.port = port
        self.part_metrics: dict[str, PartMetrics] = {}
        self.part_counters: dict[str, dict[str, int]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.scrapes = 0
        self._server: Any = None
        self._thread: Any = None

    async def start(self) -> None:
        p = self.primary
        self.loop = asyncio.get_running_loop()
        await p.client.subscribe(p.topics.all_part_metrics(), self._on_metrics)
        await p.client.subscribe(p.topics.all_part_counters(), self._on_counters)
        self.registry.register(self)
        self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self.port = self._server.server_address[1]
        log.info("part %s: Prometheus metrics on http://%s:%d/metrics", p.name, self.host, self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- what the parts publish -------------------------------------------------------------------
    def _on_metrics(self, msg: Message) -> None:
        part = self.primary.topics.part_of(msg.topic)
        if part is None or part not in self.primary.topology.parts:
            return
        got = self.primary.trusted(msg, PartMetrics)
        if got is not None:
            self.part_metrics[part] = got[1]

    def _on_counters(self, msg: Message) -> None:
        part = self.primary.topics.part_of(msg.topic)
        if part is None or part not in self.primary.topology.parts:
            return
        got = self.primary.trusted(msg, Counters)
        if got is not None:
            self.part_counters[part] = dict(got[1].counts)

    # -- the scrape -------------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        """Called by the HTTP thread: the figures are gathered on the event loop."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return iter(())
        fut = asyncio.run_coroutine_threadsafe(self._gather(), loop)
        try:
            return iter(fut.result(GATHER_TIMEOUT_S))
        except Exception:  # a busy or closing loop: an empty scrape rather than a hung one
            fut.cancel()
            log.warning("metrics: could not gather the figures in %.1f s", GATHER_TIMEOUT_S)
            return iter(())

    async def _gather(self) -> list[Metric]:
        self.scrapes += 1
        p = self.primary
        status = p.robot_status()
        now = time.time()
        out: list[Metric] = []
        robot = GaugeMetricFamily("orchestrator_robot_state", "1 for the robot's current state", labels=["state"])
        robot.add_metric([status.state], 1)
        out.append(robot)
        up = GaugeMetricFamily("orchestrator_part_up", "1 while the part runs and is heard (as the primary sees it)",
                               labels=["part"])
        restarts = CounterMetricFamily("orchestrator_part_restarts", "restarts of the part seen by the primary",
                                       labels=["part"])
        age = GaugeMetricFamily("orchestrator_part_heartbeat_age_seconds", "seconds since the part's last heartbeat",
                                labels=["part"])
        states = {n: s for n, s in status.parts.items()}
        n_online = 0
        for name in p.topology.parts:
            st = states.get(name)
            if name == p.name:
                up.add_metric([name], 1)
                restarts.add_metric([name], 0)
                n_online += 1
                continue
            live = st is not None and st.online and st.state != PartStateName.STOPPED
            n_online += 1 if live else 0
            up.add_metric([name], 1 if live else 0)
            restarts.add_metric([name], st.restarts if st is not None else 0)
            if st is not None and st.last_heartbeat:
                age.add_metric([name], max(0.0, now - st.last_heartbeat))
        out += [up, restarts, age]
        online = GaugeMetricFamily("orchestrator_parts_online", "parts online")
        online.add_metric([], n_online)
        out.append(online)
        opened = GaugeMetricFamily("orchestrator_sessions_open", "sessions open at the primary")
        opened.add_metric([], len(p.sessions.tracked))
        out.append(opened)

        calls = CounterMetricFamily("orchestrator_calls", "calls served", labels=["part", "resource", "method"])
        errors = CounterMetricFamily("orchestrator_call_errors", "calls answered with an error",
                                     labels=["part", "resource", "method", "code"])
        latency = HistogramMetricFamily("orchestrator_call_duration_seconds", "time to serve a call",
                                        labels=["part", "resource", "method"])
        reconnects = CounterMetricFamily("orchestrator_reconnects", "reconnections to the broker", labels=["part"])
        link_drops = CounterMetricFamily("orchestrator_link_drops", "times the part found its link dead and "
                                         "stopped its actuators", labels=["part"])
        link_waits = CounterMetricFamily("orchestrator_link_waits", "times the part's echo check waited for TCP "
                                         "to recover a loss on a link that still answered (a lossy link)",
                                         labels=["part"])
        stops = CounterMetricFamily("orchestrator_session_stops", "session ends that stopped actuators",
                                    labels=["part", "kind"])
        for part, m in list(self.part_metrics.items())[:MAX_PARTS]:
            for c in m.calls:
                labels = [part, c.resource, c.method]
                calls.add_metric(labels, c.count)
                for code, n in c.errors.items():
                    errors.add_metric([*labels, code], n)
                buckets: list[tuple[str, float]] = [(f"{b:g}", n) for b, n in zip(m.buckets, c.buckets, strict=False)]
                buckets.append(("+Inf", c.count))
                latency.add_metric(labels, buckets, sum_value=c.sum)
            reconnects.add_metric([part], m.reconnects)
            link_drops.add_metric([part], m.link_drops)
            link_waits.add_metric([part], m.link_waits)
            for kind, n in m.session_stops.items():
                stops.add_metric([part, kind], n)
        out += [calls, errors, latency, reconnects, link_drops, link_waits, stops]

        refused = CounterMetricFamily("orchestrator_rejected_messages", "messages refused, by reason",
                                      labels=["part", "reason"])
        for part, counts in list(self.part_counters.items())[:MAX_PARTS]:
            for reason, n in list(counts.items())[:200]:
                refused.add_metric([part, reason], n)
        out.append(refused)
        if p.timeline is not None and p.timeline.finished_at:
            took = GaugeMetricFamily("orchestrator_shutdown_duration_seconds", "the last shutdown, asked to done")
            took.add_metric([], max(0.0, p.timeline.finished_at - p.timeline.started_at))
            out.append(took)
        return out
