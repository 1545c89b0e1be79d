#!/usr/bin/env bash
# make bench-idle: what the oomd stack costs at idle, measured beside Debian's earlyoom
# (issue 13: oomd at 10 Hz should cost no more CPU than earlyoom polling at 10 Hz).
#
# In a private runtime directory, execd starts logd, oomd and two idle hogs, as
# scripts/run.sh starts the stack (scripts/host/policy.json: sampleMs 100, no system
# levels); at the same time earlyoom runs in dry-run mode. Once oomd watches both hogs
# (polled through oomctl status, with a deadline) and after a warm-up, idlestat measures
# over each window: CPU (% of one core), context switches/s and VmRSS of oomd and earlyoom,
# and of execd, logd and the hogs for information, with the ratios oomd/earlyoom. Every
# process it started is stopped on exit, Ctrl-C included.
#
#   IDLE_SECONDS=60       one measurement window
#   IDLE_RUNS=1           windows in a row on the same stack (A / B / C in the summary)
#   IDLE_WARMUP=10        seconds between readiness and the first window
#   IDLE_LEVELS=0         1: the policy also samples system memory levels (MemAvailable
#                         every sampleMs, the work earlyoom does); 0: as scripts/host/policy.json
#   IDLE_SYSCALLS=0       N > 0: after the windows, N seconds of syscalls by kind and thread
#                         of oomd and earlyoom (perf trace -s, else strace -f -c; both slow
#                         what they watch, so never during a window)
#   IDLE_LOCK=0           1: hold /tmp/oomd-heavy.lock during the windows, so that builds and
#                         tests that take it (this repository's) wait, and the load is lower
#   IDLE_OOMD_ARGS=""     more arguments for oomd, words without quotes (e.g. "--trace=off")
#   IDLE_OOMD_ENV=""      environment for oomd alone, K=V words (e.g. "GOMAXPROCS=1")
#   IDLE_READY_TIMEOUT=60 seconds the stack has to come up
#   EARLYOOM_ARGS         default "-r 0 --dryrun -m 95,1 -s 1,1" (the command of issue 13)
#
# earlyoom's poll interval is adaptive (100..1000 ms, from the headroom above -m), so the
# bench reports the rate it actually polled at (its voluntary context switches: one sleep
# per poll) and the CPU ratio with earlyoom's CPU scaled to 10 Hz. A window in which
# earlyoom went down its low-memory path (it scans /proc for a victim on every poll)
# fails the bench: that is not earlyoom idle.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

seconds=${IDLE_SECONDS:-60}
runs=${IDLE_RUNS:-1}
warmup=${IDLE_WARMUP:-10}
levels=${IDLE_LEVELS:-0}
syscalls=${IDLE_SYSCALLS:-0}
lock=${IDLE_LOCK:-0}
oomd_args=${IDLE_OOMD_ARGS:-}
oomd_env=${IDLE_OOMD_ENV:-}
ready_timeout=${IDLE_READY_TIMEOUT:-60}
earlyoom_args=${EARLYOOM_ARGS:--r 0 --dryrun -m 95,1 -s 1,1}

command -v earlyoom >/dev/null || ./scripts/apt-install.sh earlyoom

rt=$(mktemp -d "${TMPDIR:-/tmp}/oomd-idle.XXXXXX")
chmod 700 "$rt"
execd_pid="" early_pid="" job_pid=""

# stop ends pid (our child) with SIGTERM, then SIGKILL after a deadline; with "group", its
# whole process group.
stop() {
  local pid=$1 secs=$2 target=$1 killer
  [ "${3:-}" != group ] || target=-$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM -- "$target" 2>/dev/null || true
  # The deadline: a group of its own (see run_bg), so that ending it ends its sleep too.
  # shellcheck disable=SC2016 # expanded by the inner bash
  setsid bash -c 'sleep "$1"; kill -KILL -- "$2" 2>/dev/null' deadline "$secs" "$target" &
  killer=$!
  wait "$pid" 2>/dev/null || true
  # Its pid too: it may not have made its group yet.
  kill -TERM -- "-$killer" "$killer" 2>/dev/null || true
  wait "$killer" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -z "$job_pid" ] || stop "$job_pid" 5 group
  [ -z "$early_pid" ] || stop "$early_pid" 5
  # execd stops its children (hogs, oomd, logd) in reverse dependency order.
  [ -z "$execd_pid" ] || stop "$execd_pid" 20
  if [ "$rc" != 0 ] && [ -f "$rt/stack.log" ]; then
    echo "--- last lines of the stack's log ($rt/stack.log):" >&2
    tail -n 20 "$rt/stack.log" >&2
  fi
  rm -rf "$rt"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run_bg runs a step in the background, in a process group of its own, and waits for it.
