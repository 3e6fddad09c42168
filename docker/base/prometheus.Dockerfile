# avs-local/prometheus:2: a stand-in for prom/prometheus:v2 built from Debian bookworm's prometheus (2.42).
# Built by scripts/make-base-images.sh (FROM avs-local/debian:bookworm). As in the official image: runs
# as nobody (65534), storage in /prometheus, config at /etc/prometheus/prometheus.yml, ENTRYPOINT prometheus;
# wget is there for the compose healthcheck. Debian's build serves the classic web UI (from packaged
# JavaScript) instead of the React one. libjs-moment-timezone's historical data (/data, ~210 MB, unused by
# the UI) is not unpacked.
ARG DEBIAN_IMAGE=avs-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
LABEL org.opencontainers.image.description="Prometheus 2 from Debian bookworm packages (local base image)"
# Not pinned: this base image follows bookworm's current point release and security updates (rebuild it
# with `scripts/make-base-images.sh --force`).
# hadolint ignore=DL3008
RUN echo 'path-exclude=/usr/share/javascript/moment-timezone/data/*' >/etc/dpkg/dpkg.cfg.d/avs-excludes \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus wget ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o nobody -g nogroup -m 0755 /prometheus
USER 65534:65534
EXPOSE 9090
VOLUME ["/prometheus"]
WORKDIR /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
