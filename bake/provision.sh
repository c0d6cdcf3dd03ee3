#!/bin/sh
# Runs on the Packer builder instance, as root, after the uploads to $STAGING (node-agent, genesis.json,
# config.toml and the geth signing key named by geth.signing_key). Fetches exactly what the pins of this
# node-agent say (resources/versions.toml, built in) and checks everything before installing anything:
#   geth: the archive's sha256, then its OpenPGP signature (gpgv against a keyring made from the shipped
#         key only, whose fingerprint must be the pinned one, as must the signer's on the signature);
#   ethstats-server: a clone checked out at the pinned commit (git rev-parse HEAD);
# then runs `node-agent install --root / --enable` (which checks the sha256 and the commit again, the
# step the tests run) and `npm ci` (package-lock.json pins every module by integrity hash).
#
# CLOUD_INIT=false (Packer: -var cloud_init=false) bakes an image without cloud-init: node-agent reads its
# configuration from user-data itself. It purges cloud-init and the packages that only it needed (apt's
# autoremove, limited to what the purge orphaned: nothing else is touched), its state and logs; deletes
# the builder's SSH host keys, which cloud-init would otherwise replace on each instance, and has
# ssh.service make fresh ones at boot (ssh-keygen -A); and refuses, before changing anything, when nothing
# would configure the network without cloud-init. The unit's After=cloud-final.service is an ordering
# only: harmless without the unit. CLOUD_INIT=true (the default) leaves cloud-init as the base image has it.
#
# Local copies replace the downloads, for the offline tests (tests/bake/) and for bakes from a mirror;
# everything else runs the same:
#   GETH_ARCHIVE=FILE GETH_SIGNATURE=FILE   instead of downloading geth.url and geth.signature_url
#   ETHSTATS_REPOSITORY=DIR|URL             cloned instead of ethstats.repository
#   PINS=FILE                               a versions.toml instead of the built-in pins (install --pins)
# And the option CLOUD_INIT=true|false (above).
# Every refusal is one line on stderr starting with "bake: ".
set -eu

fail() {
  echo "bake: $*" >&2
  exit 1
}

