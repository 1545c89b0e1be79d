#!/usr/bin/env bash
# make bench-idle-stacks: scripts/bench/idle.sh on N fresh stacks in a row, then every
# oomd/earlyoom CPU ratio (earlyoom scaled to 10 Hz) and their median.
#
# One stack's runs share its processes' timer phases, and on this VM a process's phase
# seems to fix its cost for a whole run (two identical programs stayed at 0.14 and
# 0.095 % of a core through every window: docs/perf.md); fresh stacks draw fresh phases.
#
#   IDLE_STACKS=5   stacks, one after the other
#   (and every IDLE_* variable of idle.sh, passed through; IDLE_RUNS is per stack)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
stacks=${IDLE_STACKS:-5}
out=$(mktemp "${TMPDIR:-/tmp}/oomd-idle-stacks.XXXXXX")
trap 'rm -f "$out"' EXIT
for i in $(seq 1 "$stacks"); do
  echo "== stack $i of $stacks"
  "$root/scripts/bench/idle.sh" | tee -a "$out" | grep -E '^\| oomd \||^\| earlyoom \||scaled to 10 Hz' || true
done
# "... with earlyoom's CPU scaled to 10 Hz: 1.57× / 1.25×" (summary) or "..., oomd/earlyoom CPU 1.49×" (per run)
ratios=$(grep -E "^earlyoom woke .*CPU oomd/earlyoom with earlyoom's CPU scaled to 10 Hz:" "$out" | sed 's/.*10 Hz: //' | tr -d '×' | tr '/' '\n' |
  awk 'NF { print $1 }' || true)
if [ -z "$ratios" ]; then
  ratios=$(grep -E "with its CPU scaled to 10 Hz, oomd/earlyoom CPU" "$out" | sed 's/.*CPU //' | tr -d '×' || true)
fi
if [ -z "$ratios" ]; then
  echo "idle stacks: no ratio in the bench's output" >&2
  exit 1
fi
echo
echo "oomd/earlyoom CPU at 10 Hz, every run of every stack: $(tr '\n' ' ' <<<"$ratios")"
sort -g <<<"$ratios" | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
  printf "median %.2f×, min %.2f×, max %.2f× over %d runs\n", m, v[1], v[NR], NR }'
