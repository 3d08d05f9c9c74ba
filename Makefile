# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= examples/rover.yaml

.PHONY: demo test venv install install-test mosquitto lint typecheck bench images wheelhouse engine-stop clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

venv: $(BIN)/python

install: venv
	$(BIN)/pip install -q -e . $(foreach p,$(wildcard parts/*/pyproject.toml),-e $(dir $(p)))

install-test: venv
	$(BIN)/pip install -q -e '.[test]' $(foreach p,$(wildcard parts/*/pyproject.toml),-e $(dir $(p)))

# mosquitto is a test dependency: the behaviour suite runs against it as well as the embedded broker.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  echo "installing mosquitto (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q mosquitto; }

demo: install
	$(BIN)/orchestrator up $(CONFIG)

test: install-test mosquitto
	$(BIN)/ruff check orchestrator tests bench parts
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: install-test
	$(BIN)/ruff check orchestrator tests bench parts

typecheck: install-test
	$(BIN)/mypy

bench: install-test mosquitto
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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
