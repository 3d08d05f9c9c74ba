# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= examples/rover.yaml
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test venv install install-test test-tools lint typecheck bench images wheelhouse engine-stop clean web

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

venv: $(BIN)/python

install: venv
	$(BIN)/pip install -q -e . $(foreach p,$(wildcard parts/*/pyproject.toml),-e $(dir $(p)))

install-test: venv
	$(BIN)/pip install -q -e '.[test]' $(foreach p,$(wildcard parts/*/pyproject.toml),-e $(dir $(p)))

# What the tests run besides Python, from Debian's packages, installed only when missing:
#   mosquitto    the behaviour suite runs against it as well as the embedded broker
#   nftables, iproute2   tests/netlab.py: namespaces, veth links, loss and blackholes
#   nats-server  tests/natslab.py: NATS clusters with MQTT listeners
#   chromium, chromium-driver   tests/test_web_panel.py: the web panel in a headless browser (Selenium)
#   libnss3-tools   its certutil: the NSS database through which that Chromium trusts a TLS robot's CA
# (the Docker engine and images are made by docker/images.sh when the container tests first need them)
test-tools:
	@missing=""; \
	  for pair in mosquitto:mosquitto nft:nftables ip:iproute2 nats-server:nats-server chromium:chromium \
	              chromedriver:chromium-driver certutil:libnss3-tools; do \
	    cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	    { command -v $$cmd >/dev/null 2>&1 || test -x /usr/sbin/$$cmd || test -x /sbin/$$cmd; } || missing="$$missing $$pkg"; \
	  done; \
	  [ -z "$$missing" ] || { echo "installing$$missing (Debian packages)"; \
	    $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; }

# the demo's credentials (one secret per part and client, owner-only) are made once, then kept
demo: install
	$(BIN)/orchestrator credentials -c $(CONFIG)
	$(BIN)/orchestrator up -c $(CONFIG)

# install-test and test-tools (plus the Docker engine and base images) overlap: tests/make_test.sh
test: venv
	MAKE="$(MAKE)" VENV="$(VENV)" tests/make_test.sh

lint: install-test
	$(BIN)/ruff check orchestrator tests bench parts

typecheck: install-test
	$(BIN)/mypy

bench: install-test test-tools
	$(BIN)/python -m bench

# Container images without a registry (docs/deploy.md): engine, Compose v2, wheelhouse, base image
# from Debian's packages, mosquitto, the project.  Cached: a re-run with nothing changed takes seconds.
images: venv
	VENV=$(abspath $(VENV)) docker/images.sh

wheelhouse: venv
	VENV=$(abspath $(VENV)) docker/images.sh wheelhouse

# Stops the Docker engine only if docker/engine.sh started it.
engine-stop:
	docker/engine.sh stop

# The web control panel's bundle (docs/web.md): web/src -> orchestrator/web/static/, committed, so
# `make demo` needs no Node.js.  Needs node and npm (the packages come from web/package-lock.json).
web:
	cd web && npm ci --no-audit --no-fund && node build.mjs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
