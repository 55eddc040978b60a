#!/usr/bin/env bash
# Installs the real A/B updaters the RAUC/SWUpdate writer tests drive (tests/updaters), and the
# other Debian packages the tests call. Idempotent: does nothing when everything is already
# installed.
#
# Exits 0 without doing anything (and says why) when not root or when apt-get is missing: the
# tests then skip with a reason instead of failing.
#
#   rauc, swupdate   the updaters (rauc 1.8 / swupdate 2022.12 on bookworm)
#   squashfs-tools   rauc bundle creation (mksquashfs) and install (unsquashfs not needed)
#   dbus             private D-Bus for the RAUC service (dbus-daemon)
#   cpio             building .swu archives
#   openssl          test CA, signing
#   e2fsprogs        ext4 slot images (mkfs.ext4)
#   util-linux       losetup/mount (normally already there)
#   systemd          systemd-analyze, to verify the agent's unit file (tests/agent/test_systemd.py)
#   tinyproxy        a real HTTP proxy for the proxy tests (tests/transport/test_proxy.py)
#   swtpm, tpm2-abrmd, tpm2-tools, libtss2-tcti-swtpm0, libtss2-tcti-tabrmd0,
#   libtpm2-pkcs11-1, libtpm2-pkcs11-tools, libengine-pkcs11-openssl
#                    a software TPM, its resource manager, a PKCS#11 token in it and OpenSSL's
#                    pkcs11 engine: the TPM identity tests (tests/identity, nhlink.testing.tpm)
set -euo pipefail

PACKAGES=(rauc swupdate squashfs-tools dbus cpio openssl e2fsprogs util-linux systemd tinyproxy
    swtpm tpm2-abrmd tpm2-tools libtss2-tcti-swtpm0 libtss2-tcti-tabrmd0 libtpm2-pkcs11-1
    libtpm2-pkcs11-tools libengine-pkcs11-openssl)

if [ "$(id -u)" != "0" ]; then
    echo "install-debian.sh: not root; not installing ${PACKAGES[*]} (updater tests will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
    echo "install-debian.sh: no apt-get/dpkg; not installing ${PACKAGES[*]} (updater tests will skip)"
    exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "installed" ]; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-debian.sh: already installed: ${PACKAGES[*]}"
    exit 0
fi

echo "install-debian.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Never start the packages' services (swupdate, systemd units) on install: the tests start their
# own private daemons. A policy-rc.d of our own is only added if none exists, and removed after.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
fi
cleanup() { if [ "$added_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-debian.sh: done"
