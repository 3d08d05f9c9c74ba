# mosquitto 2 from Debian's packages, run as the non-root user `mosquitto` (uid/gid 1883, as the
# eclipse-mosquitto image), configured by a file mounted at /mosquitto/config/mosquitto.conf:
#
#   docker run -v "$PWD/broker_config/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" \
#              -p 127.0.0.1:1883:1883 orchestrator-mosquitto:bookworm
#
# Built by docker/images.sh on the base image made from Debian's packages (debootstrap).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
# The user exists before the package, so its postinst keeps this uid instead of picking one.
RUN groupadd --system --gid 1883 mosquitto \
 && useradd --system --uid 1883 --gid mosquitto --home-dir /var/lib/mosquitto --no-create-home \
      --shell /usr/sbin/nologin mosquitto \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mosquitto mosquitto-clients \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && install -d -o mosquitto -g mosquitto /mosquitto/data /mosquitto/log \
 && install -d /mosquitto/config
USER 1883:1883
EXPOSE 1883
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/sbin/mosquitto"]
CMD ["-c", "/mosquitto/config/mosquitto.conf"]
