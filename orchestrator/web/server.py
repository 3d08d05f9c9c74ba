"""Serve the control panel's static files and a generated ``config.json`` over HTTP, or HTTPS on a robot
with TLS (the broker's certificate and key; then plain HTTP is not served at all).

The stdlib :class:`http.server.ThreadingHTTPServer` on a daemon thread: the files are small and
static, so nothing here touches the robot's event loop.  ``/config.json`` tells the page the robot's
name, the broker's MQTT-over-WebSocket URL (or, when the page should use its own host name, the
listener's port) and the client name the login form suggests; everything else comes from
:data:`STATIC_DIR`, the bundle built from ``web/`` (``make web``).  Nothing here holds a secret: the
page logs in to the broker with a client credential the user types.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Sequence
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.config.models import RobotConfig

__all__ = ["STATIC_DIR", "WebServer", "fetch_page_config", "health_check", "panel_certificate", "panel_server"]

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


class _TlsHttpServer(ThreadingHTTPServer):
    """HTTPS only: the TLS handshake is made on the request's own thread (a slow or plain-HTTP client never
    holds up the accepting one), and a connection that does not speak TLS is closed unanswered."""

    ssl_context: ssl.SSLContext
    handshake_timeout_s = 10.0

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.handshake_timeout_s)
        try:
            conn = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # plain http://, a client that does not trust the certificate, or a dropped connection
        try:
            conn.settimeout(None)
            super().finish_request(conn, client_address)
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


def _server_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certfile), str(keyfile))
    return ctx


class WebServer:
    """The panel on ``host:port`` (port 0 picks a free one); :meth:`start` / :meth:`close`.

    With ``certfile`` and ``keyfile`` it serves HTTPS only (:attr:`scheme` ``"https"``)."""

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
        certfile: Path | None = None,
        keyfile: Path | None = None,
        viewers: Sequence[str] = (),
    ) -> None:
        if websocket_url is None and websocket_port is None:
            raise ValueError("the page needs the broker's WebSocket URL or its port")
        if (certfile is None) != (keyfile is None):
            raise ValueError("HTTPS needs both certfile and keyfile")
        # read before binding: a certificate that cannot be loaded is not a port in use
        context = _server_context(certfile, keyfile) if certfile is not None and keyfile is not None else None
        page: dict[str, Any] = {"robot": robot, "websocket_url": websocket_url}
        if websocket_port is not None:
            page["websocket_port"] = websocket_port
        if client is not None:
            page["client"] = client
        if viewers:  # names only (usernames, not secrets): the page watches as these, without a session
            page["viewers"] = list(viewers)
        config = json.dumps(page).encode()
        handler = type("PanelHandler", (_Handler,), {"page_config": config})
        serve = partial(handler, directory=str(static_dir))
        if context is not None:
            tls_server = _TlsHttpServer((host, port), serve)
            tls_server.ssl_context = context
            self._httpd: ThreadingHTTPServer = tls_server
        else:
            self._httpd = ThreadingHTTPServer((host, port), serve)
        self.scheme = "https" if context is not None else "http"
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


def panel_certificate(config: RobotConfig, config_path: Path,
                      credentials: str | Path | None = None) -> tuple[Path, Path] | None:
    """The certificate and key the panel of a robot with TLS is served with (None without TLS): the panel's own
    (``web.crt``, ``web.key``: `orchestrator certs` makes them; the compose file's `web` service holds only
    these) when both are in the credentials directory, else the broker's.

    Raises :class:`~orchestrator.errors.CredentialsMissing` when either file is missing: the page is then
    never served over plain HTTP instead.
    """
    if not config.panel_tls():
        return None
    from orchestrator.security.access import store_for
    from orchestrator.security.credentials import CredentialsMissing
    from orchestrator.security.tls import BROKER_CERT, BROKER_KEY, WEB_CERT, WEB_KEY

    store = store_for(config, config_path, credentials)
    own = (store.path(WEB_CERT), store.path(WEB_KEY))
    files = own if all(f.is_file() for f in own) else (store.path(BROKER_CERT), store.path(BROKER_KEY))
    for f in files:
        if not f.is_file():
            raise CredentialsMissing(f"{f}: the robot has TLS, so its web panel is served over HTTPS with the "
                                     "broker's certificate and key (make development ones with `orchestrator "
                                     "certs -c CONFIG`)", path=str(f))
    return files


def panel_server(
    config: RobotConfig,
    *,
    websocket_port: int | None,
    host: str | None = None,
    port: int | None = None,
    static_dir: Path = STATIC_DIR,
    certificate: tuple[Path, Path] | None = None,
    plain_http: bool = False,
) -> WebServer:
    """The panel of a robot as its ``web:`` section says: ``orchestrator up`` (with the embedded broker's
    WebSocket port) and ``orchestrator web`` (a compose service: the port the broker is published on).

    ``host`` and ``port`` override ``web.host`` and ``web.port`` (a container listens on every address).
    ``certificate`` (:func:`panel_certificate`) serves HTTPS; a robot with TLS needs it, unless ``plain_http``
    says explicitly that this server is plain HTTP (``orchestrator web --plain-http``).
    """
    from orchestrator.config.models import ClientRole

    web = config.web
    if web is None or not web.enabled:
        raise ValueError(f"robot {config.robot} has no enabled web: section")
    if config.panel_tls() and certificate is None and not plain_http:
        raise ValueError(f"robot {config.robot} has TLS: its panel is served over HTTPS (give its certificate)")
    if plain_http and certificate is not None:
        raise ValueError("plain_http with a certificate")
    certfile, keyfile = certificate if certificate is not None else (None, None)
    return WebServer(host=web.host if host is None else host, port=web.port if port is None else port,
                     robot=config.robot, websocket_url=web.websocket_url, websocket_port=websocket_port,
                     client=web.client or config.default_client(), static_dir=static_dir,
                     certfile=certfile, keyfile=keyfile,
                     viewers=[c.name for c in config.clients if c.role == ClientRole.VIEWER])


def fetch_page_config(url: str, timeout: float, cafile: str | Path | None = None) -> dict[str, Any]:
    """GET the ``config.json`` of the panel served at ``url`` (``http://HOST:PORT/``, or ``https://`` verified
    with ``cafile``, the robot's CA)."""
    import urllib.request

    handlers: list[Any] = [urllib.request.ProxyHandler({})]  # loopback or the robot: never a proxy
    if cafile is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(cafile))))
    opener = urllib.request.build_opener(*handlers)
    with opener.open(url.rstrip("/") + "/config.json", timeout=timeout) as resp:
        page = json.load(resp)
    if not isinstance(page, dict):
        raise ValueError(f"{url}config.json is not an object")
    return page


