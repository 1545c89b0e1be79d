package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/policy"
)

// base is logd and oomd (inject enabled), as every kill-path test needs them; extra
// services are appended.
func manifest(extra string) string {
	return `{"services": [
  {"id": "logd", "argv": ["${BIN}/logd-stub", "--socket", "${RUNTIME_DIR}/logd.sock", "--dir", "${RUNTIME_DIR}/journal"],
   "critical": true, "stopTimeoutMs": 2000},
  {"id": "oomd", "argv": ["${BIN}/oomd", "--socket", "${RUNTIME_DIR}/oomd.sock", "--logd", "${RUNTIME_DIR}/logd.sock",
                          "--enable-inject", "--policy", "${RUNTIME_DIR}/policy.json"],
   "role": "watchdog", "critical": true, "dependsOn": ["logd"], "stopTimeoutMs": 2000}` + extra + `
]}`
}

// policyJSON: 10 ms ticks so tests move fast; hog's hard limit is 8 MiB.
// The kill-path tests drive the hog by inject on the cooperative signal; kernel truth has
// its own tests (kernel_test.go).
const policyJSON = `{"softBytes": 4194304, "hardBytes": 8388608, "sampleMs": 10, "killBudget": 4, "killWindowTicks": 100, "signal": "cooperative"}`

const hogEntry = `,
  {"id": "hog", "argv": ["${BIN}/hog", "--step-every", "0", "--max-bytes", "67108864"%s],
   "injectable": true, "dependsOn": ["oomd"], "stopTimeoutMs": %d}`

func dialClient(t *testing.T, ctx context.Context, s *stack) *ctlclient.Client {
	t.Helper()
	s.waitLine("oomd: ready", 20*time.Second)
	c, err := ctlclient.Dial(ctx, s.path("oomd.sock"), zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c
}

// waitTicks waits (on oomd's own tick counter, not a timer) until n more ticks passed.
// injectToKill makes app allocate n more bytes, enough to cross its hard limit. The kill
// may beat the hog's reply (the hog publishes before it answers, and go-capnp sends the
// answer only after the handler returns): that is ctlclient.ErrSubjectGone, and the
// caller goes on to wait for the kill's events.
func injectToKill(t *testing.T, ctx context.Context, c *ctlclient.Client, app string, n uint64) {
	t.Helper()
	if err := c.Inject(ctx, app, n); err != nil && !errors.Is(err, ctlclient.ErrSubjectGone) {
		require.NoError(t, err)
	}
}

func waitTicks(t *testing.T, ctx context.Context, c *ctlclient.Client, n uint64) {
	t.Helper()
	start := status(t, ctx, c).Tick()
	for status(t, ctx, c).Tick() < start+n {
		select {
		case <-ctx.Done():
			t.Fatalf("oomd did not advance %d ticks", n)
		case <-time.After(5 * time.Millisecond): // poll interval of an event wait, not a synchronising sleep
		}
	}
}

func status(t *testing.T, ctx context.Context, c *ctlclient.Client) oomdpb.Status {
	t.Helper()
	f, rel := c.Ctl.Status(ctx, nil)
	t.Cleanup(rel)
	res, err := f.Struct()
	require.NoError(t, err)
	st, err := res.Status()
	require.NoError(t, err)
	return st
}

// TestKillIsAuditedBeforeTerminateAndReportedAfterExit freezes logd so the kill
// decision's audit record cannot become durable, and checks that no terminate request
// leaves oomd meanwhile; once logd runs again the kill proceeds, and the kill marker
// follows execd's observation of the exit.
func TestKillIsAuditedBeforeTerminateAndReportedAfterExit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := startStack(t, manifest(fmt.Sprintf(hogEntry, "", 1000)), map[string]string{"policy.json": policyJSON})
	c := dialClient(t, ctx, s)
	_, err := c.WaitEvent(ctx, "hog registered", ctlclient.IsKind("hog", "subjectRegistered"))
	require.NoError(t, err)

	logdPid := pidOf(t, s, "logd")
	require.NoError(t, syscall.Kill(logdPid, syscall.SIGSTOP))
	stopped := true
	defer func() {
		if stopped {
			syscall.Kill(logdPid, syscall.SIGCONT)
		}
	}()

	injectToKill(t, ctx, c, "hog", 16<<20)
	_, err = c.WaitEvent(ctx, "killDecided", ctlclient.IsKind("hog", "killDecided"))
	require.NoError(t, err)
	waitTicks(t, ctx, c, 50) // half a second of oomd time with logd frozen
	for _, e := range c.Events() {
		require.NotEqual(t, policy.EventKillRequested, e.Kind, "terminate requested before the audit record was durable: %+v", e)
	}
	assert.Equal(t, -1, s.lines.index("terminating"), "execd received a terminate while logd was frozen")

	require.NoError(t, syscall.Kill(logdPid, syscall.SIGCONT))
	stopped = false
	killed, err := c.WaitEvent(ctx, "killed", ctlclient.IsKind("hog", "killed"))
	require.NoError(t, err)
	marker := s.waitLine("oomd: kill app=hog bytes=", 10*time.Second)
	assert.Equal(t, fmt.Sprintf("oomd: kill app=hog bytes=%d", killed.Bytes), marker)
	assert.Greater(t, killed.Bytes, uint64(8<<20))

	// The marker follows execd's own log of the exit (one pipe, so line order is write order).
	exitLine := s.lines.index(`exited	{"subject": "hog"`)
	require.GreaterOrEqual(t, exitLine, 0, "execd never logged the hog's exit")
	assert.Less(t, exitLine, s.lines.index("oomd: kill app=hog"), "kill marker printed before execd observed the exit")

	require.NoError(t, c.AuditHas(ctx, "hog", killed.Decision))
	n, err := c.CountKind(ctx, "hog", "killDecided")
	require.NoError(t, err)
	assert.Equal(t, 1, n, "one hard crossing must make exactly one kill decision")
	assert.Equal(t, 1, s.lines.count("oomd: kill app=hog"))
	require.NoError(t, s.stop(20*time.Second))
}

