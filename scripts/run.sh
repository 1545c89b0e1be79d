#!/usr/bin/env bash
# Runs the oomd stack on the host under execd, in a private temporary runtime directory.
#   scripts/run.sh             interactive demo (make run): watch a hog get killed; Ctrl-C stops all
#   scripts/run.sh --selftest  non-interactive proof (make selftest): exits 0 only on
#                              "SELFTEST: oom kill ok", bounded by SELFTEST_TIMEOUT (default 90s)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$root/bin:$PATH"
rt=$(mktemp -d "${TMPDIR:-/tmp}/oomd-run.XXXXXX")
chmod 700 "$rt"
# KEEP_RUNTIME=1 keeps the runtime directory (the journal, oomd's live trace) for a look
# after the stack stopped, e.g. bin/oomctl replay "$rt/policy.json.trace".
if [ "${KEEP_RUNTIME:-}" = 1 ]; then
  trap 'echo "runtime dir kept: $rt"' EXIT
else
  trap 'rm -rf "$rt"' EXIT
fi
cp "$root/scripts/host/policy.json" "$rt/policy.json"

if [ "${1:-}" != "--selftest" ]; then
  echo "runtime dir: $rt   (Ctrl-C stops every process)"
  echo "in another shell:  export OOMD_SOCKET=$rt/oomd.sock; bin/oomctl status"
  if [ "${KEEP_RUNTIME:-}" = 1 ]; then kept="the dir is kept at exit"; else kept="the dir goes at exit unless KEEP_RUNTIME=1"; fi
  echo "oomd's live trace:  bin/oomctl replay $rt/policy.json.trace   ($kept)"
  echo "the hog grows 2 MiB every 200 ms; oomd kills it above 40 MiB; policyd is critical and is denied"
  execd-stub --manifest "$root/scripts/host/run.json" --runtime-dir "$rt" && exit 0
  rc=$?
  [ $rc = 130 ] && exit 0 || exit $rc
fi

log="$rt/console.log"
set +e
timeout --kill-after=10 "${SELFTEST_TIMEOUT:-90}" \
  execd-stub --manifest "$root/scripts/host/selftest.json" --runtime-dir "$rt" </dev/null 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if ! grep -q "SELFTEST: oom kill ok" "$log"; then
  echo "selftest FAILED: no 'SELFTEST: oom kill ok' (execd exit $rc)" >&2
  exit 1
fi
if [ "$rc" != 0 ]; then
  echo "selftest FAILED: execd exited $rc" >&2
  exit 1
fi
echo "selftest passed"
