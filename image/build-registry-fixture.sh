#!/usr/bin/env bash
# Build the registry fixture: an OCI archive of a stand-in for docker.io/library/registry:2,
# made from Debian's docker-registry package (the CNCF Distribution registry, 2.8.x), which
# cannot be pulled from Docker Hub here.
#
# Layout, as in the official registry:2 image:
#   /bin/registry                          the Distribution binary (Debian's /usr/bin/docker-registry;
#                                          it links only libc)
#   /etc/docker/registry/config.yml        storage filesystem at /var/lib/registry, http :5000
#   /var/lib/registry                      VOLUME
#   EXPOSE 5000/tcp
#   /lib64/ld-linux-x86-64.so.2, /lib/x86_64-linux-gnu/{ld-linux-x86-64.so.2,libc.so.6}
#   /etc/{passwd,group,nsswitch.conf}, /tmp
# The official image's entrypoint is a shell script; this one has no shell, so
#   Entrypoint ["/bin/registry"]  Cmd ["serve", "/etc/docker/registry/config.yml"]
# which runs the same command by default (`podman run IMAGE garbage-collect CONFIG` also works;
# the official image's shortcut `podman run IMAGE CONFIG.yml` does not).
#
# The OCI layout is assembled by hand (tar + gzip -n + sha256sum + jq), deterministically: for
# the same docker-registry and libc6 .debs the layer, config and manifest digests are the same
# on every machine. `skopeo copy --preserve-digests` then writes the oci-archive. The .debs are
# the host's apt candidates (apt-get download), so a rebuild after a Debian update of either
# package gives new digests: tests must read the digests from the files below, never hardcode
# them.
#
# Usage: build-registry-fixture.sh [--force] [--print-path | --print-digest]
# Output in $REGIMAGE_TEST_CACHE/registry-fixture-<key>/:
#   registry-2.oci.tar   oci-archive, one image named $FIXTURE_REF (docker.io/library/registry:2)
#   manifest-digest      sha256:... of the manifest   (skopeo inspect --raw oci-archive:F | sha256sum)
#   config-digest        sha256:... of the config     (the image ID that podman shows)
#   build-info.txt       package versions, sizes, digests
set -euo pipefail
LOG_TAG=registry-fixture
# shellcheck source=image/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FIXTURE_REF="docker.io/library/registry:2"
SOURCE_DATE_EPOCH=0
CREATED="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
OUT_NAME=registry-2.oci.tar
DIR="$(cache_dir registry-fixture "$IMAGE_DIR/lib.sh" "$IMAGE_DIR/build-registry-fixture.sh")"
OUT="$DIR/$OUT_NAME"

force="${REGIMAGE_TEST_REBUILD:-}"
for a in "$@"; do
  case "$a" in
    --print-path) echo "$OUT"; exit 0 ;;
    --print-digest) cat "$DIR/manifest-digest"; exit 0 ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) die "unknown argument: $a" ;;
  esac
done

report() {
  log "archive:         $OUT ($(stat -c %s "$OUT") bytes)"
  log "manifest digest: $(cat "$DIR/manifest-digest")"
  log "config digest:   $(cat "$DIR/config-digest")  (image ID)"
  log "pin as:          ${FIXTURE_REF%:*}@$(cat "$DIR/manifest-digest")"
  echo "$OUT"
}

if [ -z "$force" ] && [ -f "$OUT" ]; then report; exit 0; fi
need skopeo jq
command -v apt-get >/dev/null || die "needs apt-get (Debian) to fetch docker-registry and libc6"

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.registry-fixture.lock"
flock 9
if [ -z "$force" ] && [ -f "$OUT" ]; then report; exit 0; fi

