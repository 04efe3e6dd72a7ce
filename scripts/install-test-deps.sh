#!/usr/bin/env bash
# Installs what `make test` needs on a Debian machine, and only what is missing: real nginx, the
# Distribution registry, skopeo and curl for the loopback tests; Podman, Docker (docker.io),
# containerd and iproute2 for the real-client tests (tests/clients.rs); cloud-init for the schema check;
# QEMU, mmdebstrap and the disk tools for image/'s recipes and the VM tests; shellcheck for
# `make lint`; clippy and rustfmt. `make test` and .ci/run both call it.
# Prints nothing and changes nothing when everything is there. Installing needs root.
set -euo pipefail

packages=(
  nginx-light docker-registry skopeo curl openssl ca-certificates
  cloud-init python3-yaml systemd genisoimage shellcheck
  qemu-system-x86 mmdebstrap fdisk e2fsprogs dosfstools mtools grub-common grub-pc-bin
  grub-efi-amd64-bin openssh-client jq binutils python3 util-linux
  podman docker.io containerd iproute2
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
rust_components=()
for c in clippy rustfmt; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rust_components+=("$c")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-test-deps: missing Debian packages: ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: installing them needs root: run 'sudo make deps' (or install them with apt-get), then 'make test' again" >&2
    exit 1
  fi
  extra=()
  # qemu-system-x86 (7.2 on Debian 12) must come with the release's own qemu-utils: a
  # preinstalled backported qemu-utils 10 makes apt refuse it ("Breaks: qemu-system-common").
  if printf '%s\n' "${missing[@]}" | grep -qx qemu-system-x86; then
    # shellcheck source=/dev/null
    extra=(--allow-downgrades "qemu-utils/$(. /etc/os-release && echo "$VERSION_CODENAME")")
  fi
  echo "install-test-deps: apt-get install ${missing[*]} (as root)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${extra[@]}" "${missing[@]}" >/dev/null
  echo "install-test-deps: installed ${#missing[@]} packages" >&2
fi

# nginx's package starts its default site on port 80, docker.io and containerd their daemons;
# the tests run their own (in their own network namespaces), so the packaged units stay off.
if [ "$(id -u)" -eq 0 ]; then
  for unit in nginx.service docker.socket docker.service containerd.service; do
    if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
      echo "install-test-deps: disabling the packaged $unit (the tests run their own)" >&2
      systemctl disable --now "$unit" >/dev/null 2>&1 || true
    fi
  done
fi

if [ "${#rust_components[@]}" -gt 0 ]; then
  echo "install-test-deps: rustup component add ${rust_components[*]}" >&2
  rustup component add "${rust_components[@]}"
fi