# bash runs a trap only once its foreground command has ended, and for SIGINT not at all if
# that command survived it (go build does), so every long step runs this way and the
# cleanup ends the step's whole group. A background job of a shell without job control is
# not a group leader, so setsid makes the new group in place: $! leads it.
run_bg() {
  setsid "$@" &
  job_pid=$!
  local rc=0
  wait "$job_pid" || rc=$?
  job_pid=""
  return "$rc"
}

run_bg flock /tmp/oomd-heavy.lock make --no-print-directory build
run_bg flock /tmp/oomd-heavy.lock go build -o "$rt/idlestat" ./scripts/bench/idlestat

cp scripts/host/policy.json "$rt/policy.json"
if [ "$levels" = 1 ]; then
  # Thresholds far below this machine's MemAvailable: the level stays normal; intervalMs
  # unset = sampleMs.
  sed -i 's/}[[:space:]]*$/, "levels": {"warningBytes": 1073741824, "imminentOomBytes": 536870912, "oomBytes": 268435456, "hysteresisBytes": 67108864}}/' "$rt/policy.json"
fi
# IDLE_OOMD_ARGS and IDLE_OOMD_ENV as JSON: ', "word"...' and '"K": "V", ...'.
json_words() { local w out=""; for w in $1; do out+=", \"$w\""; done; echo "$out"; }
json_env() { local w out=""; for w in $1; do out+="${out:+, }\"${w%%=*}\": \"${w#*=}\""; done; echo "$out"; }
extra_args=$(json_words "$oomd_args")
extra_env=$(json_env "$oomd_env")
# As scripts/host/run.json, with two hogs that hold 1 MiB each and never grow
# (--step-every 0: only an inject would grow them, and inject is off).
cat >"$rt/manifest.json" <<JSON
{"services": [
  {"id": "logd", "argv": ["logd-stub", "--socket", "\${RUNTIME_DIR}/logd.sock", "--dir", "\${RUNTIME_DIR}/journal"],
   "critical": true, "stopTimeoutMs": 2000},
  {"id": "oomd", "argv": ["oomd", "--socket", "\${RUNTIME_DIR}/oomd.sock", "--logd", "\${RUNTIME_DIR}/logd.sock",
                          "--spill", "\${RUNTIME_DIR}/audit.spill", "--policy", "\${RUNTIME_DIR}/policy.json"$extra_args],
   "env": {$extra_env},
   "role": "watchdog", "critical": true, "dependsOn": ["logd"], "stopTimeoutMs": 2000},
  {"id": "idle-a", "argv": ["hog", "--step-every", "0", "--start-bytes", "1048576", "--max-bytes", "1048576"],
   "dependsOn": ["oomd"], "stopTimeoutMs": 1000},
  {"id": "idle-b", "argv": ["hog", "--step-every", "0", "--start-bytes", "1048576", "--max-bytes", "1048576"],
   "dependsOn": ["oomd"], "stopTimeoutMs": 1000}
]}
JSON

echo "runtime dir: $rt"
echo "date: $(date -u '+%Y-%m-%dT%H:%M:%SZ')  commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (dirty)')"
echo "host: $(nproc) CPUs, $(uname -r), $(go version | cut -d' ' -f3), $(earlyoom -v 2>&1 | head -n1)"
echo "policy: $(tr -s ' \n' ' ' <"$rt/policy.json")"
echo "oomd: extra arguments [${oomd_args}], extra environment [${oomd_env}]"
echo "earlyoom $earlyoom_args"
mem_available() { awk '/^MemTotal:/{t=$2} /^MemAvailable:/{a=$2} END{printf "%.1f%% of MemTotal (%d MiB of %d MiB)", 100*a/t, a/1024, t/1024}' /proc/meminfo; }
echo "/proc/loadavg at start: $(cat /proc/loadavg)"
echo "MemAvailable at start: $(mem_available)"

PATH="$root/bin:$PATH" execd-stub --manifest "$rt/manifest.json" --runtime-dir "$rt" </dev/null >"$rt/stack.log" 2>&1 &
execd_pid=$!
# shellcheck disable=SC2086 # EARLYOOM_ARGS is a list of options
earlyoom $earlyoom_args </dev/null >"$rt/earlyoom.log" 2>&1 &
early_pid=$!

# Readiness: oomd's status shows both hogs with a kernel reading and a published value,
# and earlyoom printed its limits (it polls from then on).
status() { OOMD_SOCKET="$rt/oomd.sock" bin/oomctl status --json 2>/dev/null || true; }
deadline=$((SECONDS + ready_timeout))
until [ "$(status | grep -oE '"subject":"idle-[ab]"[^}]*"kernelBytes":[1-9][0-9]*,[^}]*"published":true' | wc -l)" = 2 ] &&
  grep -q 'sending SIGTERM when' "$rt/earlyoom.log"; do
  for p in "$execd_pid" "$early_pid"; do
    kill -0 "$p" 2>/dev/null || { echo "idle bench: pid $p exited before the stack was ready" >&2; cat "$rt/earlyoom.log" >&2; exit 1; }
  done
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "idle bench: the stack was not ready within ${ready_timeout}s" >&2
    exit 1
  fi
  sleep 0.1 # the poll interval of a wait bounded by the deadline
