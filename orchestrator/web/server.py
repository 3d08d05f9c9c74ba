"""Serve the control panel's static files and a generated ``config.json`` over plain HTTP.

The stdlib :class:`http.server.ThreadingHTTPServer` on a daemon thread: the files are small and
static, so nothing here touches the robot's event loop.  ``/config.json`` tells the page the robot's
name, the broker's MQTT-over-WebSocket URL (or, when the page should use its own host name, the
listener's port) and the client name the login form suggests; everything else comes from
:data:`STATIC_DIR`, the bundle built from ``web/`` (``make web``).  Nothing here holds a secret: the
page logs in to the broker with a client credential the user types.
"""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.config.models import RobotConfig

__all__ = ["STATIC_DIR", "WebServer", "fetch_page_config", "health_check", "panel_server"]

STATIC_DIR = Path(__file__).resolve().parent / "static"


class _Handler(SimpleHTTPRequestHandler):
    page_config: bytes = b"{}"

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/config.json":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(self.page_config)))
            self.end_headers()
            self.wfile.write(self.page_config)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the panel's requests are not the robot's log


class WebServer:
    """The panel on ``host:port`` (port 0 picks a free one); :meth:`start` / :meth:`close`."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        robot: str,
        websocket_url: str | None = None,
        websocket_port: int | None = None,
        client: str | None = None,
        static_dir: Path = STATIC_DIR,
    ) -> None:
        if websocket_url is None and websocket_port is None:
            raise ValueError("the page needs the broker's WebSocket URL or its port")
        page: dict[str, Any] = {"robot": robot, "websocket_url": websocket_url}
        if websocket_port is not None:
            page["websocket_port"] = websocket_port
        if client is not None:
            page["client"] = client
        config = json.dumps(page).encode()
        handler = type("PanelHandler", (_Handler,), {"page_config": config})
        self._httpd = ThreadingHTTPServer((host, port), partial(handler, directory=str(static_dir)))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="web-panel", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()


def panel_server(
    config: RobotConfig,
    *,
    websocket_port: int | None,
    host: str | None = None,
    port: int | None = None,
    static_dir: Path = STATIC_DIR,
) -> WebServer:
    """The panel of a robot as its ``web:`` section says: ``orchestrator up`` (with the embedded broker's
    WebSocket port) and ``orchestrator web`` (a compose service: the port the broker is published on).

    ``host`` and ``port`` override ``web.host`` and ``web.port`` (a container listens on every address).
    """
    web = config.web
    if web is None or not web.enabled:
        raise ValueError(f"robot {config.robot} has no enabled web: section")
    return WebServer(host=web.host if host is None else host, port=web.port if port is None else port,
                     robot=config.robot, websocket_url=web.websocket_url, websocket_port=websocket_port,
                     client=web.client or config.default_client(), static_dir=static_dir)


def fetch_page_config(url: str, timeout: float) -> dict[str, Any]:
    """GET the ``config.json`` of the panel served at ``url`` (``http://HOST:PORT/``)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback or the robot: never a proxy
    with opener.open(url.rstrip("/") + "/config.json", timeout=timeout) as resp:
        page = json.load(resp)
    if not isinstance(page, dict):
        raise ValueError(f"{url}config.json is not an object")
    return page


def health_check(port: int, robot: str, python: str = "python3") -> list[str]:
    """The compose health check of the ``web`` service: the panel of ``robot`` is served on 127.0.0.1:``port``.

    The standard library alone in an isolated interpreter (about 0.1 s of CPU, where importing the framework
    for ``orchestrator ...`` costs 0.4 s before any work: docs/deploy.md), one line of output, exit 0 or 1.
    """
    code = "\n".join([
        "import json,sys,urllib.request as u",
        f"r={robot!r};a='http://127.0.0.1:{port}/config.json'",
        "try: p=json.load(u.build_opener(u.ProxyHandler({})).open(a,timeout=3))",  # never through a proxy
        "except Exception as e: sys.exit(f'unhealthy: no panel at {a}: {e}')",
        "if p.get('robot')!=r: sys.exit(f'unhealthy: {a} is the panel of {p.get(\"robot\")!r}, not of {r}')",
        "print(f'healthy: the panel of {r} at {a}')",
    ])
    return ["CMD", python, "-I", "-c", code]
