"""A client process for session tests: makes one call in a session, says so, then waits or blocks.

    python session_client.py CONFIG BROKER_URL PART/RESOURCE METHOD ARGS_JSON MODE

MODE: ``wait`` (sleeps until killed) or ``block:S`` (blocks its own event loop S seconds with a
synchronous sleep, then makes one more call in the same session and prints its result).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

from orchestrator.client import RobotClient


async def main(config: str, url: str, target: str, method: str, args: str, mode: str) -> None:
    u = urlsplit(url)
    async with RobotClient.from_config(config, urls=[(u.hostname or "127.0.0.1", u.port or 1883)]) as robot:
        result = await robot.call(target, method, json.loads(args))
        assert robot.session is not None
        print(f"ready {robot.session.id} {json.dumps(result)}", flush=True)
        if mode == "wait":
            await asyncio.sleep(3600)
        elif mode.startswith("block:"):
            time.sleep(float(mode.split(":")[1]))  # noqa: ASYNC251 - blocks this process's event loop on purpose
            part = target.split("/")[0]
            print("alive", json.dumps(await robot.call(f"{part}/{target.split('/')[1]}", "is_moving")), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
