# shellcheck shell=bash
# Shared helpers for the test-input recipes in image/. Sourced, not run.
#
# Every recipe caches its output OUTSIDE the repository, in
#   ${REGIMAGE_TEST_CACHE:-/var/cache/regimage-test}/<name>-<key>/
# where <key> is a hash of the recipe files (this file plus the recipe itself), so editing a
# recipe makes a new entry and an unchanged recipe is never rebuilt (REGIMAGE_TEST_REBUILD=1
# or --force rebuilds). Upstream package updates alone do not change the key: a cached input
# stays what it was until the recipe changes.

set -euo pipefail

# shellcheck disable=SC2034 # used by the scripts that source this file
IMAGE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${REGIMAGE_TEST_CACHE:-/var/cache/regimage-test}"

log() { printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "${LOG_TAG:-image}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# now: seconds since the epoch with a fraction, for timings.
now() { date +%s.%N; }
# elapsed START: seconds since START, one decimal.
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# recipe_key FILE...: 16 hex digits of sha256 over each file's name and content.
recipe_key() {
  local f
  for f in "$@"; do
    printf '%s\0' "$(basename "$f")"
    cat "$f"
    printf '\0'
  done | sha256sum | cut -c1-16
}

# cache_dir NAME FILE...: the cache directory for NAME keyed by the given recipe files.
cache_dir() {
  local name="$1"; shift
  printf '%s/%s-%s\n' "$CACHE_ROOT" "$name" "$(recipe_key "$@")"
}

# need CMD...: fail with the Debian package to install when a tool is missing.
need() {
  local c pkg missing=()
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 && continue
    case "$c" in
      mmdebstrap) pkg=mmdebstrap ;;
      sfdisk) pkg=fdisk ;;
      mkfs.ext4) pkg=e2fsprogs ;;
      mkfs.vfat) pkg=dosfstools ;;
      mcopy|mmd) pkg=mtools ;;
      grub-mkimage) pkg="grub-common grub-pc-bin grub-efi-amd64-bin" ;;
      qemu-img) pkg=qemu-utils ;;
      qemu-system-x86_64) pkg="qemu-system-x86 qemu-utils" ;;
      genisoimage) pkg=genisoimage ;;
      ssh|ssh-keygen) pkg=openssh-client ;;
      skopeo) pkg=skopeo ;;
      jq) pkg=jq ;;
      zstd) pkg=zstd ;;
      *) pkg="(the package providing $c)" ;;
    esac
    missing+=("$c: apt-get install $pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    printf 'missing tool %s\n' "${missing[@]}" >&2
    die "install the packages listed in image/README.md"
  fi
}

# le64 N: N as 8 little-endian bytes on stdout.
le64() {
  local v="$1" i
  for i in 0 1 2 3 4 5 6 7; do
    # shellcheck disable=SC2059
    printf "\\x$(printf %02x $(((v >> (8 * i)) & 255)))"
  done
}

# put_bytes FILE OFFSET: copy stdin over FILE at byte OFFSET without truncating it.
put_bytes() {
  dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