WORK="$(mktemp -d "$CACHE_ROOT/.registry-fixture.XXXXXX")"
CHECK_PID=
cleanup() {
  [ -n "$CHECK_PID" ] && kill "$CHECK_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
t_all="$(now)"

# --- the two packages -------------------------------------------------------------------------
mkdir -p "$WORK/debs" "$WORK/x/registry" "$WORK/x/libc"
(cd "$WORK/debs" && apt-get download -q docker-registry libc6 >/dev/null 2>&1) \
  || (cd "$WORK/debs" && apt-get download docker-registry libc6) \
  || die "apt-get download docker-registry libc6 failed (apt-get update first?)"
REG_DEB="$(ls "$WORK"/debs/docker-registry_*.deb)"
LIBC_DEB="$(ls "$WORK"/debs/libc6_*.deb)"
REG_VERSION="$(dpkg-deb -f "$REG_DEB" Version)"
LIBC_VERSION="$(dpkg-deb -f "$LIBC_DEB" Version)"
dpkg-deb -x "$REG_DEB" "$WORK/x/registry"
dpkg-deb -x "$LIBC_DEB" "$WORK/x/libc"
log "docker-registry $REG_VERSION, libc6 $LIBC_VERSION"

find_one() { find "$1" -name "$2" \( -type f -o -type l \) | head -n1; }
BIN="$WORK/x/registry/usr/bin/docker-registry"
LIBC_SO="$(find_one "$WORK/x/libc" libc.so.6)"
LD_SO="$(find_one "$WORK/x/libc" ld-linux-x86-64.so.2)"
{ [ -f "$BIN" ] && [ -n "$LIBC_SO" ] && [ -n "$LD_SO" ]; } || die "binary or libc not found in the .debs"
# Refuse a binary that needs more than libc (a later Debian build could add a dependency).
needed="$(LC_ALL=C objdump -p "$BIN" 2>/dev/null | awk '/NEEDED/ {print $2}' | sort | tr '\n' ' ' || true)"
if [ -n "$needed" ] && [ "$needed" != "libc.so.6 " ]; then
  die "docker-registry needs more than libc: $needed"
fi

# --- the root filesystem ------------------------------------------------------------------------
ROOT="$WORK/rootfs"
install -d -m 0755 "$ROOT"/{bin,etc/docker/registry,lib/x86_64-linux-gnu,lib64,var/lib/registry}
install -d -m 1777 "$ROOT/tmp"
install -m 0755 "$BIN" "$ROOT/bin/registry"
install -m 0755 "$(readlink -f "$LIBC_SO")" "$ROOT/lib/x86_64-linux-gnu/libc.so.6"
install -m 0755 "$(readlink -f "$LD_SO")" "$ROOT/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$ROOT/lib64/ld-linux-x86-64.so.2"
# The official registry:2 image's config.yml.
cat >"$ROOT/etc/docker/registry/config.yml" <<'EOF'
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
EOF
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOT/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$ROOT/etc/nsswitch.conf"
chmod 0644 "$ROOT"/etc/docker/registry/config.yml "$ROOT"/etc/{passwd,group,nsswitch.conf}

# It runs: the version, then a real serve on a loopback port (root: chroot; no podman run here).
if [ "$(id -u)" = 0 ]; then
  chroot "$ROOT" /bin/registry --version >"$WORK/version.txt" 2>&1 \
    || { cat "$WORK/version.txt" >&2; die "the binary does not run from the image's root"; }
  log "runs: $(cat "$WORK/version.txt")"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  cp -a "$ROOT" "$WORK/check-root"
  REGISTRY_HTTP_ADDR="127.0.0.1:$port" OTEL_TRACES_EXPORTER=none \
    chroot "$WORK/check-root" /bin/registry serve /etc/docker/registry/config.yml >"$WORK/serve.log" 2>&1 &
  CHECK_PID=$!
  code=
  for _ in $(seq 1 50); do
    code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v2/" || true)"
    [ "$code" = 200 ] && break
    sleep 0.2
  done
  kill "$CHECK_PID" 2>/dev/null; wait "$CHECK_PID" 2>/dev/null || true; CHECK_PID=
  [ "$code" = 200 ] || { cat "$WORK/serve.log" >&2; die "GET /v2/ answered '$code', not 200"; }
  log "serves: GET /v2/ -> 200 on 127.0.0.1:$port"
fi

# --- the OCI layout, by hand --------------------------------------------------------------------
LAYOUT="$WORK/layout"
mkdir -p "$LAYOUT/blobs/sha256"
blob() { # blob FILE -> moves FILE into the layout, prints its digest hex
  local h; h="$(sha256sum "$1" | cut -d' ' -f1)"
  mv "$1" "$LAYOUT/blobs/sha256/$h"
  echo "$h"
}
(cd "$ROOT" && tar --create --format=ustar --sort=name --numeric-owner --owner=0 --group=0 \
  --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime --file "$WORK/layer.tar" .)
DIFF_ID="$(sha256sum "$WORK/layer.tar" | cut -d' ' -f1)"
gzip -n -9 <"$WORK/layer.tar" >"$WORK/layer.tar.gz"
LAYER_SIZE="$(stat -c %s "$WORK/layer.tar.gz")"
LAYER="$(blob "$WORK/layer.tar.gz")"

jq -n -c -S \
  --arg created "$CREATED" --arg diff "sha256:$DIFF_ID" \
  --arg regv "$REG_VERSION" --arg libcv "$LIBC_VERSION" --arg ref "$FIXTURE_REF" '{
  created: $created, architecture: "amd64", os: "linux",
  config: {
    Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    Entrypoint: ["/bin/registry"],
    Cmd: ["serve", "/etc/docker/registry/config.yml"],
    ExposedPorts: {"5000/tcp": {}},
    Volumes: {"/var/lib/registry": {}},
    Labels: {
      "org.opencontainers.image.title": "registry",
      "org.opencontainers.image.version": ($regv | sub("\\+.*"; "")),
      "org.opencontainers.image.description": ("regimage test stand-in for " + $ref + ", from Debian docker-registry " + $regv + " and libc6 " + $libcv)
    }
  },
  rootfs: {type: "layers", diff_ids: [$diff]},
  history: [{created: $created,
             created_by: ("regimage image/build-registry-fixture.sh: docker-registry " + $regv + ", libc6 " + $libcv)}]
}' | tr -d '\n' >"$WORK/config.json"
CONFIG_SIZE="$(stat -c %s "$WORK/config.json")"
CONFIG="$(blob "$WORK/config.json")"

