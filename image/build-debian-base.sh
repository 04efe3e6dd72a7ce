#!/usr/bin/env bash
# Build a small bootable Debian 13 (trixie) cloud-style qcow2 for regimage's VM tests.
#
# The image boots from its own disk like a real cloud image: a GPT disk with
#   p14  BIOS boot partition (GRUB core.img, for SeaBIOS / legacy boot)
#   p15  EFI system partition (GRUB as \EFI\BOOT\BOOTX64.EFI, for OVMF / UEFI boot)
#   p1   ext4 root, last on the disk so cloud-init's growpart can grow it
# It has systemd, cloud-init (NoCloud from a `cidata` seed ISO works), openssh-server,
# systemd-networkd + systemd-resolved (cloud-init's networkd renderer writes the DHCP config),
# linux-image-cloud-amd64, sudo, curl, ca-certificates, dbus, and NOT podman, nginx, uidmap
# (a later bake installs those). It is cleaned for a first boot: no SSH host keys, machine-id
# "uninitialized", no cloud-init state, no logs, no apt lists.
#
# Nothing is mounted and no loop device is used: mmdebstrap writes a directory, mkfs.ext4 -d
# and mkfs.vfat + mcopy make the filesystems as files, sfdisk partitions the disk file, and the
# filesystems and GRUB's boot code are written into it with dd. GRUB comes from the host's
# grub-pc-bin / grub-efi-amd64-bin (grub-mkimage with every needed module built in and a small
# embedded config that finds the root filesystem by UUID), so the guest needs no grub package.
#
# Usage: build-debian-base.sh [--force] [--print-path]
#   --print-path  print the cached qcow2's path (built or not) and exit
#   --force       rebuild even if the cache entry exists (same as REGIMAGE_TEST_REBUILD=1)
# Needs root (mmdebstrap in root mode, chroot). Output:
#   $REGIMAGE_TEST_CACHE/debian-base-<key>/debian-13-base.qcow2  (+ build-info.txt, packages.txt)
set -euo pipefail
LOG_TAG=debian-base
# shellcheck source=image/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SUITE=trixie
MIRROR="${REGIMAGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${REGIMAGE_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
DISK_SIZE_MIB=2048       # virtual disk size; grow the overlay and growpart does the rest
BIOS_START=2048          # sectors (512 B): p14, 1 MiB
BIOS_SECTORS=2048
ESP_START=4096           # p15, 32 MiB FAT
ESP_SECTORS=65536
ROOT_START=69632         # p1 at 34 MiB, to the end of the disk
# Kernel command line: serial console last so systemd and the login prompt go to ttyS0.
CMDLINE="ro console=tty0 console=ttyS0,115200n8"

PACKAGES=(
  linux-image-cloud-amd64 systemd-sysv udev dbus systemd-resolved libnss-myhostname
  libpam-systemd cloud-init cloud-guest-utils openssh-server sudo curl ca-certificates
  e2fsprogs iproute2 netbase procps zstd
)
# GRUB modules built into core.img / BOOTX64.EFI (no module directory in the image).
GRUB_MODS_COMMON="part_gpt part_msdos ext2 fat search search_fs_uuid search_label normal
  configfile linux boot echo test serial terminal minicmd ls cat halt reboot sleep gzio"
GRUB_MODS_BIOS="biosdisk"
GRUB_MODS_EFI="efi_gop efi_uga all_video"

OUT_NAME=debian-13-base.qcow2
DIR="$(cache_dir debian-base "$IMAGE_DIR/lib.sh" "$IMAGE_DIR/build-debian-base.sh")"
OUT="$DIR/$OUT_NAME"

force="${REGIMAGE_TEST_REBUILD:-}"
for a in "$@"; do
  case "$a" in
    --print-path) echo "$OUT"; exit 0 ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) die "unknown argument: $a" ;;
  esac
done

if [ -z "$force" ] && [ -f "$OUT" ]; then
  log "cached: $OUT"
  echo "$OUT"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap root mode, chroot)"
need mmdebstrap jq sfdisk mkfs.ext4 mkfs.vfat mcopy mmd grub-mkimage qemu-img
[ -f /usr/lib/grub/i386-pc/boot.img ] || die "apt-get install grub-pc-bin"
[ -d /usr/lib/grub/x86_64-efi ] || die "apt-get install grub-efi-amd64-bin"

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.debian-base.lock"
flock 9
if [ -z "$force" ] && [ -f "$OUT" ]; then echo "$OUT"; exit 0; fi

