"""The code in the docs runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from orchestrator import InvalidArgument, Motor, Registry

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / doc).read_text(), re.S)


async def test_plugin_example_registers_and_drives(tmp_path: Path) -> None:
    ns: dict[str, Any] = {}
    exec(compile(python_blocks("plugins.md")[0], "docs/plugins.md", "exec"), ns)
    reg = Registry()
    ns["register"](reg)
    duty = tmp_path / "pwm1"
    fan = reg.get("acme:fans:pwm").build("cooling", {"duty_file": str(duty)}, {})
    assert isinstance(fan, Motor) and reg.get("acme:fans:pwm").kind is Motor
    await fan.set_power(0.5)
    assert duty.read_text() == "128" and await fan.is_moving()
    with pytest.raises(InvalidArgument):
        await fan.set_power(2)
    await fan.stop()
    assert duty.read_text() == "0" and not await fan.is_moving()
