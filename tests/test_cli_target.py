"""Issue 12 item 5, "a CLI that never locks you out": one regression test per defect fixed."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from robot import Up, robot_setup, three_level_parts


@pytest.mark.timeout(90)
async def test_sigint_is_not_labelled_sigterm_in_the_timeline(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) to `up`: the primary is sent SIGINT too, so the timeline's reason says SIGINT."""
    with robot_setup("mosquitto", tmp_path / "robot.yaml", three_level_parts()) as setup:
        up = Up(setup.cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.until(lambda: w.status is not None and w.status.state == "running", 30, "robot running")
                up.terminate(signal.SIGINT)
                assert await up.wait(30) == 0, up.output()
                await w.until(lambda: w.timeline is not None, 10, "retained timeline")  # robot/timeline
                assert w.timeline is not None
                reason = w.timeline.reason
            assert "SIGINT" in reason and "SIGTERM" not in reason, reason
        finally:
            up.close()
