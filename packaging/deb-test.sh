#!/usr/bin/env bash
# The .deb install test (make deb-test): installs the package on this machine with
# dpkg -i, checks its files, modes and conffiles, verifies the unit with systemd-analyze,
# runs the installed stack the way the unit does (no systemd needed) and talks to it with
# oomwatchctl, then removes and purges the package and checks that nothing is left.
# Whatever fails, the exit trap stops the stack and purges the package.
#
#   packaging/deb-test.sh dist/oomwatch_<version>_<arch>.deb
#
# Needs root and dpkg (skipped otherwise, saying so). Refuses to run where oomwatch is
# already installed or has state, unless DEB_TEST_FORCE=1: it would replace and purge it.
# VERSION, if set, is what every binary's --version must name.
set -euo pipefail
pkg=oomwatch
deb=${1:?usage: deb-test.sh PKG.deb}
t0=$SECONDS
fail() { echo "deb-test FAILED: $*" >&2; exit 1; }
skip() { echo "deb-test SKIPPED: $*"; exit 0; }
step() { echo "deb-test: [$((SECONDS - t0)) s] $*"; }

[ "$(id -u)" = 0 ] || skip "needs root for dpkg -i (CI runs as root)"
command -v dpkg >/dev/null || skip "no dpkg: not a Debian system"
[ -f "$deb" ] || fail "no package file $deb (make deb builds it)"
if [ "${DEB_TEST_FORCE:-}" != 1 ]; then
  st=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [ -z "$st" ] || [ "$st" = not-installed ] ||
    fail "$pkg is $st on this machine; this test would replace and purge it (DEB_TEST_FORCE=1 allows it)"
  [ ! -e /var/lib/oomwatch ] && [ ! -e /run/oomwatch ] ||
    fail "/var/lib/oomwatch or /run/oomwatch exists; this test would delete it (DEB_TEST_FORCE=1 allows it)"
fi

# Every file the package ships, with its mode.
declare -A want=(
  [/usr/libexec/oomwatch/execd-stub]=755 [/usr/libexec/oomwatch/logd-stub]=755
  [/usr/libexec/oomwatch/oomd]=755 [/usr/bin/oomwatchctl]=755
  [/usr/lib/systemd/system/oomwatch.service]=644
  [/etc/oomwatch/manifest.json]=644 [/etc/oomwatch/policy.json]=644
  [/usr/share/man/man1/oomwatchctl.1.gz]=644 [/usr/share/man/man8/oomwatch-execd.8.gz]=644
  [/usr/share/man/man8/oomwatch-oomd.8.gz]=644 [/usr/share/man/man8/oomwatch-logd.8.gz]=644
  [/usr/share/doc/oomwatch/README.md]=644
)
unit=/usr/lib/systemd/system/oomwatch.service
ctl=/usr/bin/oomwatchctl

execd=""
cleanup() {
  rc=$?
  if [ -n "$execd" ] && kill -0 "$execd" 2>/dev/null; then
    kill -TERM "$execd" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$execd" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$execd" 2>/dev/null || true
  fi
  if dpkg-query -W "$pkg" >/dev/null 2>&1; then
    dpkg --purge "$pkg" >/dev/null 2>&1 || echo "deb-test: cleanup: dpkg --purge $pkg failed" >&2
  fi
  rm -rf /run/oomwatch /var/lib/oomwatch "${tmp:-}"
  [ $rc = 0 ] || echo "deb-test: cleaned up after the failure (package purged, state removed)" >&2
}
trap cleanup EXIT
tmp=$(mktemp -d)

step "install $deb"
dpkg -i "$deb" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -i"; }
[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg")" = installed ] || fail "$pkg not installed after dpkg -i"

step "files and modes"
for f in "${!want[@]}"; do
  [ -f "$f" ] || fail "$f missing"
  got=$(stat -c '%a %U:%G' "$f")
  [ "$got" = "${want[$f]} root:root" ] || fail "$f: mode/owner $got, want ${want[$f]} root:root"
done
# The package ships exactly these files: nothing under a name Debian already has
# (systemd's /usr/bin/oomctl, the oomd package's /usr/bin/oomd).
dpkg -L "$pkg" | while read -r f; do [ -d "$f" ] || echo "$f"; done | sort >"$tmp/have"
printf '%s\n' "${!want[@]}" | sort >"$tmp/want"
diff -u "$tmp/want" "$tmp/have" >&2 || fail "the package's file list differs (- expected, + shipped)"
conf=$(dpkg-query -W -f='${Conffiles}' "$pkg")
for f in /etc/oomwatch/manifest.json /etc/oomwatch/policy.json; do
  grep -q " $f " <<<"$conf " || fail "$f is not a conffile (dpkg lists: $conf)"
done

if command -v systemd-analyze >/dev/null; then
  step "systemd-analyze verify $unit"
  # verify also checks that ExecStart's binary exists and is executable.
  systemd-analyze verify "$unit" >"$tmp/verify" 2>&1 || { cat "$tmp/verify" >&2; fail "systemd-analyze verify"; }
  if grep -i "oomwatch" "$tmp/verify" >&2; then fail "systemd-analyze verify warns about the unit"; fi
