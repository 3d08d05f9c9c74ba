"""``orchestrator.testing.robot_with``, as plugin authors use it: resources inside a real part on the
embedded broker, and a resource that fails to build as a failed test with the plugin's own error."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import Generic, InternalError, Motor, UnknownResource
from orchestrator.testing import robot_with

pytestmark = pytest.mark.timeout(30)


async def test_robot_with_runs_a_resource_in_a_part_and_calls_cross_the_broker(tmp_path: Path) -> None:
    async with robot_with([{"name": "m", "model": "orc:sim:motor"}], directory=tmp_path) as robot:
        motor = robot.resource("m", Motor)
        await motor.set_power(0.5)
        assert await motor.is_moving()
        assert await robot.local("m").get_power() == 0.5  # type: ignore[attr-defined]
        await motor.stop()
        assert not await motor.is_moving()
        assert robot.url.startswith("mqtt://127.0.0.1:") and not robot.url.endswith(":1883")


async def test_a_resource_that_fails_to_build_fails_robot_with_with_the_plugins_error(tmp_path: Path) -> None:
    """Regression: robot_with yielded anyway (the part only logged the failure), and the author's test
    then failed far from the cause: UnknownResource on a call, a bare KeyError from local()."""
    resources = [{"name": "bad", "model": "orc:sim:faulty", "attributes": {"fail_to_build": True}},
                 {"name": "m", "model": "orc:sim:motor"}]
    failed = r"resource bad .*failed to build: RuntimeError: configured to fail"
    with pytest.raises(InternalError, match=failed) as info:
        async with robot_with(resources, directory=tmp_path):
            pytest.fail("robot_with yielded with a resource that failed to build")
    assert isinstance(info.value.__cause__, RuntimeError)  # the plugin's exception, with its traceback
    assert info.value.__cause__.__traceback__ is not None


async def test_allow_degraded_runs_the_robot_and_local_names_why_a_resource_is_missing(tmp_path: Path) -> None:
    resources = [{"name": "bad", "model": "orc:sim:faulty", "attributes": {"fail_to_build": True}},
                 {"name": "ok", "model": "orc:sim:faulty"}]
    async with robot_with(resources, directory=tmp_path, allow_degraded=True) as robot:
        assert await robot.resource("ok", Generic).do_command({"echo": 3}) == {"echo": 3}
        with pytest.raises(UnknownResource, match=r"degraded: RuntimeError: configured to fail to build"):
            robot.local("bad")
        with pytest.raises(UnknownResource, match="not in the configuration"):
            robot.local("nothing")
