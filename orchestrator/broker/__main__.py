"""``python -m orchestrator.broker --host 127.0.0.1 --port 18830``: run the embedded broker.

Stops cleanly on SIGINT/SIGTERM.  Exit status 2 if the port is already taken.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from ..errors import OrchestratorError, PortInUse
from ..logs import setup_logging
from .embedded import DEFAULT_PORT, run_broker


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.broker", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}, 0 = any)")
    parser.add_argument("--max-payload", type=int, default=256 * 1024, help="largest payload accepted, bytes")
    parser.add_argument("--max-queued", type=int, default=1000, help="messages queued per client before dropping")
    parser.add_argument("--log-level", default="WARNING", help="orchestrator log level (amqtt stays at WARNING)")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_broker(args.host, args.port, stop, max_payload=args.max_payload, max_queued=args.max_queued)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("ORCHESTRATOR_LOG", args.log_level.upper())
    setup_logging("broker")
    try:
        asyncio.run(_serve(args))
    except PortInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
