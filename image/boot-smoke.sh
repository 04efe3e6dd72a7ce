#!/usr/bin/env bash
# Boot the Debian base image once, the way a user would, and check it came up clean.
#
# - a copy-on-write overlay of the cached base (qemu-img create -b), grown to OVERLAY_SIZE so
#   cloud-init's growpart is exercised
# - a NoCloud seed ISO (volid cidata) with only an SSH public key (made in a temp dir) and an
#   instance-id
# - qemu-system-x86_64 under TCG (KVM is broken on these machines), serial console to a log,
#   user networking with only hostfwd=tcp:127.0.0.1:HPORT-:22 (restrict=on by default: the guest
#   gets DHCP from QEMU but cannot reach anything else)
# - waits (bounded) for SSH, runs `cloud-init status --wait` and
#   `systemctl is-system-running --wait`, prints timings and facts, powers off.
#
# Usage: boot-smoke.sh [IMAGE]       (default: the cached base from build-debian-base.sh)
# Environment:
#   FIRMWARE=bios|uefi      SeaBIOS (default) or OVMF
#   SSH_TIMEOUT=600         seconds to wait for SSH
#   OVERLAY_SIZE=3G         virtual size of the overlay (the base is 2 GiB)
#   HPORT=                  host port for SSH (default: a free one)
#   SMOKE_NET_RESTRICT=on   QEMU user-net restrict=on|off
#   SMOKE_LOG_DIR=          where serial.log and the report go
#                           (default: $REGIMAGE_TEST_CACHE/smoke-logs/<time>)
# Only one VM runs at a time on this machine: a lock in the cache root serialises runs.
set -euo pipefail
LOG_TAG=boot-smoke
# shellcheck source=image/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FIRMWARE="${FIRMWARE:-bios}"
SSH_TIMEOUT="${SSH_TIMEOUT:-600}"
OVERLAY_SIZE="${OVERLAY_SIZE:-3G}"
RESTRICT="${SMOKE_NET_RESTRICT:-on}"
IMAGE="${1:-$("$IMAGE_DIR/build-debian-base.sh" --print-path)}"
[ -f "$IMAGE" ] || die "no base image at $IMAGE (run: make -C image base)"
need qemu-img qemu-system-x86_64 genisoimage ssh ssh-keygen

mkdir -p "$CACHE_ROOT"
LOG_DIR="${SMOKE_LOG_DIR:-$CACHE_ROOT/smoke-logs/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$LOG_DIR"
SERIAL="$LOG_DIR/serial.log"

exec 8>"$CACHE_ROOT/.vm.lock"
if ! flock -n 8; then
  log "another VM run holds $CACHE_ROOT/.vm.lock; waiting ..."
  flock 8
fi

TMP="$(mktemp -d /tmp/regimage-smoke.XXXXXX)"
QEMU_PID=
cleanup() {
  if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
    kill "$QEMU_PID" 2>/dev/null || true
    sleep 1
    kill -9 "$QEMU_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

# --- inputs ---------------------------------------------------------------------------------
qemu-img create -q -f qcow2 -F qcow2 -b "$IMAGE" "$TMP/disk.qcow2" "$OVERLAY_SIZE"
ssh-keygen -q -t ed25519 -N '' -C regimage-smoke -f "$TMP/id_ed25519"
INSTANCE_ID="regimage-smoke-$(od -An -tx4 -N4 /dev/urandom | tr -d ' \n')"
mkdir "$TMP/seed"
printf '#cloud-config\nssh_authorized_keys:\n  - %s\n' "$(cat "$TMP/id_ed25519.pub")" >"$TMP/seed/user-data"
printf 'instance-id: %s\n' "$INSTANCE_ID" >"$TMP/seed/meta-data"
genisoimage -quiet -output "$TMP/seed.iso" -volid cidata -joliet -rock \
  "$TMP/seed/user-data" "$TMP/seed/meta-data"

if [ -z "${HPORT:-}" ]; then
  HPORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
fi

fw=()
case "$FIRMWARE" in
  bios) ;;
  uefi)
    code=/usr/share/OVMF/OVMF_CODE_4M.fd vars=/usr/share/OVMF/OVMF_VARS_4M.fd
    [ -f "$code" ] || die "apt-get install ovmf"
    cp "$vars" "$TMP/vars.fd"
    fw=(-drive "if=pflash,format=raw,readonly=on,file=$code" -drive "if=pflash,format=raw,file=$TMP/vars.fd")
    ;;
  *) die "FIRMWARE must be bios or uefi" ;;
esac

