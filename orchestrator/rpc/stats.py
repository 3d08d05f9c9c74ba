"""Calls served by a part, for its metrics (``part/<p>/metrics``, the primary's Prometheus endpoint)."""

from __future__ import annotations

from typing import Any

__all__ = ["BUCKETS", "CallStats"]

# call latency histogram buckets, seconds (as Prometheus client libraries default to, finer at the low end)
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_SERIES = 500  # (resource, method) pairs kept


class CallStats:
    """Calls served, per resource and method: count, errors by code, latency histogram."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0

    def record(self, resource: str, method: str, seconds: float, error: str | None) -> None:
        key = (resource[:64], method[:64])
        s = self.series.get(key)
        if s is None:
            if len(self.series) >= MAX_SERIES:
                key = ("(other)", "(other)")
                s = self.series.get(key)
            if s is None:
                s = self.series[key] = {"count": 0, "sum": 0.0, "buckets": [0] * len(BUCKETS), "errors": {}}
        s["count"] += 1
        s["sum"] += seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                s["buckets"][i] += 1
        if error is not None:
            s["errors"][error] = s["errors"].get(error, 0) + 1
        self.version += 1

    def body(self) -> dict[str, Any]:
        return {"buckets": list(BUCKETS),
                "calls": [{"resource": r, "method": m, **s} for (r, m), s in self.series.items()]}
