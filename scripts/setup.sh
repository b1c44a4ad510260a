#!/usr/bin/env bash
# Install everything fabship and its test tiers need on a Debian 12 control
# machine (as root): system packages for the sandbox fleet and its stand-ins,
# and fabship itself with its test extra. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  debootstrap systemd-container openssh-client iproute2   # sandbox hosts
  apt-cacher-ng                                            # packages for hosts with no route out
  pebble                                                   # local ACME server (+ pebble-challtestsrv)
  docker-registry gcc libc6-dev                            # local registry + sample images (static C server)
  git curl openssl ca-certificates python3-venv
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Installing a daemon package must not start it on the control machine.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
echo "setup: ok"
