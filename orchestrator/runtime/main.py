"""Entry point of one part process (``orchestrator part -c CONFIG --name NAME``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from urllib.parse import urlsplit

from orchestrator.config.loader import LoadedConfig
from orchestrator.errors import BrokerUnavailable, ConfigError
from orchestrator.logs import setup_logging
from orchestrator.runtime.monitoring import TopicLogHandler
from orchestrator.runtime.part import Part
from orchestrator.security.credentials import CredentialsMissing
from orchestrator.security.signed import load_effective

log = logging.getLogger("orchestrator.part")


def make_part(loaded: LoadedConfig, name: str, urls: list[tuple[str, int]] | None = None,
              credentials: str | None = None, health_file: str | None = None) -> Part:
    if loaded.topology.parent(name) is None:
        from orchestrator.runtime.primary import Primary  # a sub-part never loads the primary's machinery

        return Primary(loaded, name, urls=urls, credentials=credentials, health_file=health_file)
    return Part(loaded, name, urls=urls, credentials=credentials, health_file=health_file)


async def run_part(loaded: LoadedConfig, name: str, urls: list[tuple[str, int]] | None = None,
                   credentials: str | None = None, health_file: str | None = None) -> int:
    part = make_part(loaded, name, urls, credentials, health_file)
    level = loaded.config.monitoring.log_level
    if level is not None:  # what this part logs at that level and above also goes to part/<p>/log
        handler = TopicLogHandler(part, getattr(logging, level))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(min(root.level, handler.level))  # stderr keeps its own level
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, part.request_stop, f"{signal.Signals(sig).name}")
    return await part.run()


EXIT_CONFIG = 2


def parse_urls(text: str) -> list[tuple[str, int]]:
    """``mqtt://h:p,mqtt://h2:p2`` (scheme optional) to (host, port) pairs; checked like the URLs of a
    configuration (a port within 1..65535)."""
    from orchestrator.config.models import check_broker_url

    out = []
    for u in text.split(",")[:16]:
        u = u.strip()
        url = check_broker_url(u if "://" in u else f"mqtt://{u}")
        p = urlsplit(url)
        out.append((p.hostname or "127.0.0.1", p.port or (8883 if p.scheme in ("mqtts", "ssl") else 1883)))
    return out


def part_main(config: str, name: str, broker: str | None, verbose: bool, credentials: str | None = None,
              health_file: str | None = None) -> int:
    """Run one part as this process; the exit code (2: invalid configuration or credentials, 1: no broker).
    ``health_file``: where to keep its health line for a container health check (runtime/healthfile.py)."""
    setup_logging(f"part {name}", verbose)
    try:
        loaded = load_effective(config, credentials)
    except ConfigError as exc:
        print(f"invalid configuration ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_CONFIG
    if name not in loaded.topology.parts:
        print(f"{config}: no part named {name!r} (parts: {', '.join(loaded.topology.parts)})", file=sys.stderr)
        return EXIT_CONFIG
    try:
        urls = parse_urls(broker) if broker else None
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    try:
        return asyncio.run(run_part(loaded, name, urls, credentials, health_file))
    except CredentialsMissing as exc:
        print(f"part {name}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokerUnavailable as exc:
        print(f"part {name}: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """``python -m orchestrator.runtime CONFIG --name NAME``: a lean entry point (no CLI framework, no
    terminal UI imported), used by ``orchestrator up`` for every part it starts."""
    ap = argparse.ArgumentParser(prog="python -m orchestrator.runtime", description="Run one part.")
    ap.add_argument("config")
    ap.add_argument("--name", required=True)
    ap.add_argument("--broker", default=None, help="broker URL(s), comma separated")
    ap.add_argument("--credentials", default=None, help="credentials directory (default: from the config)")
    ap.add_argument("--verbose", "-v", action="store_true")
    a = ap.parse_args(argv)
    return part_main(a.config, a.name, a.broker, a.verbose, a.credentials)
