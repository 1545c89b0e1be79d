package e2e

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/internal/procstat"
	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/policy"
)

// Kernel truth on the real stack: programs that never heard of oomd are enforced on
// what the kernel counts for their cgroup (or, with --cgroup proc, their process tree),
// a kill takes the whole subject, and under-reporting is detected.

// kernelPolicy: the global limits are out of reach, so only the subject under test
// (its override, on the kernel's count) can cross; 32 MiB hard.
const kernelPolicy = `{"softBytes": 1073741824, "hardBytes": 2147483648, "sampleMs": 10, "killBudget": 4, "killWindowTicks": 100,
  "underReport": {"marginBytes": 16777216, "ticks": 3},
  "overrides": [{"subject": "app", "softBytes": 16777216, "hardBytes": 33554432, "signal": "kernel"}]}`

func appEntry(args string) string {
	return `,
  {"id": "app", "argv": ["${BIN}/hog"` + args + `], "dependsOn": ["oomd"], "stopTimeoutMs": 500}`
}

// containment returns the execd --cgroup values to run each test with: the strongest
// mode the machine has, and the /proc fallback.
func containment(t *testing.T) []string {
	if _, err := os.Stat("/sys/fs/cgroup/memory/cgroup.procs"); err == nil {
		return []string{"auto", "proc"}
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil && strings.Contains(string(b), "memory") {
		return []string{"auto", "proc"}
	}
	return []string{"proc"}
}

// TestSilentSubjectIsKilledOnKernelTruth: a hog that publishes nothing (signal kernel,
// and under the default max) is killed when its cgroup crosses hardBytes.
func TestSilentSubjectIsKilledOnKernelTruth(t *testing.T) {
	for _, mode := range containment(t) {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			s := startStackArgs(t, manifest(appEntry(`, "--no-publish", "--step-every", "20ms", "--step-bytes", "4194304", "--max-bytes", "100663296"`)),
				map[string]string{"policy.json": kernelPolicy}, "--cgroup", mode)
			c := dialClient(t, ctx, s)
			decided, err := c.WaitEvent(ctx, "killDecided", ctlclient.IsKind("app", "killDecided"))
			require.NoError(t, err)
			assert.Equal(t, "signal=kernel", decided.Reason)
			assert.Greater(t, decided.Bytes, uint64(32<<20))
			killed, err := c.WaitEvent(ctx, "killed", ctlclient.IsKind("app", "killed"))
			require.NoError(t, err)
			s.waitLine(fmt.Sprintf("oomd: kill app=app bytes=%d", killed.Bytes), 10*time.Second)
			rec, err := c.FindAudit(ctx, func(r policy.AuditRecord) bool { return r.Kind == policy.EventKillDecided && r.Subject == "app" })
			require.NoError(t, err)
			assert.Equal(t, "hard limit exceeded (kernel)", rec.Record.Reason)
		})
	}
}

var memberPid = regexp.MustCompile(`hog member started\s+\{"pid": (\d+)`)

// TestForkingSubjectIsKilledWhole: a subject whose main process forks three members
// that each hold 16 MiB is killed as one; every one of its pids is gone by the time the
// killed event is published (security invariant 9).
func TestForkingSubjectIsKilledWhole(t *testing.T) {
	for _, mode := range containment(t) {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			s := startStackArgs(t, manifest(appEntry(`, "--no-publish", "--step-every", "0", "--fork", "3", "--member-bytes", "16777216"`)),
				map[string]string{"policy.json": kernelPolicy}, "--cgroup", mode)
			c := dialClient(t, ctx, s)
			var pids []int
			require.Eventually(t, func() bool { return s.lines.count("hog member started") >= 3 }, 20*time.Second, 5*time.Millisecond,
				"the hog's three members started")
			for _, m := range memberPid.FindAllStringSubmatch(s.lines.dump(), -1) {
				pid, _ := strconv.Atoi(m[1])
				pids = append(pids, pid)
			}
			require.Len(t, pids, 3)
			main := pidOf(t, s, "app")
			pids = append(pids, main)

			_, err := c.WaitEvent(ctx, "killed", ctlclient.IsKind("app", "killed"))
			require.NoError(t, err)
			for _, pid := range pids {
				assert.False(t, processAlive(pid), "pid %d of the killed subject is still alive at its killed event", pid)
			}
		})
	}
}

