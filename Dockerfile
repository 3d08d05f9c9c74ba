# One image for every part of a robot: `orchestrator part CONFIG --name NAME`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY parts ./parts
RUN pip install --no-cache-dir . ./parts/sim ./parts/host
COPY examples ./examples
# docker compose stops containers with SIGTERM: a part then stops its subtree and reports to its parent.
STOPSIGNAL SIGTERM
ENTRYPOINT ["orchestrator"]
