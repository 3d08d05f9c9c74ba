"""A part process that also drives its own resources by itself, as an autonomous behaviour running in
the part would (a navigation stack on the primary): what it drives on other parts then belongs to the
part's own session, not to any client's.

    python net_part.py CONFIG NAME [--broker URL]

Then, one per line on stdin: ``set_power RESOURCE ARG...`` (floats); it answers ``ok`` or
``error <what>`` on stdout.  SIGTERM stops the part bottom-up, as ``orchestrator part`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading

from orchestrator.runtime.main import make_part, parse_urls, setup_logging
from orchestrator.security.signed import load_effective


async def main(config: str, name: str, broker: str | None) -> int:
    loaded = load_effective(config)
    part = make_part(loaded, name, parse_urls(broker) if broker else None)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, part.request_stop, signal.Signals(sig).name)
    lines: asyncio.Queue[str] = asyncio.Queue()
    built = asyncio.Event()  # set whenever the part builds a resource
    on_built = part.host.on_built

    def seen(name: str, res: object) -> None:
        if on_built is not None:
            on_built(name, res)  # type: ignore[arg-type]
        built.set()

    part.host.on_built = seen

    def read() -> None:  # a daemon thread: a pending readline never holds the process at exit
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)

    threading.Thread(target=read, name="net_part.stdin", daemon=True).start()

    async def commands() -> None:
        while True:
            line = await lines.get()
            cmd, res, *args = line.split()
            try:
                assert cmd == "set_power", cmd
                # a resource on remote motors is built once their part runs, a moment after the watcher of the
                # test may have seen it running (seen in CI: KeyError): wait for it, bounded
                async with asyncio.timeout(10):
                    while res not in part.host.resources:
                        built.clear()
                        await built.wait()
                await getattr(part.host.resources[res], cmd)(*map(float, args))
                print("ok", flush=True)
            except Exception as exc:  # reported to the test, which decides
                print(f"error {type(exc).__name__}: {exc}", flush=True)

    task = asyncio.create_task(commands(), name=f"net_part[{name}].commands")
    try:
        return await part.run()
    finally:
        task.cancel()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("name")
    ap.add_argument("--broker", default=None)
    a = ap.parse_args()
    setup_logging(False)
    sys.exit(asyncio.run(main(a.config, a.name, a.broker)))
