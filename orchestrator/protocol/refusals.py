"""What a process refuses or drops from the wire: counted by reason, logged at most once per interval.

A hostile stream must cost a counter, not disk: nothing taken from a refused message is logged
except its topic (truncated) and a reason of ours.  The counts are published by each part (retained,
``part/<p>/counters``) so an operator sees refusals without reading logs.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("orchestrator.refusals")

__all__ = ["Refusals"]

MAX_REASONS = 100  # distinct reasons kept (reasons are ours, but bound them anyway)


class Refusals:
    def __init__(self, who: str, *, interval_s: float = 10.0) -> None:
        self.who = who
        self.interval_s = interval_s
        self.since = time.time()
        self.counts: dict[str, int] = {}
        self.version = 0  # rises with every refusal (cheap "did anything change" for publishers)
        self._logged_at: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._last: tuple[object, str] | None = None  # the message refused last, and why
        self.last_reason = ""  # why the last refusal was made

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def refuse(self, reason: str, topic: str = "", detail: str = "", level: int = logging.WARNING, *,
               message: object = None) -> None:
        """Count (and perhaps log) one refusal.  ``message``: the message refused; several handlers of one
        process that refuse the same message for the same reason count it once."""
        reason = reason[:48]
        self.last_reason = reason
        if message is not None:
            previous = self._last
            if previous is not None and previous[0] is message and previous[1] == reason:
                return
            self._last = (message, reason)
        if reason not in self.counts and len(self.counts) >= MAX_REASONS:
            reason = "other"
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.version += 1
        now = time.monotonic()
        last = self._logged_at.get(reason)
        if last is not None and now - last < self.interval_s:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._logged_at[reason] = now
        more = self._suppressed.pop(reason, 0)
        log.log(level, "%s: refused a message (%s)%s%s%s", self.who, reason,
                f" on {topic[:120]}" if topic else "", f": {detail[:200]}" if detail else "",
                f" [{more} more of this kind in the last {self.interval_s:g} s]" if more else "")
