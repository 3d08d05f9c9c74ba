"""The control panel's HTTP server: static files and the generated config.json."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from orchestrator.web.server import STATIC_DIR, WebServer

pytestmark = pytest.mark.timeout(10)


def test_serves_static_files_and_config(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>panel</p>")
    server = WebServer(
        host="127.0.0.1",
        port=0,
        robot="r1",
        websocket_url="ws://127.0.0.1:9001",
        static_dir=tmp_path,
    )
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/config.json", timeout=5) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            assert json.load(resp) == {"robot": "r1", "websocket_url": "ws://127.0.0.1:9001"}
        with urllib.request.urlopen(f"{base}/", timeout=5) as resp:
            assert resp.read() == b"<p>panel</p>"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/../../etc/passwd", timeout=5)
        assert err.value.code == 404
    finally:
        server.close()


def test_packaged_static_dir_has_an_index() -> None:
    assert (STATIC_DIR / "index.html").is_file()
