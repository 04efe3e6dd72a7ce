#!/usr/bin/env bash
# Builds Garage (the S3-compatible object store the S3-storage tests run on loopback, issue 12)
# once per machine into the test cache, as image/'s recipes cache their outputs:
#   ${REGIMAGE_TEST_CACHE:-/var/cache/regimage-test}/garage-<version>/bin/garage
# with `cargo install garage --locked --no-default-features --features bundled-libs,lmdb`
# (lmdb: the one metadata engine the tests use; no sqlite, k2v, metrics or telemetry;
# bundled-libs: garage's main.rs refuses to build without it or system-libs). The build goes
# to a temporary root beside it that is renamed into place at the end, so a killed build
# leaves no half cache entry. Exits at once when the cached binary is there and runs.
# GARAGE_TARGET_DIR: a cargo target dir to build in and keep (say a failed build's, to resume
# it); by default a temporary one, removed after.
# Slow the first time (about 30 minutes on 2 shared cores); never again after.
#
# One build at a time (a lock in the cache): a second call waits for the first and then
# finds the binary. `make test` starts it with --background at the beginning, so the build
# overlaps lint and the unit tests' compile; `make garage` (before the tests that use it)
# then waits for it, or builds in the foreground if the background build failed.
#
# Usage: build-garage.sh [--force] [--print-path] [--background]
#   --print-path   print where the binary is (built or not) and exit
#   --force        build again (also REGIMAGE_TEST_REBUILD=1)
#   --background   build detached (nice 10, log in the cache's garage-build.log) and return
set -euo pipefail
LOG_TAG=garage
# shellcheck source=image/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../image/lib.sh"

GARAGE_VERSION=2.5.0
DIR="$CACHE_ROOT/garage-$GARAGE_VERSION"
BIN="$DIR/bin/garage"

force="${REGIMAGE_TEST_REBUILD:-}"
background=""
for a in "$@"; do
  case "$a" in
    --print-path) echo "$BIN"; exit 0 ;;
    --force) force=1 ;;
    --background) background=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) die "unknown argument: $a" ;;
  esac
done

# works: the cached binary runs and is the version wanted.
works() { [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -qF "$GARAGE_VERSION"; }

if [ -z "$force" ] && works; then
  exit 0
fi
need cargo

mkdir -p "$CACHE_ROOT"
if [ -n "$background" ]; then
  log "building Garage in the background; log: $CACHE_ROOT/garage-build.log"
  nohup nice -n 10 "$0" ${force:+--force} >"$CACHE_ROOT/garage-build.log" 2>&1 </dev/null &
  exit 0
fi
exec 9>"$CACHE_ROOT/.garage.lock"
if ! flock -n 9; then
  log "waiting for another Garage build (log: $CACHE_ROOT/garage-build.log)"
  flock 9
fi
# The build this one waited for may have made it.
if [ -z "$force" ] && works; then
  exit 0
fi
WORK="$(mktemp -d "$CACHE_ROOT/.garage-$GARAGE_VERSION.XXXXXX")"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

log "building Garage $GARAGE_VERSION into $DIR (cargo install; about 30 minutes on 2 cores)"
start="$(now)"
# The crate's own Cargo.lock (--locked). opt-level 1: Garage is a test fixture here, and
# the first build is on every fresh CI machine's critical path; O1 spends far less of it in
# LLVM than release's O3 (GARAGE_OPT_LEVEL=3 for throughput figures).
CARGO_PROFILE_RELEASE_OPT_LEVEL="${GARAGE_OPT_LEVEL:-1}" \
CARGO_TARGET_DIR="${GARAGE_TARGET_DIR:-$WORK/target}" cargo install garage \
  --version "$GARAGE_VERSION" --locked --no-default-features --features bundled-libs,lmdb \
  --root "$WORK/root"
rm -rf "$WORK/target"
"$WORK/root/bin/garage" --version >/dev/null || die "the built garage does not run"

rm -rf "$DIR"
mv "$WORK/root" "$DIR"
works || die "$BIN does not report $GARAGE_VERSION"
log "built $("$BIN" --version) in $(elapsed "$start") s: $BIN"
