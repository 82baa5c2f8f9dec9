#!/usr/bin/env bash
# Install the system packages the real test node (tests/cluster/node.py) and the image build
# (scripts/build-images.sh) need, from Debian's archive. Idempotent: packages already present are
# not touched and apt is not even updated, so a second run takes well under a second.
#
#   containerd   container runtime with its CRI plugin (the kubelet's runtime endpoint)
#   runc         the OCI runtime containerd starts containers with
#   containernetworking-plugins  bridge, host-local, loopback, portmap CNI plugins (/usr/lib/cni)
#   iptables     kube-proxy programs Service ClusterIPs with it; the bridge plugin uses it too
#   buildah      builds the Dockerfile's targets without a Docker daemon
#   debootstrap  makes the Debian bookworm root filesystem of the local base images
#   busybox-static  the pause (sandbox) image's only binary, statically linked
#   conntrack    kube-proxy flushes stale UDP conntrack entries with it
#
# Needs root (apt-get); prints what it installs. Usage: scripts/install-node-deps.sh [--check]
# --check only reports missing packages (exit 1 if any) and installs nothing.
set -euo pipefail

PACKAGES=(containerd runc containernetworking-plugins iptables buildah debootstrap busybox-static conntrack)

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
    echo "missing packages: ${missing[*]}" >&2
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "install-node-deps: need root to apt-get install ${missing[*]}" >&2
    exit 1
fi
echo "install-node-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: buildah recommends fuse-overlayfs/slirp4netns and containerd nothing we
# need; the vfs/overlay drivers and host networking the build uses come with the packages themselves.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts containerd as a system service on install; the harness runs its own instance with
# its own config and sockets, so the packaged one is stopped where systemd is in charge.
if command -v systemctl >/dev/null && systemctl is-active --quiet containerd 2>/dev/null; then
    systemctl disable --now containerd >/dev/null 2>&1 || true
fi