jq -n -c -S --arg c "sha256:$CONFIG" --argjson cs "$CONFIG_SIZE" \
  --arg l "sha256:$LAYER" --argjson ls "$LAYER_SIZE" '{
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
  layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $l, size: $ls}]
}' | tr -d '\n' >"$WORK/manifest.json"
MANIFEST_SIZE="$(stat -c %s "$WORK/manifest.json")"
MANIFEST="$(blob "$WORK/manifest.json")"

printf '{"imageLayoutVersion":"1.0.0"}' >"$LAYOUT/oci-layout"
jq -n -c --arg m "sha256:$MANIFEST" --argjson ms "$MANIFEST_SIZE" --arg ref "$FIXTURE_REF" '{
  schemaVersion: 2,
  manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $m, size: $ms,
               annotations: {"org.opencontainers.image.ref.name": $ref}}]
}' >"$LAYOUT/index.json"

# --- oci-archive, and checks --------------------------------------------------------------------
mkdir -p "$WORK/out"
skopeo copy -q --preserve-digests "oci:$LAYOUT:$FIXTURE_REF" "oci-archive:$WORK/out/$OUT_NAME:$FIXTURE_REF"
got="$(skopeo inspect --raw "oci-archive:$WORK/out/$OUT_NAME" | sha256sum | cut -d' ' -f1)"
[ "$got" = "$MANIFEST" ] || die "manifest digest changed in the archive: $got != $MANIFEST"
got_cfg="$(skopeo inspect --raw --config "oci-archive:$WORK/out/$OUT_NAME" | sha256sum | cut -d' ' -f1)"
[ "$got_cfg" = "$CONFIG" ] || die "config digest changed in the archive: $got_cfg != $CONFIG"
# A second copy keeps the digest (what the bake does with the archive).
skopeo copy -q --preserve-digests "oci-archive:$WORK/out/$OUT_NAME" "oci-archive:$WORK/copy.tar:$FIXTURE_REF"
got2="$(skopeo inspect --raw "oci-archive:$WORK/copy.tar" | sha256sum | cut -d' ' -f1)"
[ "$got2" = "$MANIFEST" ] || die "skopeo copy --preserve-digests changed the digest: $got2"
rm -f "$WORK/copy.tar"
# podman load (a throwaway store, not the host's) gives the image ID = config digest.
podman_id=
if command -v podman >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  PTMP="$(mktemp -d /tmp/regimage-podman.XXXXXX)"   # podman wants a short runroot path
  P=(podman --root "$PTMP/root" --runroot "$PTMP/run" --storage-driver vfs)
  if "${P[@]}" load -q -i "$WORK/out/$OUT_NAME" >"$WORK/podman-load.log" 2>&1; then
    podman_id="$("${P[@]}" image inspect --format '{{.Id}}' "$FIXTURE_REF" 2>/dev/null || true)"
    [ "$podman_id" = "$CONFIG" ] || die "podman load: image ID '$podman_id' != config digest $CONFIG"
    log "podman load: $("${P[@]}" images --format '{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' | head -n1)"
  else
    log "warning: podman load failed (check skipped): $(tail -n1 "$WORK/podman-load.log")"
  fi
  "${P[@]}" rmi -a -f >/dev/null 2>&1 || true
  rm -rf "$PTMP" 2>/dev/null || true
fi

echo "sha256:$MANIFEST" >"$WORK/out/manifest-digest"
echo "sha256:$CONFIG" >"$WORK/out/config-digest"
cat >"$WORK/out/build-info.txt" <<EOF
archive=$OUT_NAME
ref=$FIXTURE_REF
recipe_key=$(basename "$DIR" | sed 's/^registry-fixture-//')
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
docker_registry_deb=$(basename "$REG_DEB") sha256:$(sha256sum "$REG_DEB" | cut -d' ' -f1)
libc6_deb=$(basename "$LIBC_DEB") sha256:$(sha256sum "$LIBC_DEB" | cut -d' ' -f1)
registry_version=$(cat "$WORK/version.txt" 2>/dev/null || echo unknown)
manifest_digest=sha256:$MANIFEST
config_digest=sha256:$CONFIG
layer_digest=sha256:$LAYER
layer_diff_id=sha256:$DIFF_ID
layer_bytes=$LAYER_SIZE
archive_bytes=$(stat -c %s "$WORK/out/$OUT_NAME")
podman_load_id=${podman_id:-not checked}
seconds_total=$(elapsed "$t_all")
EOF
rm -rf "$DIR"
mv "$WORK/out" "$DIR"
report
