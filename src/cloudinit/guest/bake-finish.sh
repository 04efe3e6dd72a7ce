#!/bin/sh
# regimage bake: regimage-bake-finish.service, queued by bootcmd. Runs once cloud-init has
# finished; resets the image for its real first boot, then powers the VM off. It lives on
# /run, so it is not part of the image.
#
# Every REGIMAGE_* variable read below is set by regimage (src/cloudinit/bake.rs) with
# systemd-run --setenv. Progress and failure lines start with REGIMAGE_BAKE_PREFIX; the
# host accepts the image only after the REGIMAGE_BAKE_DONE line and a clean power-off.
set -u
prefix=$REGIMAGE_BAKE_PREFIX
failed=$REGIMAGE_BAKE_FAILED
done_step=$REGIMAGE_BAKE_DONE
payload_done=$REGIMAGE_PAYLOAD_DONE
dpkg_cfg=$REGIMAGE_BAKE_DPKG_CFG
man_db_auto_update=$REGIMAGE_BAKE_MAN_DB_AUTO_UPDATE
man_db_marker=$REGIMAGE_BAKE_MAN_DB_MARKER
lean_apt_conf=$REGIMAGE_LEAN_APT_CONF

say() { echo "$prefix$*"; }
fail() {
  say "$failed: $*"
  cloud-init status --long 2>&1 || true
  echo '--- end of /var/log/cloud-init-output.log ---'
  tail -n 40 /var/log/cloud-init-output.log 2>&1 || true
  sync
  systemctl poweroff
  exit 1
}
cloud-init status --wait >/dev/null 2>&1
rc=$?
# 0: done; 2: done with recoverable errors (deprecation warnings and the like).
case "$rc" in
  0) ;;
  2) say "warning: cloud-init reported recoverable errors"
     cloud-init status --long 2>&1 || true ;;
  *) fail "cloud-init finished with errors (cloud-init status exit $rc)" ;;
esac
test -f "$payload_done" || fail "the payload script did not run to its end"
say "resetting the image for its first boot"
# The bake's own shortcuts (bake-fast-dpkg.sh) do not stay in the image.
rm -f "$dpkg_cfg"
if [ -e "$man_db_marker" ]; then : > "$man_db_auto_update"; fi
# --configs network drops the bake NIC's network config (cloud-init >= 24.1).
cloud-init clean --logs --machine-id --seed --configs network \
  || cloud-init clean --logs --machine-id --seed \
  || fail "cloud-init clean failed"
# Host-unique files: SSH host keys, the ssl-cert package's snakeoil pair, systemd's random
# seed and credential secret; each machine makes its own. systemd-random-seed.service
# saves a new seed when it stops: stopped now, it does not write one at power-off.
systemctl stop systemd-random-seed.service >/dev/null 2>&1 || true
rm -f /etc/ssh/ssh_host_* /etc/ssl/private/ssl-cert-snakeoil.key \
  /etc/ssl/certs/ssl-cert-snakeoil.pem /var/lib/systemd/random-seed \
  /var/lib/systemd/credential.secret
test -L /var/lib/dbus/machine-id || rm -f /var/lib/dbus/machine-id
apt-get clean
rm -rf /var/lib/apt/lists/*
# The bake's journal (its machine-id's directory): journald writes to /run from here on.
journalctl --relinquish-var >/dev/null 2>&1 || true
rm -rf /var/log/journal/*
left=$(find /etc /root /var/lib/regimage -xdev -type f \( -name 'ssh_host_*' -o -name '*.key' \
  -o -path '/etc/ssl/private/*' -o -path '/etc/registry/certs/*' \) 2>/dev/null)
test -z "$left" || fail "key or certificate files are left in the image: $left"
test ! -e "$dpkg_cfg" || fail "$dpkg_cfg is left in the image"
test ! -e "$lean_apt_conf" || fail "$lean_apt_conf is left in the image"
grep -qx uninitialized /etc/machine-id || fail "/etc/machine-id is not 'uninitialized'"
test ! -e /var/lib/cloud/instance || fail "cloud-init state is left in /var/lib/cloud"
# Discarded blocks stay out of the output image.
fstrim --all >/dev/null 2>&1 || true
sync
say "$done_step"
systemctl poweroff
