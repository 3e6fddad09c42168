#!/usr/bin/env bash
# Builds local base images from the Debian bookworm archive only (no Docker Hub), standing in for the
# public images that the Dockerfiles and docker-compose.yml use:
#   avs-local/debian:bookworm        debootstrap --variant=minbase, imported with `docker import`
#   avs-local/python:3.11-bookworm   docker/base/python.Dockerfile      (for python:3.11-slim-bookworm)
#   avs-local/redis:7                docker/base/redis.Dockerfile       (for redis:7)
#   avs-local/prometheus:2           docker/base/prometheus.Dockerfile  (for prom/prometheus:v2)
# There is no Grafana image: Grafana is not packaged by Debian (nor on PyPI or npm).
#
# Usage: sudo scripts/make-base-images.sh [--force] [debian|python|redis|prometheus ...]
#   no name: all four. An image that already exists is skipped unless --force (which rebuilds the named
#   images; `--force` alone rebuilds all). The other images need avs-local/debian:bookworm and build it
#   first when it is missing.
# Environment:
#   DOCKER                 docker CLI (default: docker). Where it has no buildx plugin (Docker >= 23 without
#                          buildx) the classic builder is used; Debian's docker.io 20.10 has BuildKit built in.
#   DEBIAN_MIRROR          default http://deb.debian.org/debian
#   DEBIAN_SECURITY_MIRROR default http://deb.debian.org/debian-security
#   IMAGE_PREFIX           default avs-local
#   EXTRA_CA_CERTS         space-separated PEM files of CAs to trust as well (a TLS-intercepting proxy's, when
#                          PyPI is reached through one): put in /usr/local/share/ca-certificates of the Debian
#                          image; the images that install ca-certificates (python, redis, prometheus) add them
#                          to /etc/ssl/certs. Changing it needs --force.
# Needs root (debootstrap, chroot) and debootstrap.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

DOCKER=${DOCKER:-docker}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
IMAGE_PREFIX=${IMAGE_PREFIX:-avs-local}
SUITE=bookworm

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE_DIR="$REPO_ROOT/docker/base"

DEBIAN_IMAGE="$IMAGE_PREFIX/debian:$SUITE"
declare -A IMAGE=(
    [debian]="$DEBIAN_IMAGE"
    [python]="$IMAGE_PREFIX/python:3.11-$SUITE"
    [redis]="$IMAGE_PREFIX/redis:7"
    [prometheus]="$IMAGE_PREFIX/prometheus:2"
)
ORDER=(debian python redis prometheus)

force=0
selected=()
for arg in "$@"; do
    case "$arg" in
        --force|-f) force=1 ;;
        -h|--help) usage; exit 0 ;;
        debian|python|redis|prometheus) selected+=("$arg") ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done
