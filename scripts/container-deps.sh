#!/usr/bin/env bash
# Prepares this machine to build and run Conveyor images without Docker: installs podman, buildah, runc and
# debootstrap, and imports a Debian bookworm base image as docker.io/library/debian:bookworm-slim (no registry
# is reachable here, so the generated Dockerfile's FROM line is satisfied locally).
# Run it as root (these machines and CI run as root; elsewhere: sudo -E, so the cache stays yours): apt-get,
# debootstrap and the image store podman and buildah share as root all need it.
# The base comes from a Debian mirror, DEBIAN_MIRROR (default http://deb.debian.org/debian); images built on it
# install Debian's python3 from the same mirror.
# Idempotent: tools already present are not reinstalled; the debootstrapped root filesystem is kept in
# $CONVEYOR_CACHE (default ~/.cache/conveyor) and the image is imported only when it is missing.
set -euo pipefail
if [[ "$(id -u)" != 0 ]]; then
  echo "container-deps: run as root (or with sudo -E): apt-get, debootstrap and root's image store need it" >&2
  exit 1
fi

CACHE="${CONVEYOR_CACHE:-$HOME/.cache/conveyor}"
ROOTFS="$CACHE/debian-bookworm-rootfs"
IMAGE="docker.io/library/debian:bookworm-slim"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PODMAN=(podman --storage-driver vfs --runtime runc --cgroup-manager=cgroupfs)

missing=()
for tool in podman buildah runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "container-deps: installing podman buildah runc debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap >/dev/null
fi

mkdir -p "$CACHE"
# containers in this sandbox may not raise rlimits: podman's default ulimits would make every run fail
export CONTAINERS_CONF="$CACHE/containers.conf"
printf '[containers]\ndefault_ulimits = []\n' >"$CONTAINERS_CONF"

ready() {
  echo "container-deps: $IMAGE $1; podman and buildah need: export CONTAINERS_CONF=$CONTAINERS_CONF"
}
if "${PODMAN[@]}" image exists "$IMAGE"; then
  ready present
  exit 0
fi
if [[ ! -f "$ROOTFS.complete" ]]; then
  echo "container-deps: debootstrap bookworm into $ROOTFS (once per machine)"
  rm -rf "$ROOTFS.partial"
  debootstrap --variant=minbase bookworm "$ROOTFS.partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  rm -rf "$ROOTFS"
  mv "$ROOTFS.partial" "$ROOTFS"
  touch "$ROOTFS.complete"
fi
# make it what debian:bookworm-slim is: no downloaded .debs, apt lists, docs, man pages or locales, and apt
# configured to keep it that way in every image built on it (the settings Debian's official images ship)
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/*
rm -rf "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/*
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker" <<'CONF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CONF
cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'CONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
echo "container-deps: importing $ROOTFS as $IMAGE"
tar -C "$ROOTFS" -c . | "${PODMAN[@]}" import --quiet - "$IMAGE" >/dev/null
ready ready
