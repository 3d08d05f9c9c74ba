# One image for every part of a robot: `orchestrator part -c CONFIG --name NAME`.
#
# Installs only from a wheelhouse built on the host (`make wheelhouse` -> build/wheelhouse/{deps,local}):
# no index, no network, the same way an air-gapped robot is deployed.  See docs/deploy.md.
#
#   with a registry:     make wheelhouse && docker build -t orchestrator .
#   without one:         make images   (BASE=orchestrator-base:bookworm, made from Debian's packages)
#
# BASE must provide python3 (3.11, the wheelhouse's interpreter) with the venv module, and useradd.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The dependencies first: this layer survives an edit of the project's sources.
COPY build/wheelhouse/deps /wheels/deps
RUN python3 -m venv /opt/orchestrator \
 && /opt/orchestrator/bin/pip install --no-index --find-links /wheels/deps /wheels/deps/*.whl
COPY build/wheelhouse/local /wheels/local
RUN /opt/orchestrator/bin/pip install --no-index --find-links /wheels/deps --find-links /wheels/local \
      robot-orchestrator robot-orchestrator-sim robot-orchestrator-host \
 && /opt/orchestrator/bin/pip check \
 && /opt/orchestrator/bin/orchestrator --help >/dev/null

FROM ${BASE}
# A fixed uid/gid, so volumes and runAsNonRoot policies can name it.
RUN groupadd --system --gid 10001 orchestrator \
 && useradd --system --uid 10001 --gid orchestrator --home-dir /home/orchestrator --create-home \
      --shell /usr/sbin/nologin orchestrator
COPY --from=build /opt/orchestrator /opt/orchestrator
COPY examples /app/examples
ENV PATH=/opt/orchestrator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER 10001:10001
# docker compose stops containers with SIGTERM: a part then stops its subtree and reports to its parent.
STOPSIGNAL SIGTERM
# Contract (docs/deploy.md): `orchestrator health` exits 0 when the part named $ORCHESTRATOR_PART of
# $ORCHESTRATOR_CONFIG runs in this container and is connected to its broker, non-zero otherwise,
# within the timeout.  $ORCHESTRATOR_BROKER (optional) is the part's --broker.  Whoever starts the
# container sets these variables; without them the container reports unhealthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD orchestrator health --config "$ORCHESTRATOR_CONFIG" --name "$ORCHESTRATOR_PART" \
      ${ORCHESTRATOR_BROKER:+--broker "$ORCHESTRATOR_BROKER"} || exit 1
ENTRYPOINT ["orchestrator"]
CMD ["--help"]
