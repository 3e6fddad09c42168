#!/usr/bin/env bash
# System packages the project needs beyond Python: ffmpeg/ffprobe (media pipeline) and redis-server (the
# embedded default's private broker, which `avs serve` starts itself). Idempotent: does nothing when they
# are already on PATH.
set -euo pipefail

missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && SUDO="sudo" || { echo "need root (or sudo) to apt-get install $packages" >&2; exit 1; }
  fi
  echo "installing $packages(apt-get)..." >&2
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086  # one word per package
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $packages >/dev/null
  # Debian's package starts a system-wide Redis on port 6379 where systemd runs; `avs serve` needs none of it
  # (it starts a private one), and the tests start their own where they need one.
else
  echo "not found: $packages; apt-get is unavailable: install ffmpeg >= 5 and redis-server >= 6 with your package manager" >&2
  exit 1
fi
