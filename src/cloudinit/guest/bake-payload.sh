#!/bin/sh
# regimage bake, in cloud-init's runcmd of the throwaway VM: check the packages, disable the
# distribution's nginx, copy the registry image archive and the regimage binary from the
# payload drive (each checked against its sha256), and enable first boot without starting it.
#
#   env REGIMAGE_...=... sh -c "$script" regimage-bake-payload PACKAGE...
#
# Every REGIMAGE_* variable read below is set by regimage (src/cloudinit/bake.rs). Progress
# and failure lines start with REGIMAGE_BAKE_PREFIX: the host shows them while it waits.
set -eu
prefix=$REGIMAGE_BAKE_PREFIX
failed=$REGIMAGE_BAKE_FAILED
unit=$REGIMAGE_FIRSTBOOT_UNIT
nginx=$REGIMAGE_NGINX_UNIT
device=$REGIMAGE_PAYLOAD_DEVICE

say() { echo "$prefix$*"; }
fail() {
  say "$failed: $*"
  exit 1
}
on_exit() {
  if [ "$1" -ne 0 ]; then say "$failed: the payload script stopped with exit status $1"; fi
}
trap 'on_exit "$?"' EXIT

# copy_from_drive OFFSET SIZE SHA256 DEST MODE WHAT: DEST (root-owned, MODE) from SIZE bytes
# of the drive at OFFSET, through DEST.part, checked against SHA256 before the rename.
copy_from_drive() {
  part=$4.part
  # The drive holds each file padded to whole sectors: read exactly its bytes.
  (umask 077; dd if="$device" iflag=skip_bytes,count_bytes skip="$1" count="$2" bs=1M status=none > "$part")
  echo "$3  $part" | sha256sum --check --strict --quiet - \
    || fail "the $6 read from $device does not have sha256 $3"
  chown root:root "$part"
  chmod "$5" "$part"
  mv -f "$part" "$4"
}

say "checking the installed packages"
# dpkg-query prints "no packages found" (no status line) for an unknown name.
# shellcheck disable=SC2016 # dpkg-query's format string, not the shell's
missing=$(dpkg-query -W -f='${db:Status-Status} ${Package}\n' "$@" 2>&1 | grep -v '^installed ' || true)
[ -z "$missing" ] || fail "packages not installed: $missing"

say "disabling $nginx (the proxy is registry-proxy.service)"
# The distribution's nginx starts on install and holds port 80.
systemctl disable --now "$nginx"
# With machine-id `uninitialized` the image's first boot applies the presets: without a
# `disable` line the distribution's nginx would be enabled again.
install -d -m 0755 "${REGIMAGE_PRESET_PATH%/*}"
printf '# regimage: the proxy is registry-proxy.service; first boot runs %s\ndisable %s\nenable %s\n' \
  "$unit" "$nginx" "$unit" > "$REGIMAGE_PRESET_PATH"
install -d -m 0700 -o root -g root "$REGIMAGE_STATE_DIR"
udevadm settle --timeout=60 || true
test -b "$device" || fail "$device is missing"

say "copying the registry image archive from its drive"
copy_from_drive "$REGIMAGE_ARCHIVE_OFFSET" "$REGIMAGE_ARCHIVE_SIZE" "$REGIMAGE_ARCHIVE_SHA256" \
  "$REGIMAGE_ARCHIVE_PATH" 0600 "registry image archive"
say "copying the regimage binary from its drive"
copy_from_drive "$REGIMAGE_BINARY_OFFSET" "$REGIMAGE_BINARY_SIZE" "$REGIMAGE_BINARY_SHA256" \
  "$REGIMAGE_BINARY_PATH" 0755 "regimage binary"

say "enabling $unit for the first boot"
# Proves the binary runs on this distribution's libc before the image is kept.
"$REGIMAGE_BINARY_PATH" --version
systemctl daemon-reload
# Enabled, not started: it runs at the image's real first boot.
systemctl enable "$unit"
touch "$REGIMAGE_PAYLOAD_DONE"
say "payload applied; the image is reset once cloud-init has finished"
