# syntax=docker/dockerfile:1
# esm's container image.
#
#   docker build -t esm .
#   docker run --stop-timeout 40 -p 9464:9464 \
#       -v "$PWD/config.toml:/etc/esm/config.toml:ro" -v esm-state:/var/lib/esm esm
#
# The install steps are in deploy/install.sh, not here: CI has no Docker engine and runs
# `deploy/install.sh --check` (the same steps on the same files, then a smoke test of
# `esm run` and the HEALTHCHECK command), so this file only copies and wires.
#
# Config: mount it at /etc/esm/config.toml with `http_address = "0.0.0.0:9464"` and an
#   absolute `[state] path` under /var/lib/esm (see deploy/docker/config.toml).
# State: /var/lib/esm is a volume (stream checkpoints in sqlite); the only writable path.
# Stop grace period: SIGTERM starts esm's drain: polling stops, in-flight batches finish,
#   checkpoints are written. It lasts up to the longest function timeout + 5 s (bounded by
#   [daemon] drain_timeout). Docker's default grace is 10 s: give `docker run
#   --stop-timeout`, `docker stop -t`, compose's stop_grace_period or Kubernetes'
#   terminationGracePeriodSeconds more than your longest function timeout + 5 s (40 s for a
#   30 s timeout), or SIGKILL cuts batches short (at-least-once: they are delivered again).
# kind = "process" functions start child processes: run with `--init` (or tini) so that
#   orphans are reaped.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY esm ./esm
COPY deploy/install.sh ./deploy/install.sh
RUN sh deploy/install.sh /opt/esm

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/esm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 esm \
    && useradd --system --uid 10001 --gid esm --home-dir /var/lib/esm --no-create-home \
        --shell /usr/sbin/nologin esm \
    && install -d -o esm -g esm -m 0700 /var/lib/esm \
    && install -d -m 0755 /etc/esm
COPY --from=build /opt/esm /opt/esm
USER 10001:10001
WORKDIR /var/lib/esm
VOLUME ["/var/lib/esm"]
EXPOSE 9464
STOPSIGNAL SIGTERM
# /healthz on 127.0.0.1:9464; set ESM_HEALTHCHECK_URL if your http_address uses another port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/esm/bin/esm-healthcheck"]
ENTRYPOINT ["esm"]
CMD ["run", "-c", "/etc/esm/config.toml"]
