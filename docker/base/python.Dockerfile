# avs-local/python:3.11-bookworm: a stand-in for python:3.11-slim-bookworm built from Debian packages only.
# Built by scripts/make-base-images.sh (FROM avs-local/debian:bookworm, itself made with debootstrap).
# Differences from the official image: Debian's CPython 3.11.2 in /usr/bin (not 3.11.x in /usr/local) and
# Debian's pip 23.0; `python`, `pip` and `python -m venv` work as there.
ARG DEBIAN_IMAGE=avs-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
LABEL org.opencontainers.image.description="Python 3.11 on Debian bookworm from Debian packages (local base image)"
ENV LANG=C.UTF-8
# Not pinned: this base image follows bookworm's current point release and security updates (rebuild it
# with `scripts/make-base-images.sh --force`); the project's own Dockerfiles pin what they install.
# The official image has no EXTERNALLY-MANAGED marker (PEP 668): drop Debian's so that a Dockerfile that
# runs `pip install` outside a venv builds on both.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates python3 python3-venv python3-pip python-is-python3 \
    && rm -rf /var/lib/apt/lists/* \
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED \
    && python -m venv /tmp/venv-check && /tmp/venv-check/bin/pip --version && rm -rf /tmp/venv-check
CMD ["python3"]
