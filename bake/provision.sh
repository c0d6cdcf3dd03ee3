#!/bin/sh
# Runs on the Packer builder instance, as root, after the uploads to $STAGING (node-agent, genesis.json,
# config.toml). Downloads exactly what resources/versions.toml pins (as built into this node-agent),
# checks each sha256, and installs everything with `node-agent install`, the step the tests run.
set -eu

: "${STAGING:?STAGING is the upload directory}"
agent="$STAGING/node-agent"
downloads="$STAGING/downloads"
export DEBIAN_FRONTEND=noninteractive

chmod 0755 "$agent"
"$agent" version

# Fails closed, naming the key to fill, while a checksum or commit in versions.toml is empty.
"$agent" install --print-downloads > "$STAGING/downloads.tsv"

apt-get update -q
# nodejs + npm for the ethstats server (Node 16+); curl for the downloads.
apt-get install -y -q --no-install-recommends ca-certificates curl nodejs npm

mkdir -p "$downloads"
geth_archive=
ethstats_archive=
tab=$(printf '\t')
while IFS="$tab" read -r name url sha256 file; do
  echo "downloading $name: $url"
  curl --fail --silent --show-error --location --proto '=https' --retry 5 \
    --output "$downloads/$file" "$url"
  # node-agent install checks it again; this stops before anything else is touched.
  echo "$sha256  $downloads/$file" | sha256sum -c -
  case "$name" in
    geth) geth_archive="$downloads/$file" ;;
    ethstats) ethstats_archive="$downloads/$file" ;;
    *) echo "unexpected download $name" >&2; exit 1 ;;
  esac
done < "$STAGING/downloads.tsv"
[ -n "$geth_archive" ] && [ -n "$ethstats_archive" ]

# The fleet configuration first: install keeps an existing config.toml.
install -d -m 0755 /etc/node-agent
install -m 0644 "$STAGING/config.toml" /etc/node-agent/config.toml

"$agent" install --root / --enable \
  --geth-archive "$geth_archive" \
  --ethstats-archive "$ethstats_archive" \
  --genesis "$STAGING/genesis.json"

# The ethstats server's node modules, pinned by the app's package-lock.json (npm ci checks every
# package's integrity hash), then its dashboard build when the app has one.
cd /opt/ethstats-server
npm ci --omit=dev --no-audit --no-fund
if node -e 'process.exit(require("./package.json").scripts?.dist ? 0 : 1)'; then
  npm run dist
fi
chown -R root:root /opt/ethstats-server
chmod -R go-w /opt/ethstats-server
cd /

# The programs the image will run are the pinned ones.
want=$("$agent" version --json | sed -n 's/.*"geth":{[^}]*"version":"\([^"]*\)".*/\1/p')
/usr/local/bin/geth version | grep -qx "Version: $want-stable"
/usr/local/bin/bootnode -h 2>&1 | grep -q -- -nodekey
/usr/local/bin/node-agent version
systemctl is-enabled node-agent.service

rm -rf "$STAGING"