// TestUnderReportingSubjectIsDetected: a hog that publishes a tenth of what it holds
// gets one memstatUnderReported event (and audit record, and marker) per episode.
func TestUnderReportingSubjectIsDetected(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pol := strings.Replace(kernelPolicy, `"signal": "kernel"`, `"signal": "cooperative"`, 1) // it must live
	pol = strings.Replace(pol, `"hardBytes": 33554432`, `"hardBytes": 1073741824`, 1)
	s := startStack(t, manifest(appEntry(`, "--under-report", "10", "--start-bytes", "50331648", "--step-every", "0"`)),
		map[string]string{"policy.json": pol})
	c := dialClient(t, ctx, s)
	ev, err := c.WaitEvent(ctx, "memstatUnderReported", ctlclient.IsKind("app", "memstatUnderReported"))
	require.NoError(t, err)
	assert.Greater(t, ev.Bytes, ev.Limit+16<<20, "kernel count above published + margin")
	// What it published: a tenth of its arena, or nothing yet if the gap already held for
	// the policy's ticks while its start-up allocation was under way.
	assert.LessOrEqual(t, ev.Limit, uint64(48<<20/10+1<<20), "the published value is at most a tenth of the arena")
	s.waitLine("oomd: memstat under-reported app=app", 10*time.Second)
	require.Eventually(t, func() bool { // the event is published as the record is submitted; durability follows
		_, err := c.FindAudit(ctx, func(r policy.AuditRecord) bool {
			return r.Kind == policy.EventMemstatUnderReported && r.Subject == "app"
		})
		return err == nil
	}, 10*time.Second, 10*time.Millisecond, "the under-report is in logd's journal")
	require.NoError(t, c.WaitTicks(ctx, 20))
	n, err := c.CountKind(ctx, "app", "memstatUnderReported")
	require.NoError(t, err)
	assert.Equal(t, 1, n, "one event per episode, not one per tick")
}

// processAlive reports whether pid is a live process (a zombie is not).
func processAlive(pid int) bool {
	st, err := procstat.Read(pid)
	return err == nil && !st.Gone()
}

// TestBadPolicyFileAtStartStillWatches: a policy file rejected at start (here an
// invalid signal) does not keep the watchdog down: oomd watches with the defaults and
// says which field was wrong (security invariant 11).
func TestBadPolicyFileAtStartStillWatches(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := startStack(t, manifest(""), map[string]string{"policy.json": `{"softBytes": 1, "hardBytes": 2, "sampleMs": 10, "killBudget": 1, "killWindowTicks": 1, "signal": "rss"}`})
	c := dialClient(t, ctx, s)
	s.waitLine("policy file rejected whole; watching with the default policy", 10*time.Second)
	assert.Contains(t, s.lines.dump(), `signal \"rss\": want max, kernel or cooperative`)
	p, v, err := c.GetPolicy(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(1), v)
	assert.Equal(t, policy.DefaultPolicy(), p)
	require.NoError(t, c.WaitTicks(ctx, 3))
}

// TestSilentSubjectIsReportedOnce: a subject whose page stays unwritten is reported once
// (memstatInvalid "never published"), never per tick, and is still watched on the
// kernel's count.
func TestSilentSubjectIsReportedOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pol := strings.Replace(kernelPolicy, `"hardBytes": 33554432`, `"hardBytes": 1073741824`, 1)
	s := startStack(t, manifest(appEntry(`, "--no-publish", "--step-every", "0"`)), map[string]string{"policy.json": pol})
	c := dialClient(t, ctx, s)
	ev, err := c.WaitEvent(ctx, "memstatInvalid", ctlclient.IsKind("app", "memstatInvalid"))
	require.NoError(t, err)
	assert.Contains(t, ev.Reason, "never published")
	require.NoError(t, c.WaitTicks(ctx, 100))
	n, err := c.CountKind(ctx, "app", "memstatInvalid")
	require.NoError(t, err)
	assert.Equal(t, 1, n, "once, not once per tick")
	st := subjectStatus(t, ctx, c, "app")
	assert.NotZero(t, st.KernelBytes(), "watched on the kernel's count")
	assert.False(t, st.Published())
}