def health_check(port: int, robot: str, python: str = "python3", cafile: str | None = None) -> list[str]:
    """The compose health check of the ``web`` service: the panel of ``robot`` is served on 127.0.0.1:``port``
    (over HTTPS with a certificate of the robot's CA ``cafile``, when given: the chain is checked, not the name,
    which is the robot's, not 127.0.0.1).

    The standard library alone in an isolated interpreter (about 0.1 s of CPU, where importing the framework
    for ``orchestrator ...`` costs 0.4 s before any work: docs/deploy.md), one line of output, exit 0 or 1.
    """
    if cafile is None:
        head = ["import json,sys,urllib.request as u", f"r={robot!r};a='http://127.0.0.1:{port}/config.json'",
                "h=[u.ProxyHandler({})]"]  # never through a proxy
    else:
        head = ["import json,ssl,sys,urllib.request as u",
                f"r={robot!r};a='https://127.0.0.1:{port}/config.json'",
                f"c=ssl.create_default_context(cafile={cafile!r});c.check_hostname=False",
                "h=[u.ProxyHandler({}),u.HTTPSHandler(context=c)]"]
    code = "\n".join([
        *head,
        "try: p=json.load(u.build_opener(*h).open(a,timeout=3))",
        "except Exception as e: sys.exit(f'unhealthy: no panel at {a}: {e}')",
        "if p.get('robot')!=r: sys.exit(f'unhealthy: {a} is the panel of {p.get(\"robot\")!r}, not of {r}')",
        "print(f'healthy: the panel of {r} at {a}')",
    ])
    return ["CMD", python, "-I", "-c", code]
