#!/usr/bin/env bash
# `make test` on any machine, a fresh one included: what the tests need, then lint, types and the suite.
#
# The two slow installs overlap: the Python packages (pip, mostly network) in the foreground while, in
# the background, the Debian packages the tests run (`make test-tools`) and the Docker engine with the
# base and mosquitto images (`docker/images.sh engine base mosquitto`: apt and debootstrap, about 100 s
# cold) are prepared.  The container tests later build only what depends on the sources (wheelhouse,
# project image).  A Docker engine this run started is stopped at the end, as the tests' own fixture does.
set -euo pipefail
cd "$(dirname "$0")/.."
MAKE="${MAKE:-make}"
VENV="${VENV:-.venv}"
BIN="$VENV/bin"
mkdir -p build
log=build/test-setup.log

engine_was_up=0
docker info >/dev/null 2>&1 && engine_was_up=1

echo "test setup in the background: Debian packages, Docker engine, base images (log: $log)"
( "$MAKE" --no-print-directory test-tools && VENV="$(realpath "$VENV")" docker/images.sh engine base mosquitto ) \
  >"$log" 2>&1 &
setup=$!
"$MAKE" --no-print-directory install-test || { kill "$setup" 2>/dev/null; wait "$setup" || true; exit 1; }
if ! wait "$setup"; then
  tail -n 40 "$log" >&2
  echo "test setup failed (log: $log)" >&2
  exit 1
fi

status=0
"$BIN/ruff" check orchestrator tests bench parts || status=$?
[ "$status" = 0 ] && { "$BIN/mypy" || status=$?; }
[ "$status" = 0 ] && { "$BIN/python" -m pytest -q || status=$?; }
if [ "$engine_was_up" = 0 ]; then
  docker/engine.sh stop >/dev/null 2>&1 || true  # only a dockerd that docker/engine.sh started
fi
exit "$status"