# --- boot -----------------------------------------------------------------------------------
log "image:   $IMAGE"
log "booting: firmware=$FIRMWARE, ssh on 127.0.0.1:$HPORT, serial log $SERIAL"
t0="$(now)"
qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu max -m 2048 -smp 1 \
  -nodefaults -display none -no-user-config \
  "${fw[@]}" \
  -drive "file=$TMP/disk.qcow2,format=qcow2,if=virtio" \
  -drive "file=$TMP/seed.iso,format=raw,if=virtio,readonly=on" \
  -netdev "user,id=n0,restrict=$RESTRICT,hostfwd=tcp:127.0.0.1:$HPORT-:22" \
  -device virtio-net-pci,netdev=n0 \
  -device virtio-rng-pci \
  -serial "file:$SERIAL" \
  >"$LOG_DIR/qemu.log" 2>&1 &
QEMU_PID=$!

SSH=(ssh -i "$TMP/id_ed25519" -p "$HPORT" -o IdentitiesOnly=yes -o BatchMode=yes
  -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
  -o ConnectTimeout=10 -o ServerAliveInterval=10 debian@127.0.0.1)

fail() {
  log "FAILED: $*"
  log "last serial lines ($SERIAL):"
  tail -n 30 "$SERIAL" | sed 's/^/    /' >&2 || true
  exit 1
}

deadline=$(($(date +%s) + SSH_TIMEOUT))
until timeout 20 "${SSH[@]}" true 2>/dev/null; do
  kill -0 "$QEMU_PID" 2>/dev/null || { cat "$LOG_DIR/qemu.log" >&2; fail "qemu exited"; }
  [ "$(date +%s)" -lt "$deadline" ] || fail "no SSH within ${SSH_TIMEOUT}s"
  sleep 3
done
T_SSH="$(elapsed "$t0")"
log "SSH up after ${T_SSH}s"

ci_rc=0
ci_out="$(timeout 600 "${SSH[@]}" cloud-init status --wait --long 2>&1)" || ci_rc=$?
T_CI="$(elapsed "$t0")"
log "cloud-init done after ${T_CI}s (exit $ci_rc)"
sys_rc=0
sys_state="$(timeout 300 "${SSH[@]}" systemctl is-system-running --wait 2>&1)" || sys_rc=$?
T_SYS="$(elapsed "$t0")"
log "system state '$sys_state' after ${T_SYS}s"

# Facts about the booted guest, for the report (none of these talks to the network).
timeout 120 "${SSH[@]}" 'set -x
  uname -r; cat /etc/os-release | grep PRETTY
  cat /etc/machine-id; ls /etc/ssh/ | grep host
  systemctl --failed --no-legend
  ls /etc/systemd/network/ /etc/netplan 2>&1
  networkctl --no-pager list; ip -br addr; ip route
  resolvectl status --no-pager | head -n 8
  df -h /; lsblk -o NAME,SIZE,FSTYPE,LABEL,MOUNTPOINTS
  sudo -n true && echo sudo-ok
  cloud-init query ds 2>/dev/null | grep -m1 -i dsname; sudo cloud-init query v1.platform
  sudo grep -h -i -E "warn|error|renderer" /var/log/cloud-init.log | grep -v -i "errors=" | tail -n 15
  dpkg -l podman nginx uidmap 2>&1 | tail -n 3
  systemctl is-enabled ssh.service ssh.socket systemd-networkd.service systemd-resolved.service 2>&1 | tr "\n" " "; echo
  systemd-analyze time; systemd-analyze blame --no-pager | head -n 15
  systemd-analyze critical-chain --no-pager cloud-final.service; uptime' >"$LOG_DIR/guest-facts.txt" 2>&1 || true
sed 's/^/    /' "$LOG_DIR/guest-facts.txt" >&2

log "powering off ..."
timeout 30 "${SSH[@]}" sudo systemctl poweroff >/dev/null 2>&1 || true
for _ in $(seq 1 120); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 1; done
if kill -0 "$QEMU_PID" 2>/dev/null; then
  log "qemu did not exit after poweroff; killing"
else
  wait "$QEMU_PID" 2>/dev/null || true
  QEMU_PID=
fi
T_OFF="$(elapsed "$t0")"

{
  echo "image=$IMAGE"
  echo "firmware=$FIRMWARE"
  echo "instance_id=$INSTANCE_ID"
  echo "seconds_to_ssh=$T_SSH"
  echo "seconds_to_cloud_init_done=$T_CI"
  echo "seconds_to_system_running=$T_SYS"
  echo "seconds_to_poweroff=$T_OFF"
  echo "cloud_init_exit=$ci_rc"
  echo "system_state=$sys_state"
} | tee "$LOG_DIR/report.txt" >&2
printf '%s\n' "$ci_out" | sed 's/^/    cloud-init: /' >&2

[ "$ci_rc" = 0 ] || fail "cloud-init status exit $ci_rc"
[ "$sys_rc" = 0 ] || fail "system is '$sys_state', not running"
log "OK (logs in $LOG_DIR)"
