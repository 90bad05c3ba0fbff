#!/bin/sh
# One-shot PKI for deploy/compose/compose.yaml: a ministry CA, the hub's certificate and one demo
# province node's key and certificate, in the `pki` volume (mounted at /etc/hutong/tls). Runs as
# root only to hand the files to the hutong user (uid 10001) at the end; does nothing once done.
#
# A trial setup: the passphrases are generated and kept in the volume. In production the CA lives
# on its own host and its root key offline (pki/README.md); only certificates come here.
set -eu
PKI="${HUTONG_PKI_DIR:-/etc/hutong/tls}"
if [ -f "$PKI/.done" ]; then
    echo "the PKI exists; remove the pki volume to start over"
    exit 0
fi
umask 077
mkdir -p "$PKI/secrets" "$PKI/hub" "$PKI/nodes"
python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$PKI/secrets/root.pass"
python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$PKI/secrets/intermediate.pass"
PASS="--intermediate-passphrase-file $PKI/secrets/intermediate.pass"

hutong pki init "$PKI/ca" --root-passphrase-file "$PKI/secrets/root.pass" $PASS
# The names nodes dial: Envoy passes TLS through, so the hub's certificate must name the proxy's
# address (localhost from the host, envoy inside the compose network) as well as its own.
hutong pki issue-hub --ca-dir "$PKI/ca" --dns hub.hutong.local --dns envoy --dns localhost --ip 127.0.0.1 \
    --out-dir "$PKI/hub" $PASS
hutong pki csr --province 440000 --name gz-01 --out "$PKI/nodes"
hutong pki issue "$PKI/nodes/440000-gz-01.csr" --ca-dir "$PKI/ca" --out "$PKI/nodes/440000-gz-01.pem" $PASS
hutong pki crl --ca-dir "$PKI/ca" $PASS

touch "$PKI/.done"
if [ "$(id -u)" = 0 ]; then
    chown -R 10001:10001 "$PKI"
fi
chmod 0750 "$PKI"
echo "PKI ready: CA $PKI/ca/ca-chain.pem, hub $PKI/hub/hub.pem, node $PKI/nodes/440000-gz-01.pem"
