#!/bin/sh
# The guide's first-boot PKI by hand (shared/seed, step 3.1), its openssl commands in order,
# under DIR instead of /etc/registry/certs: server CA, server key and certificate (SANs from
# the guide's requests/openssl.conf, written here for localhost and 127.0.0.1), client CA,
# one client key and certificate, all RSA-4096 as the guide has them, and the guide's chmods.
# Left out: sudo, the chgrp to registry-proxy (a system group) and the system trust store
# (update-ca-certificates). `make bench` times it against `regimage firstboot --no-system`.
#
# usage: bench/guide-pki.sh DIR   (DIR must not exist yet or be empty)
set -eu

dir=${1:?usage: guide-pki.sh DIR}
org=regimage
app=bench

mkdir -p "$dir/private" "$dir/clients" "$dir/ca" "$dir/requests"
cd "$dir"

# The guide copies this file from the project; it is not printed in the guide: the minimal
# one its commands need (a distinguished name and the req_ext section with the SANs).
cat > requests/openssl.conf <<CONF
[req]
prompt = no
distinguished_name = dn
req_extensions = req_ext

[dn]
O = $org
CN = localhost

[req_ext]
subjectAltName = @alt_names

[alt_names]
DNS.1 = localhost
IP.1 = 127.0.0.1
CONF

# 1. Server CA and server certificate.
openssl genrsa -out private/ca.key 4096 2>/dev/null
openssl req -new -x509 -key private/ca.key \
    -out ca/ca.crt \
    -days 365 \
    -subj "/O=$org/CN=$app-Registry-CA"
openssl genrsa -out private/registry.key 4096 2>/dev/null
openssl req -new -key private/registry.key \
    -out requests/registry.csr \
    -config requests/openssl.conf
openssl x509 -req -in requests/registry.csr \
    -CA ca/ca.crt -CAkey private/ca.key -CAcreateserial \
    -out registry.crt \
    -days 365 \
    -extensions req_ext \
    -extfile requests/openssl.conf 2>/dev/null

# 2. Client CA and the CI client's certificate.
openssl genrsa -out private/client-ca.key 4096 2>/dev/null
openssl req -new -x509 -key private/client-ca.key \
    -out clients/ca.crt \
    -days 365 \
    -subj "/O=$org/CN=$app-Client-CA"
openssl genrsa -out private/client.key 4096 2>/dev/null
openssl req -new -key private/client.key \
    -out requests/client.csr \
    -subj "/O=$org/CN=$app-CI-Client"
openssl x509 -req -in requests/client.csr \
    -CA clients/ca.crt -CAkey private/client-ca.key -CAcreateserial \
    -out clients/client.crt \
    -days 365 2>/dev/null

# Permissions as the guide sets them.
chmod 600 private/ca.key private/client-ca.key private/client.key
chmod 644 ca/ca.crt registry.crt clients/client.crt
chmod 644 requests/registry.csr requests/client.csr requests/openssl.conf
chmod 640 private/registry.key clients/ca.crt

# The guide's check: the server certificate carries the SANs.
openssl x509 -in registry.crt -text -noout | grep -q "IP Address:127.0.0.1"