done

# A child's pid from execd's "started" line (console log: tab-separated).
pid_of() {
  local pid
  pid=$(grep -F "$(printf '\texecd\tstarted\t{"subject": "%s",' "$1")" "$rt/stack.log" | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' | tail -n1)
  if [ -z "$pid" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$2" ]; then
    echo "idle bench: no running $1 ($2) found" >&2
    exit 1
  fi
  echo "$pid"
}
oomd_pid=$(pid_of oomd oomd)
logd_pid=$(pid_of logd logd-stub)
hog_a=$(pid_of idle-a hog)
hog_b=$(pid_of idle-b hog)
field() { grep -oE "\"$1\":[0-9]+" | head -n1 | cut -d: -f2; }

echo "ready: oomd $oomd_pid watches logd, idle-a and idle-b; earlyoom $early_pid; warm-up ${warmup}s"
run_bg sleep "$warmup" # the warm-up is part of the measurement design, not a wait for an event
locked=()
if [ "$lock" = 1 ]; then
  echo "taking /tmp/oomd-heavy.lock for the windows"
  locked=(flock /tmp/oomd-heavy.lock)
fi
st0=$(status)
rc=0
run_bg "${locked[@]}" "$rt/idlestat" -window "${seconds}s" -runs "$runs" -compare oomd/earlyoom -base-hz 10 -threads oomd \
  -sum 'oomd stack (execd+logd+oomd)=execd+logd+oomd' -invalid-log "$rt/earlyoom.log" -invalid-text 'low memory!' \
  oomd="$oomd_pid" earlyoom="$early_pid" execd="$execd_pid" logd="$logd_pid" idle-a="$hog_a" idle-b="$hog_b" || rc=$?
st1=$(status)

ticks=$(($(field tick <<<"$st1") - $(field tick <<<"$st0")))
events=$(($(field lastEventSeq <<<"$st1") - $(field lastEventSeq <<<"$st0")))
echo
echo "oomd ticked $ticks times and published $events events over the windows and the idlestat reads"
echo "/proc/loadavg at end: $(cat /proc/loadavg)"
echo "MemAvailable at end: $(mem_available)"
if [ "$rc" != 0 ]; then
  echo "idle bench: the runs marked INVALID are not earlyoom idle: it reached its low-memory limits, where it scans" >&2
  echo "/proc for a victim on every poll (MemAvailable fell below -m; this host has no swap):" >&2
  grep -m3 'low memory!' "$rt/earlyoom.log" >&2 || true
fi
if [ "$events" != 0 ]; then
  echo "idle bench: note: oomd published $events events during the measurement:" >&2
  OOMD_SOCKET="$rt/oomd.sock" bin/oomctl events --since "$(field lastEventSeq <<<"$st0")" >&2 || true
fi

if [ "$syscalls" -gt 0 ]; then
  echo
  echo "syscalls over ${syscalls}s (after the windows; the tracer itself costs CPU):"
  for p in "oomd:$oomd_pid" "earlyoom:$early_pid"; do
    name=${p%%:*} pid=${p#*:}
    echo
    if command -v perf >/dev/null; then
      echo "$name (pid $pid): perf trace -s -p $pid, calls per second by thread"
      run_bg timeout -s INT "$syscalls" perf trace -s -p "$pid" -o "$rt/$name.trace" || true
      # perf trace -s: a header line per thread ("oomd (1234), 567 events, 40.1%"), then a
      # row per syscall (name, calls, errors, times).
      awk -v s="$syscalls" '
        /^ .*\([0-9]+\), [0-9]+ events/ { th=$0; sub(/^ */, "", th); sub(/,.*/, "", th); next }
        th != "" && $2 ~ /^[0-9]+$/ && $1 ~ /^[a-z_0-9]+$/ { printf "  %-22s %-18s %8.1f/s\n", th, $1, $2/s }' "$rt/$name.trace"
      echo "  all threads:"
      awk -v s="$syscalls" '
        /^ .*\([0-9]+\), [0-9]+ events/ { th=1; next }
        th && $2 ~ /^[0-9]+$/ && $1 ~ /^[a-z_0-9]+$/ { n[$1]+=$2 }
        END { for (k in n) printf "  %-22s %-18s %8.1f/s\n", "", k, n[k]/s }' "$rt/$name.trace" | sort -k2,2nr
    else
      echo "$name (pid $pid): strace -f -c -p $pid"
      run_bg timeout -s INT "$syscalls" strace -f -c -p "$pid" -o "$rt/$name.strace" || true
      awk -v s="$syscalls" '$4 ~ /^[0-9]+$/ && $NF ~ /^[a-z_0-9]+$/ && $NF != "total" { printf "  %-18s %8.1f/s\n", $NF, $4/s }' "$rt/$name.strace"
    fi
  done
fi
if [ "$rc" != 0 ]; then exit "$rc"; fi
