#!/usr/bin/env bash
# What `make deploy-test` needs beyond `make setup`: a Docker engine that answers (Debian's docker.io, its
# dockerd started here when none runs), docker-compose (Debian's 1.29; Compose v2 works the same) and
# debootstrap (local base images where Docker Hub cannot be reached: scripts/make-base-images.sh). Idempotent.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
missing=()
[ -x /usr/sbin/dockerd ] || command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}..." >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=docker
if ! $DOCKER info >/dev/null 2>&1; then
  echo "starting dockerd (log: /tmp/avs-dockerd.log)" >&2
  $SUDO bash -c 'setsid dockerd >/tmp/avs-dockerd.log 2>&1 < /dev/null &'
  for _ in $(seq 1 60); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.5; done
  $DOCKER info >/dev/null
fi
