#!/bin/sh
# regimage: the packages as an exact list (no Recommends, no translated descriptions),
# without an initramfs rebuild (a bind-mounted copy of its config, gone at any reboot).
# See cloudinit/lean_install.rs.
#   sh -c "$script" regimage-lean-install APT_CONF RUN_DIR
set -eu
c=/etc/initramfs-tools/update-initramfs.conf
install -d -m 0700 "$2"
printf 'APT::Install-Recommends "false";\nAcquire::Languages "none";\n' > "$1.tmp"
mv -f "$1.tmp" "$1"
if [ -f "$c" ] && ! grep -q " $c " /proc/self/mountinfo; then
  { grep -v '^update_initramfs=' "$c"; echo update_initramfs=no; } > "$2/update-initramfs.conf"
  mount --bind "$2/update-initramfs.conf" "$c"
fi
