"""The committed panel (orchestrator/web/static, so that `make demo` needs no Node.js) is what web/src builds.

The build is run for real: web/ copied without its node_modules, `npm ci` from its lock file (the npm registry),
`node build.mjs` into a temporary directory; every file must equal the committed one, byte for byte. A change
to web/src that was not followed by `make web` fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.web.server import STATIC_DIR

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_the_committed_panel_is_the_build_of_web_src(tmp_path: Path) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm (Node.js) are needed to build the panel"
    web = tmp_path / "web"
    shutil.copytree(ROOT / "web", web, ignore=shutil.ignore_patterns("node_modules"))
    res = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=web, capture_output=True,
                         text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    out = tmp_path / "out"
    res = subprocess.run([node, "build.mjs"], cwd=web, env={**os.environ, "WEB_OUT": str(out)}, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    built = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(STATIC_DIR).as_posix() for p in STATIC_DIR.rglob("*") if p.is_file())
    assert built == committed
    stale = [name for name in built if (out / name).read_bytes() != (STATIC_DIR / name).read_bytes()]
    assert not stale, f"orchestrator/web/static is not the build of web/src (run `make web`): {stale}"
