#!/usr/bin/env bash
# System packages the project needs beyond Python: ffmpeg/ffprobe (media pipeline).
# Idempotent: does nothing when they are already on PATH.
set -euo pipefail

missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && SUDO="sudo" || { echo "need root (or sudo) to apt-get install ffmpeg" >&2; exit 1; }
  fi
  echo "installing ffmpeg (apt-get)..." >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
else
  echo "ffmpeg/ffprobe not found and apt-get is unavailable: install ffmpeg >= 5 with your package manager" >&2
  exit 1
fi