[ ${#selected[@]} -gt 0 ] || selected=("${ORDER[@]}")

log() { printf '==> %s\n' "$*" >&2; }

if ! "$DOCKER" info >/dev/null 2>&1; then
    echo "cannot reach the Docker daemon with '$DOCKER'" >&2
    exit 1
fi
# BuildKit when the CLI can drive it (buildx plugin, or a pre-23 CLI with it built in); else the classic
# builder, which these Dockerfiles are fine with.
if [ -z "${DOCKER_BUILDKIT:-}" ]; then
    client_major=$("$DOCKER" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
    if "$DOCKER" buildx version >/dev/null 2>&1 || { [[ "$client_major" =~ ^[0-9]+$ ]] && [ "$client_major" -lt 23 ]; }; then
        export DOCKER_BUILDKIT=1
    else
        export DOCKER_BUILDKIT=0
    fi
fi

image_exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

declare -A RESULT=() SECS=()

build_debian() {
    [ "$(id -u)" -eq 0 ] || { echo "building $DEBIAN_IMAGE needs root (debootstrap)" >&2; exit 1; }
    command -v debootstrap >/dev/null || { echo "debootstrap not found (apt-get install debootstrap)" >&2; exit 1; }
    local work rootfs
    work=$(mktemp -d "${TMPDIR:-/var/tmp}/avs-debootstrap.XXXXXX")
    rootfs="$work/rootfs"
    # shellcheck disable=SC2064  # expand $work now
    trap "rm -rf --one-file-system '$work'" EXIT
    log "debootstrap --variant=minbase $SUITE from $DEBIAN_MIRROR"
    debootstrap --variant=minbase --components=main "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

    # APT sources as in the official image: the release, its updates and the security archive.
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $DEBIAN_SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # Container-friendly apt settings, as the official image has: no package cache kept, no translations.
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"

    # Bring in the point-release and security updates that debootstrap (release suite only) left out.
    log "apt-get dist-upgrade in the rootfs ($SUITE-updates, $SUITE-security)"
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    chroot "$rootfs" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get dist-upgrade -y -qq >"$work/upgrade.log" 2>&1 \
        || { tail -n 30 "$work/upgrade.log" >&2; exit 1; }
    chroot "$rootfs" apt-get clean

    # Clean: apt lists and caches, logs, temporary files, host-specific files (Docker provides them).
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
        "$rootfs"/var/lib/dpkg/*-old "$rootfs"/tmp/* "$rootfs"/var/tmp/*
    find "$rootfs/var/log" -type f -delete
    : >"$rootfs/etc/resolv.conf"
    : >"$rootfs/etc/hostname"
    : >"$rootfs/etc/machine-id"
    local ca name n_ca=0
    for ca in ${EXTRA_CA_CERTS:-}; do
        [ -f "$ca" ] || { echo "EXTRA_CA_CERTS: no such file: $ca" >&2; exit 1; }
        name=$(basename "$ca"); name=${name%.pem}; name=${name%.crt}
        install -D -m 0644 "$ca" "$rootfs/usr/local/share/ca-certificates/extra-$name.crt"
        n_ca=$((n_ca + 1))
    done

    log "docker import -> $DEBIAN_IMAGE"
    tar --numeric-owner --xattrs -C "$rootfs" \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . \
        | "$DOCKER" import --change 'CMD ["bash"]' \
            --message "debootstrap --variant=minbase $SUITE $DEBIAN_MIRROR, $n_ca extra CA(s) (scripts/make-base-images.sh)" \
            - "$DEBIAN_IMAGE" >/dev/null
    rm -rf --one-file-system "$work"
    trap - EXIT
}

build_dockerfile() {  # name
    local name=$1
    log "docker build docker/base/$name.Dockerfile -> ${IMAGE[$name]} (DOCKER_BUILDKIT=$DOCKER_BUILDKIT)"
    "$DOCKER" build --network host \
        --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
        -f "$BASE_DIR/$name.Dockerfile" -t "${IMAGE[$name]}" "$BASE_DIR"
}

build_one() {  # name
    local name=$1 image=${IMAGE[$1]} start
    if [ "$force" -eq 0 ] && image_exists "$image"; then
        log "$image exists: skipped (--force rebuilds it)"
        RESULT[$name]=skipped; SECS[$name]=0
        return
    fi
    start=$SECONDS
    if [ "$name" = debian ]; then
        build_debian
    else
        build_dockerfile "$name"
    fi
    SECS[$name]=$((SECONDS - start))
    RESULT[$name]=built
    log "$image built in ${SECS[$name]}s"
}

total_start=$SECONDS
# The Dockerfile images need the Debian image: build it when missing even if not named.
needs_debian=0
for name in "${selected[@]}"; do [ "$name" = debian ] || needs_debian=1; done
if [ "$needs_debian" -eq 1 ] && ! image_exists "$DEBIAN_IMAGE" && [[ " ${selected[*]} " != *" debian "* ]]; then
    selected=(debian "${selected[@]}")
fi
for name in "${ORDER[@]}"; do
    if [[ " ${selected[*]} " == *" $name "* ]]; then
        build_one "$name"
    fi
done

echo
printf '%-34s %-8s %7s %10s\n' IMAGE RESULT SECONDS SIZE
for name in "${ORDER[@]}"; do
    [ -n "${RESULT[$name]:-}" ] || continue
    size=$("$DOCKER" image inspect -f '{{.Size}}' "${IMAGE[$name]}")
    printf '%-34s %-8s %7s %10s\n' "${IMAGE[$name]}" "${RESULT[$name]}" "${SECS[$name]}" \
        "$(numfmt --to=si --suffix=B --format='%.1f' "$size")"
done
echo "total: $((SECONDS - total_start))s"
