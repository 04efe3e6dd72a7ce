#!/bin/sh
# regimage, first in runcmd: undoes lean-install.sh.
#   sh -c "$script" regimage-lean-install-done APT_CONF
set -eu
c=/etc/initramfs-tools/update-initramfs.conf
rm -f "$1" "$1.tmp"
while grep -q " $c " /proc/self/mountinfo; do umount "$c"; done
