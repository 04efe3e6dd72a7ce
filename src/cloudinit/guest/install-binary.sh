#!/bin/sh
# regimage user-data (--binary-url): download the binary into its root-only directory, check
# its sha256, install it. A failed download or a mismatch exits 1 and says so on the console
# (cloud-final's output): UNIT, queued already, then fails to run at every boot.
# Arguments: URL SHA256 DOWNLOAD_PATH BINARY_PATH UNIT
set -eu
url=$1 sha256=$2 download=$3 binary=$4 unit=$5
install -d -m 0700 -o root -g root "${download%/*}"
curl --fail --silent --show-error --location --retry 5 --retry-delay 5 \
  --connect-timeout 30 --max-time 600 --output "$download" "$url" || {
  echo "regimage: downloading $url failed (curl exit $?): no $binary, so $unit cannot run" >&2
  exit 1
}
echo "$sha256  $download" | sha256sum --check --strict - || {
  echo "regimage: the downloaded binary does not match --binary-sha256 $sha256; not installed, $unit cannot run" >&2
  exit 1
}
install -m 0755 -o root -g root "$download" "$binary"
rm -f "$download"