// TestStuckProcessIsKilledAfterStopTimeout: a hog that ignores SIGTERM is SIGKILLed by
// execd after its stop timeout, and only then reported killed.
func TestStuckProcessIsKilledAfterStopTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := startStack(t, manifest(fmt.Sprintf(hogEntry, `, "--ignore-sigterm"`, 300)), map[string]string{"policy.json": policyJSON})
	c := dialClient(t, ctx, s)
	_, err := c.WaitEvent(ctx, "hog registered", ctlclient.IsKind("hog", "subjectRegistered"))
	require.NoError(t, err)
	injectToKill(t, ctx, c, "hog", 16<<20)
	exited, err := c.WaitEvent(ctx, "hog exited", ctlclient.IsKind("hog", "subjectExited"))
	require.NoError(t, err)
	assert.Contains(t, exited.Reason, "signal=9")
	assert.Contains(t, exited.Reason, "sigkill-after-timeout")
	_, err = c.WaitEvent(ctx, "killed", ctlclient.IsKind("hog", "killed"))
	require.NoError(t, err)
	s.waitLine("oomd: kill app=hog", 10*time.Second)
}

// TestSpoofedSamplesChangeNothing: a process reporting 10 000 samples that claim to be
// the hog changes nothing about the hog; every attempt is counted against the sender
// and the rejection is audited. This is the version-1 RPC memstat path, which oomd
// still serves to subjects without a page (execd --no-memstat-pages); with a page a
// subject reaches no RPC endpoint of oomd (TestPageSubjectReachesNoRPC).
func TestSpoofedSamplesChangeNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := startStackArgs(t, manifest(fmt.Sprintf(hogEntry, "", 1000)+`,
  {"id": "spoofer", "argv": ["${BIN}/spoofer", "--claim", "hog", "--n", "10000"], "dependsOn": ["oomd", "hog"]}`),
		map[string]string{"policy.json": policyJSON}, "--no-memstat-pages")
	c := dialClient(t, ctx, s)
	s.waitLine("spoofer: sent 10000 samples", 30*time.Second)
	rej, err := c.WaitEvent(ctx, "memstatRejected", ctlclient.IsKind("spoofer", "memstatRejected"))
	require.NoError(t, err)
	assert.Equal(t, "claimed=hog", rej.Reason)

	// Wait until oomd has taken in all 10 000 attempts.
	var spoofer, hog oomdpb.SubjectStatus
	for {
		spoofer, hog = subjectStatus(t, ctx, c, "spoofer"), subjectStatus(t, ctx, c, "hog")
		if spoofer.Rejected() >= 10000 {
			break
		}
		waitTicks(t, ctx, c, 1)
	}
	assert.Equal(t, uint64(10000), spoofer.Rejected())
	assert.Equal(t, uint64(0), hog.Bytes(), "spoofed samples must not change the hog's usage")
	assert.Equal(t, oomdpb.SubjectState_normal, hog.State())
	assert.Equal(t, uint64(10000), status(t, ctx, c).RejectedSamples())
	for _, e := range c.Events() {
		assert.NotEqual(t, policy.EventKillDecided, e.Kind, "a spoof caused a kill decision: %+v", e)
	}
	require.NoError(t, auditHasKind(ctx, c, "spoofer", policy.EventMemstatRejected))
}

func subjectStatus(t *testing.T, ctx context.Context, c *ctlclient.Client, subject string) oomdpb.SubjectStatus {
	t.Helper()
	l, err := status(t, ctx, c).Subjects()
	require.NoError(t, err)
	for i := 0; i < l.Len(); i++ {
		if s, _ := l.At(i).Subject(); s == subject {
			return l.At(i)
		}
	}
	t.Fatalf("no subject %q in status", subject)
	return oomdpb.SubjectStatus{}
}

func auditHasKind(ctx context.Context, c *ctlclient.Client, subject string, kind policy.EventKind) error {
	_, err := c.FindAudit(ctx, func(r policy.AuditRecord) bool { return r.Subject == subject && r.Kind == kind })
	return err
}

// pidOf finds a child's pid from execd's "started" log line.
func pidOf(t *testing.T, s *stack, subject string) int {
	t.Helper()
	line := s.waitLine(`started	{"subject": "`+subject+`"`, 10*time.Second)
	var pid int
	_, err := fmt.Sscanf(line[strings.Index(line, `"pid": `)+len(`"pid": `):], "%d", &pid)
	require.NoError(t, err, "no pid in %q", line)
	return pid
}