: "${STAGING:?STAGING is the upload directory}"
CLOUD_INIT=${CLOUD_INIT:-true}
case "$CLOUD_INIT" in
true | false) ;;
*) fail "CLOUD_INIT=$CLOUD_INIT: true (keep cloud-init) or false (an image without it)" ;;
esac
if [ "$CLOUD_INIT" = false ]; then
  # Something must bring the network up at boot without cloud-init: the base image's ifupdown (Debian's
  # AMIs: DHCP on any interface through cloud-ifupdown-helper's udev rule, or a dhcp stanza),
  # systemd-networkd or netplan. Checked before anything is installed.
  # (Each lookup may find nothing: "|| true", or set -e would end the list at the first.)
  network=$(
    {
      grep -ls 'cloud-ifupdown-helper' /etc/udev/rules.d/* /usr/lib/udev/rules.d/* /lib/udev/rules.d/* || true
      grep -lsE '^[[:space:]]*iface[[:space:]].*[[:space:]]dhcp' /etc/network/interfaces /etc/network/interfaces.d/* || true
      ls /etc/systemd/network/*.network /etc/netplan/*.yaml || true
    } 2>/dev/null | head -n 1
  )
  [ -n "$network" ] ||
    fail "CLOUD_INIT=false: nothing would bring the network up without cloud-init (no ifupdown dhcp stanza or cloud-ifupdown-helper rule, no systemd-networkd .network, no netplan): bake from Debian's AMI, or add one"
  echo "cloud-init: will be removed; the network comes up without it ($network)"
fi
agent="$STAGING/node-agent"
work="$STAGING/work"
export DEBIAN_FRONTEND=noninteractive

# node-agent install, with the test's or mirror's pins when PINS is set.
agent_install() {
  if [ -n "${PINS:-}" ]; then
    "$agent" install --pins "$PINS" "$@"
  else
    "$agent" install "$@"
  fi
}

chmod 0755 "$agent"
"$agent" version
rm -rf "$work"
mkdir -m 0700 "$work"

# Fails closed, naming the key to fill, while a pin is empty or malformed.
agent_install --print-downloads >"$work/pins" || fail "no usable pins (the line above says which)"
geth_url= geth_sha256= geth_file= geth_signature_url= geth_signing_key= geth_fingerprint=
ethstats_repository= ethstats_commit=
while IFS='=' read -r key value; do
  case "$key" in
  geth.url) geth_url=$value ;;
  geth.sha256) geth_sha256=$value ;;
  geth.file) geth_file=$value ;;
  geth.signature_url) geth_signature_url=$value ;;
  geth.signing_key) geth_signing_key=$value ;;
  geth.signing_key_fingerprint) geth_fingerprint=$value ;;
  ethstats.repository) ethstats_repository=$value ;;
  ethstats.commit) ethstats_commit=$value ;;
  esac
done <"$work/pins"
for v in geth_url geth_sha256 geth_file geth_signature_url geth_signing_key geth_fingerprint \
  ethstats_repository ethstats_commit; do
  eval "[ -n \"\$$v\" ]" || fail "node-agent install --print-downloads gave no $v: this provision.sh does not match the node-agent beside it"
done

# Debian's packages: gpg/gpgv for the signature, git for the ethstats clone, Node.js and npm for the
# ethstats server (Debian 12: Node 18), curl for the downloads. Only missing ones are installed.
missing=
for p in ca-certificates curl git gpg gpgv nodejs npm; do
  dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q ' installed$' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  apt-get update -q
  # shellcheck disable=SC2086 # a list of package names
  apt-get install -y -q --no-install-recommends $missing
fi
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 16 ? 0 : 1)' ||
  fail "node $(node --version) is older than 16, which ethstats-server needs: bake from Debian 12 or later"
echo "node $(node --version), npm $(npm --version) (Debian's)"

# --- geth: fetch, then sha256, then the signature.
archive="$work/$geth_file"
signature="$archive.asc"
if [ -n "${GETH_ARCHIVE:-}" ] || [ -n "${GETH_SIGNATURE:-}" ]; then
  [ -n "${GETH_ARCHIVE:-}" ] && [ -n "${GETH_SIGNATURE:-}" ] ||
    fail "GETH_ARCHIVE and GETH_SIGNATURE go together: a local archive needs its local .asc"
  echo "geth: local copies $GETH_ARCHIVE, $GETH_SIGNATURE (instead of $geth_url)"
  cp "$GETH_ARCHIVE" "$archive" || fail "cannot copy GETH_ARCHIVE=$GETH_ARCHIVE"
  cp "$GETH_SIGNATURE" "$signature" || fail "cannot copy GETH_SIGNATURE=$GETH_SIGNATURE"
else
  for pair in "$geth_url $archive" "$geth_signature_url $signature"; do
    echo "downloading ${pair% *}"
    curl --fail --silent --show-error --location --proto '=https' --retry 5 \
      --output "${pair#* }" "${pair% *}" || fail "cannot download ${pair% *} (the curl error above)"
  done
fi

actual=$(sha256sum <"$archive" | cut -d ' ' -f 1)
[ "$actual" = "$geth_sha256" ] ||
  fail "$geth_file: sha256 $actual is not the pinned geth.sha256 $geth_sha256: a different or corrupted download, refused"
echo "geth: sha256 $actual matches geth.sha256"

key="$STAGING/$geth_signing_key"
[ -f "$key" ] || fail "no signing key $key: upload resources/$geth_signing_key with the binary (bake/node-agent.pkr.hcl)"
gnupg="$work/gnupg"
mkdir -m 0700 "$gnupg"
# The key file must hold exactly one primary key, the pinned one: then the keyring holds nothing else.
primaries=$(gpg --batch --no-options --homedir "$gnupg" --with-colons --show-keys "$key" 2>/dev/null |
  awk -F: '$1 == "pub" { want = 1; next } $1 == "fpr" && want { printf "%s%s", sep, $10; sep = " "; want = 0 }')
[ "$primaries" = "$geth_fingerprint" ] ||
  fail "$key holds key ${primaries:-(none)}, not geth.signing_key_fingerprint $geth_fingerprint: ship the geth Linux builder's key (README \"Pins\")"
gpg --batch --no-options --homedir "$gnupg" --dearmor <"$key" >"$work/signer.gpg" 2>/dev/null ||
  fail "$key: not an armored OpenPGP key"
status=$(gpgv --homedir "$gnupg" --status-fd 1 --keyring "$work/signer.gpg" "$signature" "$archive" \
  2>"$work/gpgv.err") || true
# VALIDSIG's last field is the primary key fingerprint of the signer.
signer=$(echo "$status" | awk '$2 == "VALIDSIG" { print $NF }')
if echo "$status" | grep -q '^\[GNUPG:\] GOODSIG ' && [ "$signer" = "$geth_fingerprint" ]; then
  echo "geth: signature good, by $geth_fingerprint ($geth_signing_key)"
elif echo "$status" | grep -q '^\[GNUPG:\] BADSIG '; then
  fail "$geth_file.asc: BAD signature by $geth_fingerprint: the archive or its signature was altered, refused"
elif echo "$status" | grep -q '^\[GNUPG:\] \(ERRSIG\|NO_PUBKEY\) '; then
  # ERRSIG names the key id, and the issuer's fingerprint as its last field when the signature has one.
  other=$(echo "$status" | awk '$2 == "ERRSIG" { print (length($NF) == 40 ? $NF : $3); exit }')
  fail "$geth_file.asc: signed by key ${other:-unknown}, not by geth.signing_key_fingerprint $geth_fingerprint: refused"
else
  fail "$geth_file.asc: no good signature by $geth_fingerprint ($(tr '\n' ' ' <"$work/gpgv.err")): refused"
fi

# --- ethstats-server: clone, check out the pinned commit, compare HEAD.
repository=${ETHSTATS_REPOSITORY:-$ethstats_repository}
[ "$repository" = "$ethstats_repository" ] || echo "ethstats: local copy $repository (instead of $ethstats_repository)"
clone="$work/ethstats-server"
# --no-local: a local repository goes through the pack transport too, so every object's hash is checked.
git clone --quiet --no-checkout --no-local -- "$repository" "$clone" 2>"$work/git.err" ||
  fail "cannot clone $repository: $(tr '\n' ' ' <"$work/git.err")"
git -C "$clone" -c advice.detachedHead=false checkout --quiet --detach "$ethstats_commit^{commit}" \
  2>"$work/git.err" || fail "$repository has no commit $ethstats_commit (ethstats.commit): pin a commit of that repository"
head=$(git -C "$clone" rev-parse HEAD)
[ "$head" = "$ethstats_commit" ] || fail "$clone is at $head, not ethstats.commit $ethstats_commit: refused"
echo "ethstats: $repository at $head"

# --- install: the fleet configuration first (install keeps an existing config.toml).
install -d -m 0755 /etc/node-agent
install -m 0644 "$STAGING/config.toml" /etc/node-agent/config.toml
agent_install --root / --enable \
  --geth-archive "$archive" \
  --ethstats-source "$clone" \
  --genesis "$STAGING/genesis.json"

# The ethstats server's node modules, pinned by the commit's package-lock.json (npm ci refuses a lockfile
# that does not match package.json and checks every package's integrity hash), then its dashboard build.
cd /opt/ethstats-server
[ -f package-lock.json ] || fail "ethstats-server at $ethstats_commit has no package-lock.json: its modules would not be pinned"
npm ci --omit=dev --no-audit --no-fund
if node -e 'process.exit(require("./package.json").scripts?.dist ? 0 : 1)'; then
  npm run dist
fi
chown -R root:root /opt/ethstats-server
chmod -R go-w /opt/ethstats-server
cd /

# The programs the image will run are the pinned ones.
want=$("$agent" version --json | sed -n 's/.*"geth":{[^}]*"version":"\([^"]*\)".*/\1/p')
/usr/local/bin/geth version | grep -qx "Version: $want-stable" || fail "/usr/local/bin/geth is not geth $want"
/usr/local/bin/bootnode -h 2>&1 | grep -q -- -nodekey || fail "/usr/local/bin/bootnode does not look like bootnode"
/usr/local/bin/node-agent version
systemctl is-enabled node-agent.service

# --- cloud-init: kept, or purged with what only it needed (CLOUD_INIT, header).
if [ "$CLOUD_INIT" = false ]; then
  # Whatever provision needs stays, even where the base image had it only as a dependency.
  apt-mark manual ca-certificates curl git gpg gpgv nodejs npm >/dev/null
  orphans() { apt-get -s autoremove 2>/dev/null | awk '$1 == "Remv" { print $2 }' | sort; }
  orphans >"$work/orphans.before"
  # On the builder cloud-init ran at this boot (/run/cloud-init), and its last stage may still be running
  # while Packer provisions: let it finish before its files go.
  if [ -d /run/cloud-init ] && command -v cloud-init >/dev/null; then
    timeout 900 cloud-init status --wait >/dev/null || true
  fi
  if dpkg-query -W -f '${Status}\n' cloud-init 2>/dev/null | grep -qv ' not-installed$'; then
    apt-get purge -y -q cloud-init
  fi
  # Only what the purge orphaned (cloud-init's Python modules, growpart, ...): packages that were already
  # removable stay, and what the remaining packages recommend counts as needed (isc-dhcp-client for ifupdown).
  orphans | comm -13 "$work/orphans.before" - >"$work/orphans.new"
  if [ -s "$work/orphans.new" ]; then
    echo "cloud-init: also purging what only it needed: $(tr '\n' ' ' <"$work/orphans.new")"
    # shellcheck disable=SC2046 # a list of package names
    apt-get purge -y -q $(cat "$work/orphans.new")
  fi
  rm -rf /etc/cloud /var/lib/cloud /var/log/cloud-init.log /var/log/cloud-init-output.log
  left=$(find /etc/systemd/system /usr/lib/systemd/system /lib/systemd/system -name 'cloud-*' 2>/dev/null | head -n 3)
  [ -z "$left" ] || fail "cloud-init: units left after the purge: $(echo "$left" | tr '\n' ' ')"
  ! command -v cloud-init >/dev/null || fail "cloud-init: $(command -v cloud-init) is still there after the purge"
  # The unit orders itself after cloud-final.service; it must not pull it in.
  unit=/usr/local/lib/systemd/system/node-agent.service
  ! grep -Eq '^(Wants|Requires|Requisite|BindsTo|PartOf|Upholds)=.*cloud-' "$unit" ||
    fail "$unit depends on a cloud-init unit: it would not start without cloud-init"
  # cloud-init made this builder's SSH host keys and would have replaced them on every instance. Without it,
  # each instance makes its own at its first boot instead of sharing the image's.
  if [ -x /usr/sbin/sshd ]; then
    rm -f /etc/ssh/ssh_host_*
    install -d -m 0755 /etc/systemd/system/ssh.service.d
    cat >/etc/systemd/system/ssh.service.d/node-agent-host-keys.conf <<'EOF'
# node-agent's bake (CLOUD_INIT=false): the image carries no SSH host keys and no cloud-init to make them;
# each instance makes its own before sshd's config test.
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
EOF
    echo "ssh: the builder's host keys removed; ssh.service makes the instance's own at boot (ssh-keygen -A)"
  fi
  echo "cloud-init: not in this image"
else
  echo "cloud-init: kept ($(dpkg-query -W -f '${Version}' cloud-init 2>/dev/null || echo 'not in the base image'))"
fi

rm -rf "$STAGING"
