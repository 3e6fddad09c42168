#!/usr/bin/env bash
# The tests' S3-compatible object store (issue #25): OpenStack Swift from Debian's packages, run by
# worker/core/objects/swift_server.py with its s3api middleware. Idempotent.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
if command -v swift-ring-builder >/dev/null 2>&1 && [ -f /usr/lib/python3/dist-packages/swift/proxy/server.py ] \
   && [ -f /usr/lib/python3/dist-packages/swift/obj/server.py ]; then
  exit 0
fi
command -v apt-get >/dev/null 2>&1 || { echo "apt-get unavailable: install OpenStack Swift yourself" >&2; exit 1; }
echo "installing OpenStack Swift (swift-proxy, -object, -container, -account)..." >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  swift swift-proxy swift-object swift-container swift-account >/dev/null
