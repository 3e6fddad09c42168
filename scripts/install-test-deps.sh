#!/usr/bin/env bash
# What the test suite needs beyond `make setup`: promtool (Prometheus config check), Debian's chromium (the
# web page's browser tests; Playwright drives it, nothing is downloaded), nginx (the API behind a path
# prefix), Debian's redis-server (required: every test of the job store starts its own, since Redis is the only
# coordination store, issue #24), OpenStack Swift (the S3 server of the object store tests, issue #25) and a
# Redis server answering on 127.0.0.1:6379 (the end-to-end tests use databases 13-15). Idempotent.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
apt_install() {
  command -v apt-get >/dev/null 2>&1 || { echo "apt-get unavailable: install $* yourself" >&2; exit 1; }
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

command -v promtool >/dev/null 2>&1 || { echo "installing promtool (apt-get prometheus)..." >&2; apt_install prometheus; }
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then echo "installing ${missing[*]}..." >&2; apt_install "${missing[@]}"; fi

"$(dirname "$0")/install-objectstore-deps.sh"  # Swift + s3api: the object store tests' S3 server

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting redis-server on 127.0.0.1:6379" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null
fi
