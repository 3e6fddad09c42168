# avs-local/redis:7: a stand-in for redis:7 built from Debian bookworm's redis-server (7.0).
# Built by scripts/make-base-images.sh (FROM avs-local/debian:bookworm). As in the official image: user
# redis (uid/gid 999, so a volume written by either image stays usable), data in /data (the working
# directory, where --appendonly writes), protected mode off, and `docker run IMAGE --appendonly yes` works.
ARG DEBIAN_IMAGE=avs-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
LABEL org.opencontainers.image.description="Redis from Debian bookworm packages (local base image)"
# Not pinned: this base image follows bookworm's current point release and security updates (rebuild it
# with `scripts/make-base-images.sh --force`).
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 redis \
    && useradd --system --uid 999 --gid redis --home-dir /var/lib/redis --no-create-home --shell /usr/sbin/nologin redis \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o redis -g redis -m 0755 /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /data
WORKDIR /data
USER 999:999
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
