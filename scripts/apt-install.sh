#!/usr/bin/env bash
# Install Debian packages, non-interactively, waiting for another apt to finish instead of
# failing: the lock-timeout option does not cover the package-list lock, so retry.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
retry() {
  for i in $(seq 1 60); do
    if "$@"; then return 0; fi
    echo "apt busy or failed (attempt $i): $*; retrying in 5s" >&2
    sleep 5
  done
  return 1
}
# Refresh the package lists at most once per hour.
stamp=/var/lib/apt/periodic/oomd-update-stamp
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +60 2>/dev/null)" ]; then
  retry $SUDO apt-get -o DPkg::Lock::Timeout=120 update -qq
  $SUDO mkdir -p "$(dirname "$stamp")" && $SUDO touch "$stamp"
fi
retry $SUDO apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "$@" >/dev/null