else
  echo "deb-test: SKIP systemd-analyze verify: systemd-analyze is not installed (Debian package systemd)"
fi

step "--version of every binary"
# "<program> <version> (...)"; the CLI names itself by the name it was run as (oomwatchctl).
for b in "$ctl" /usr/libexec/oomwatch/execd-stub /usr/libexec/oomwatch/logd-stub /usr/libexec/oomwatch/oomd; do
  v=$("$b" --version) || fail "$b --version exited non-zero"
  case "$v" in *" ${VERSION:-}"*) ;; *) fail "$b --version said '$v', want version '${VERSION:-}'" ;; esac
done

step "man pages"
for f in "${!want[@]}"; do
  case "$f" in *.gz) zcat "$f" | head -1 | grep -q '^\.TH ' || fail "$f is not a man page" ;; esac
done
if command -v man >/dev/null; then
  MANWIDTH=80 man -l /usr/share/man/man1/oomwatchctl.1.gz 2>"$tmp/man.err" | grep -q "oomwatchctl status" ||
    fail "man -l oomwatchctl.1.gz did not render its examples: $(cat "$tmp/man.err")"
fi

step "run the installed stack as the unit does (ExecStartPre, ExecStart; without systemd)"
# systemd makes these (RuntimeDirectory=, StateDirectory=, both 0700).
install -d -m 0700 /run/oomwatch /var/lib/oomwatch
pre=$(sed -n 's/^ExecStartPre=//p' "$unit")
start=$(sed -n 's/^ExecStart=//p' "$unit")
[ -n "$pre" ] && [ -n "$start" ] || fail "no ExecStartPre/ExecStart in $unit"
eval "$pre" || fail "ExecStartPre: $pre"
cmp -s /etc/oomwatch/policy.json /var/lib/oomwatch/policy.json || fail "ExecStartPre did not seed the live policy from /etc"
eval "exec $start" >"$tmp/stack.log" 2>&1 &
execd=$!
ok=""
for _ in $(seq 300); do # up to 30 s: the status call answers once oomd is up
  if "$ctl" status >"$tmp/status" 2>&1; then ok=1; break; fi
  kill -0 "$execd" 2>/dev/null || break
  sleep 0.1
done
[ -n "$ok" ] || { cat "$tmp/stack.log" "$tmp/status" >&2; fail "oomwatchctl status (default socket /run/oomwatch/oomd.sock) never answered"; }
grep -q logd "$tmp/status" || { cat "$tmp/status" >&2; fail "status does not list logd"; }
"$ctl" policy set --soft-bytes 300M >/dev/null || fail "oomwatchctl policy set"
grep -q '"softBytes": 314572800' /var/lib/oomwatch/policy.json || fail "policy set did not reach /var/lib/oomwatch/policy.json"
[ -d /var/lib/oomwatch/journal ] || fail "logd's journal is not in /var/lib/oomwatch/journal"
# The unit's ExecReload: a hand-edited live policy is put in force.
reload=$(sed -n 's/^ExecReload=//p' "$unit")
sed -i 's/"softBytes": 314572800/"softBytes": 335544320/' /var/lib/oomwatch/policy.json
MAINPID=$execd eval "$reload" || fail "ExecReload: $reload"
ok=""
for _ in $(seq 100); do # up to 10 s
  if "$ctl" policy get | grep -q '^softBytes.*335544320'; then ok=1; break; fi
  sleep 0.1
done
[ -n "$ok" ] || { "$ctl" policy get >&2; fail "ExecReload did not put the edited policy in force"; }
kill -TERM "$execd"
for _ in $(seq 300); do kill -0 "$execd" 2>/dev/null || break; sleep 0.1; done
kill -0 "$execd" 2>/dev/null && fail "execd still running 30 s after SIGTERM"
wait "$execd" || { cat "$tmp/stack.log" >&2; fail "execd exited non-zero after SIGTERM"; }
execd=""

step "dpkg -r keeps the conffiles and the state, removes the rest"
dpkg -r "$pkg" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -r"; }
for f in "${!want[@]}"; do
  case "$f" in
  /etc/*) [ -f "$f" ] || fail "dpkg -r removed conffile $f" ;;
  *) [ ! -e "$f" ] || fail "$f still there after dpkg -r" ;;
  esac
done
[ -f /var/lib/oomwatch/policy.json ] || fail "dpkg -r removed the state"

step "dpkg --purge removes the conffiles and the state"
dpkg --purge "$pkg" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg --purge"; }
for f in "${!want[@]}" /etc/oomwatch /var/lib/oomwatch /usr/libexec/oomwatch; do
  [ ! -e "$f" ] || fail "$f still there after dpkg --purge"
done
st=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
[ -z "$st" ] || [ "$st" = not-installed ] || fail "$pkg is $st after purge"

echo "deb-test passed: installed, checked, ran, removed and purged $(basename "$deb") in $((SECONDS - t0)) s"
