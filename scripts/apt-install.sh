#!/usr/bin/env bash
# Install Debian packages, non-interactively, waiting for another apt to finish instead of
# failing: the lock-timeout option does not cover the package-list lock, so retry.
#
#   scripts/apt-install.sh PKG...     refresh the lists if older than an hour, install PKG...
#   scripts/apt-install.sh --update   only refresh the lists (if older than an hour)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
retry() {
  local i
  for i in $(seq 1 60); do
    if "$@"; then return 0; fi
    echo "apt busy or failed (attempt $i): $*; retrying in 5s" >&2
    sleep 5
  done
  return 1
}
stamp=/var/lib/apt/periodic/oomd-update-stamp
update() {
  retry $SUDO apt-get -o DPkg::Lock::Timeout=120 update -qq
  $SUDO mkdir -p "$(dirname "$stamp")" && $SUDO touch "$stamp"
}
# Refresh the package lists at most once per hour.
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +60 2>/dev/null)" ]; then
  update
fi
if [ "${1:-}" = --update ]; then exit 0; fi
install() { $SUDO apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "$@" >/dev/null; }
# A failure with fresh-looking lists can still be stale lists (a package moved on the
# mirror): refresh once before retrying.
install "$@" || { update; retry install "$@"; }