WORK="$(mktemp -d "$CACHE_ROOT/.debian-base.XXXXXX")"
cleanup() {
  # If mmdebstrap died with its chroot mounts (/proc, /sys, /dev) still in place, unmount
  # them first; never let rm cross into another filesystem.
  awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
R="$WORK/rootfs"
t_all="$(now)"

# ---------------------------------------------------------------------------------------------
# 1. Root filesystem tree with mmdebstrap (root mode, output = directory).
cat >"$WORK/sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

# fstab and FSTYPE go in before the kernel is installed, so that the initramfs gets fsck.ext4
# for the root filesystem (initramfs-tools would probe the root device, which a chroot lacks).
ROOT_UUID="$(cat /proc/sys/kernel/random/uuid)"
cat >"$WORK/fstab" <<EOF
# <file system> <mount point> <type> <options> <dump> <pass>
UUID=$ROOT_UUID / ext4 rw,discard,errors=remount-ro 0 1
EOF

log "mmdebstrap $SUITE (${#PACKAGES[@]} packages + minbase) ..."
t="$(now)"
# Docs, man pages and translations are left out (the dpkg config stays in the image, so later
# installs leave them out too); copyright files are kept.
# shellcheck disable=SC2016 # the hooks' $1 is expanded by mmdebstrap's hook shell
mmdebstrap --variant=minbase --mode=root \
  --include="$(IFS=,; echo "${PACKAGES[*]}")" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --essential-hook="cp '$WORK/fstab' \"\$1/etc/fstab\"" \
  --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" && echo FSTYPE=ext4 >"$1/etc/initramfs-tools/conf.d/fstype"' \
  "$SUITE" "$R" "$WORK/sources" >"$WORK/mmdebstrap.log" 2>&1 \
  || { tail -n 40 "$WORK/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
T_MMDEBSTRAP="$(elapsed "$t")"
log "mmdebstrap done in ${T_MMDEBSTRAP}s"

# ---------------------------------------------------------------------------------------------
# 2. Configure and clean the tree for a first boot.
t="$(now)"
ESP_ID="$(od -An -tx4 -N4 /dev/urandom | tr -d ' \n')"
KVER="$(basename "$(readlink -f "$R/vmlinuz")" | sed 's/^vmlinuz-//')"
{ [ -f "$R/boot/vmlinuz-$KVER" ] && [ -f "$R/boot/initrd.img-$KVER" ]; } || die "no kernel/initrd in the tree"

echo debian >"$R/etc/hostname"

# apt sources as a trixie install writes them (the guest's keyring is the .pgp one).
rm -f "$R"/etc/apt/sources.list.d/0000sources.sources "$R/etc/apt/sources.list"
sed 's#/usr/share/keyrings/debian-archive-keyring.gpg#/usr/share/keyrings/debian-archive-keyring.pgp#' \
  "$WORK/sources" >"$R/etc/apt/sources.list.d/debian.sources"
[ -f "$R/usr/share/keyrings/debian-archive-keyring.pgp" ] \
  || sed -i 's#debian-archive-keyring.pgp#debian-archive-keyring.gpg#' "$R/etc/apt/sources.list.d/debian.sources"

# GRUB's menu; the kernel/initrd symlinks in / follow kernel upgrades.
mkdir -p "$R/boot/grub"
cat >"$R/boot/grub/grub.cfg" <<EOF
# Written by regimage image/build-debian-base.sh (no grub package in the image).
set default=0
set timeout=0
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
search --no-floppy --fs-uuid --set=root $ROOT_UUID
menuentry 'Debian GNU/Linux 13 (trixie)' {
  linux /vmlinuz root=UUID=$ROOT_UUID $CMDLINE
  initrd /initrd.img
}
EOF

# cloud-init on trixie renders network config for systemd-networkd when neither ifupdown nor
# netplan is installed; networkd must be enabled for that (Debian does not enable it).
chroot "$R" systemctl enable systemd-networkd.service systemd-resolved.service >/dev/null 2>&1
[ -L "$R/etc/systemd/system/multi-user.target.wants/systemd-networkd.service" ] \
  || die "systemd-networkd was not enabled"

# First-boot cleanliness.
rm -f "$R"/etc/ssh/ssh_host_*
rm -rf "$R"/var/lib/cloud/* "$R"/var/log/cloud-init*
printf 'uninitialized\n' >"$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id" "$R/var/lib/systemd/random-seed" "$R/var/lib/systemd/credential.secret"
find "$R/var/log" -type f -delete
rm -f "$R"/var/cache/debconf/*-old "$R"/var/lib/dpkg/*-old "$R/etc/machine-info"
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/root/.bash_history
mkdir -p "$R/var/lib/apt/lists/partial"
# shellcheck disable=SC2016 # dpkg-query's format string, not the shell's
chroot "$R" dpkg-query -W -f='${Package}\t${Version}\n' >"$WORK/packages.txt"
T_CONFIG="$(elapsed "$t")"

# ---------------------------------------------------------------------------------------------
# 3. Disk assembly, as files only.
log "assembling the disk ..."
t="$(now)"
DISK="$WORK/disk.raw"
truncate -s "${DISK_SIZE_MIB}M" "$DISK"
sfdisk --quiet --no-reread --no-tell-kernel "$DISK" <<EOF
label: gpt
unit: sectors
first-lba: 2048
${DISK}1 : start=$ROOT_START, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
${DISK}14 : start=$BIOS_START, size=$BIOS_SECTORS, type=21686148-6449-6E6F-744E-656564454649, name="bios"
${DISK}15 : start=$ESP_START, size=$ESP_SECTORS, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"
EOF
ROOT_SECTORS="$(sfdisk -J "$DISK" | jq -r --arg n "${DISK}1" '.partitiontable.partitions[] | select(.node == $n) | .size')"
{ [ -n "$ROOT_SECTORS" ] && [ "$ROOT_SECTORS" -gt 0 ]; } || die "could not read the root partition's size"

# Root filesystem from the tree (root-owned files, xattrs and hard links are kept).
mkfs.ext4 -q -F -L root -U "$ROOT_UUID" -d "$R" "$WORK/root.img" "$((ROOT_SECTORS / 2))k" >/dev/null
dd if="$WORK/root.img" of="$DISK" bs=1M seek=$((ROOT_START / 2048)) conv=notrunc,sparse status=none
rm -f "$WORK/root.img"

# GRUB: the same embedded config for BIOS and UEFI finds the root filesystem and loads its grub.cfg.
cat >"$WORK/early.cfg" <<EOF
search --no-floppy --fs-uuid --set=root $ROOT_UUID
set prefix=(\$root)/boot/grub
EOF
# shellcheck disable=SC2086
grub-mkimage -O i386-pc -o "$WORK/core.img" -c "$WORK/early.cfg" -p /boot/grub \
  $GRUB_MODS_BIOS $GRUB_MODS_COMMON
# shellcheck disable=SC2086
grub-mkimage -O x86_64-efi -o "$WORK/BOOTX64.EFI" -c "$WORK/early.cfg" -p /boot/grub \
  $GRUB_MODS_EFI $GRUB_MODS_COMMON
core_size="$(stat -c %s "$WORK/core.img")"
[ "$core_size" -le $((BIOS_SECTORS * 512)) ] || die "core.img ($core_size B) does not fit the BIOS boot partition"

# BIOS: what grub-setup would do, by hand. core.img goes into p14; its first sector
# (diskboot.img) has a blocklist whose start (offset 0x1f4, 8 bytes) defaults to sector 2:
# point it at the sector after p14's first. boot.img goes into the MBR's first 440 bytes,
# with the LBA of core.img at 0x5c and the boot-drive check at 0x66 replaced by two NOPs
# (grub-setup does that for hard disks). The partition table area is left alone.
le64 $((BIOS_START + 1)) | put_bytes "$WORK/core.img" $((0x1f4))
dd if="$WORK/core.img" of="$DISK" bs=512 seek="$BIOS_START" conv=notrunc status=none
cp /usr/lib/grub/i386-pc/boot.img "$WORK/boot.img"
le64 "$BIOS_START" | put_bytes "$WORK/boot.img" $((0x5c))
printf '\x90\x90' | put_bytes "$WORK/boot.img" $((0x66))
dd if="$WORK/boot.img" of="$DISK" bs=440 count=1 conv=notrunc status=none

# UEFI: a FAT ESP with the removable-media path.
mkfs.vfat -C -n EFI -i "$ESP_ID" "$WORK/esp.img" $((ESP_SECTORS / 2)) >/dev/null
mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$WORK/esp.img" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
dd if="$WORK/esp.img" of="$DISK" bs=512 seek="$ESP_START" conv=notrunc status=none

sfdisk --verify "$DISK" >/dev/null || die "sfdisk --verify failed"

# qcow2, compressed (zlib: readable by any qemu). Overlays made with -b read it fine.
mkdir -p "$WORK/out"
qemu-img convert -f raw -O qcow2 -c "$DISK" "$WORK/out/$OUT_NAME"
rm -f "$DISK"
T_ASSEMBLY="$(elapsed "$t")"

# ---------------------------------------------------------------------------------------------
tree_kib="$(du -sk "$R" | cut -f1)"
qcow_bytes="$(stat -c %s "$WORK/out/$OUT_NAME")"
mv "$WORK/packages.txt" "$WORK/out/packages.txt"
cp "$WORK/mmdebstrap.log" "$WORK/out/mmdebstrap.log"
cat >"$WORK/out/build-info.txt" <<EOF
image=$OUT_NAME
recipe_key=$(basename "$DIR" | sed 's/^debian-base-//')
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
suite=$SUITE
kernel=$KVER
root_fs_uuid=$ROOT_UUID
default_user=debian
virtual_size_mib=$DISK_SIZE_MIB
tree_kib=$tree_kib
qcow2_bytes=$qcow_bytes
packages_installed=$(wc -l <"$WORK/out/packages.txt")
seconds_mmdebstrap=$T_MMDEBSTRAP
seconds_configure=$T_CONFIG
seconds_assembly=$T_ASSEMBLY
seconds_total=$(elapsed "$t_all")
EOF
rm -rf "$DIR"
mv "$WORK/out" "$DIR"
log "$(tr '\n' ' ' <"$DIR/build-info.txt")"
log "done: $OUT ($((qcow_bytes / 1048576)) MiB, tree $((tree_kib / 1024)) MiB)"
echo "$OUT"
