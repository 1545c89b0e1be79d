package e2e

import (
	"context"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/policy"
)

// countAudit counts oomd's records of kind about subject.
func countAudit(entries []auditEntry, subject string, kind oomdpb.EventKind) (n int, decisions []uint64) {
	for _, e := range entries {
		if e.writer == "oomd" && e.subject == subject && e.kind == kind {
			n++
			decisions = append(decisions, e.decision)
		}
	}
	return n, decisions
}

// requestKillWithExecdFrozen freezes execd (SIGSTOP), makes the hog cross its hard
// limit and returns once oomd's terminate request went out (its killDecided record is
// durable), with thaw to let execd carry it out. execd is thawed at the test's end if
// the test did not.
func requestKillWithExecdFrozen(t *testing.T, ctx context.Context, s *stack, c *ctlclient.Client) (requested policy.Event, thaw func()) {
	t.Helper()
	// The inject travels on the hog's end of its memstat socketpair, which execd's
	// broker delivers to the hog only after oomd registered it: freezing execd in
	// between left the inject unanswered (seen under load).
	s.waitLine("connected child's memstat to the watchdog\t{\"subject\": \"hog\"", 10*time.Second)
	execd := s.cmd.Process.Pid
	require.NoError(t, syscall.Kill(execd, syscall.SIGSTOP))
	var once sync.Once
	thaw = func() { once.Do(func() { require.NoError(t, syscall.Kill(execd, syscall.SIGCONT)) }) }
	t.Cleanup(thaw)
	require.NoError(t, c.Inject(ctx, "hog", 16<<20))
	requested, err := c.WaitEvent(ctx, "terminate requested (audit durable)", ctlclient.IsKind("hog", "killRequested"))
	require.NoError(t, err)
	return requested, thaw
}

// TestRestartContinuesADurableDecision: oomd decided to kill the hog, its killDecided
// record is durable in logd and its terminate request went to execd, which is frozen
// (SIGSTOP) so nothing answers; then oomd is SIGKILLed and execd thawed. Whether execd
// still carries out the dead oomd's request (the hog's exit, with that decision, is
// kept for the next oomd) or not (the hog registers again, still above its hard
// limit), the restarted oomd continues the same decision: the journal holds exactly one
// killDecided and one killed for the hog, with the same id, and the kill marker is
// printed once. Without the read-back (daemon.Config.Durable left empty) either the
// decision is made twice or the kill is never reported.
func TestRestartContinuesADurableDecision(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	s, c := startWithHog(t, ctx)
	requested, thaw := requestKillWithExecdFrozen(t, ctx, s, c)

	require.NoError(t, syscall.Kill(pidOf(t, s, "oomd"), syscall.SIGKILL))
	thaw()
	s.waitCount("oomd: ready", 2, 30*time.Second)
	s.waitLine("oomd: kill app=hog", 30*time.Second)

	decided := oneKillAcrossRestart(t, ctx, s, 1)
	assert.Equal(t, []uint64{requested.Decision}, decided)
	require.NoError(t, s.stop(20*time.Second))
}

// TestCrashBeforeKilledIsDurableCompletesTheKill: the hog's kill decision is durable in
// logd and its terminate request waits in execd (frozen). Then logd is SIGKILLed and
// cannot come back (a file stands where its journal directory was), execd is thawed,
// terminates the hog and reports its exit, and oomd completes the kill: the killed
// event and marker are out, its record waits for logd. oomd is SIGKILLed before that
// record is durable. oomd answers an exit report only once what it caused is durable,
// so execd still holds the report, and hands it to the next oomd, which adopted the open
// decision from the journal and completes it: one killDecided and one killed for the
// hog, with the same decision. The marker is printed twice, by each oomd that completed
// the kill. Answered at once, the report would have died with the first oomd and the
// decision would have stayed open for ever, with no killed record.
func TestCrashBeforeKilledIsDurableCompletesTheKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	// The next oomd must read the journal back: logd's restarts back off while its
	// journal is out of the way, so oomd waits for it longer than the default 10 s.
	s, c := startWithHogFlags(t, ctx, `, "--logd-start-wait", "60s"`)
	logd, oomd := pidOf(t, s, "logd"), pidOf(t, s, "oomd")
	requested, thaw := requestKillWithExecdFrozen(t, ctx, s, c)

	journalBack := journalAside(t, s)
	require.NoError(t, syscall.Kill(logd, syscall.SIGKILL))
	thaw()

	killed, err := c.WaitEvent(ctx, "the kill completed", ctlclient.IsKind("hog", "killed"))
	require.NoError(t, err)
	assert.Equal(t, requested.Decision, killed.Decision)
	require.GreaterOrEqual(t, status(t, ctx, c).AuditWaiting(), uint64(1), "the killed record waits for logd")
	require.NoError(t, syscall.Kill(oomd, syscall.SIGKILL))

	journalBack()
	s.waitCount("oomd: ready", 2, 60*time.Second)
	decided := oneKillAcrossRestart(t, ctx, s, 2)
	assert.Equal(t, []uint64{requested.Decision}, decided)
	require.NoError(t, s.stop(20*time.Second))
}

// TestCrashWhileLogdIsFrozenDecidesOnce is the fault of issue #15: oomd is SIGKILLed
// while its kill decision waits for a frozen logd (no spill file, so the kill waits).
// The dead oomd's record may still reach logd when it thaws, before or after the new
// oomd opens the journal: logd fences the old Appender at that open, and the new oomd
// reads the journal back after it. Either way the journal holds one killDecided for the
// hog and one killed, the writer sequence has no duplicate or gap, and the kill marker
// is printed once.
func TestCrashWhileLogdIsFrozenDecidesOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	s, c := startWithHog(t, ctx)

	logd := pidOf(t, s, "logd")
	require.NoError(t, syscall.Kill(logd, syscall.SIGSTOP))
	frozen := true
	defer func() {
		if frozen {
			syscall.Kill(logd, syscall.SIGCONT)
		}
	}()
	require.NoError(t, c.Inject(ctx, "hog", 16<<20))
	_, err := c.WaitEvent(ctx, "kill decided", ctlclient.IsKind("hog", "killDecided"))
	require.NoError(t, err)
	waitTicks(t, ctx, c, 5) // the record is on its way to logd, which does not read it
	require.NoError(t, syscall.Kill(pidOf(t, s, "oomd"), syscall.SIGKILL))
	require.NoError(t, syscall.Kill(logd, syscall.SIGCONT))
	frozen = false
	s.waitCount("oomd: ready", 2, 30*time.Second)
	s.waitLine("oomd: kill app=hog", 30*time.Second)

	oneKillAcrossRestart(t, ctx, s, 1)
	require.NoError(t, s.stop(20*time.Second))
}

// TestWatchdogComesUpWithoutLogd: logd cannot start at all (a file stands where its
// journal directory goes, as on a broken disk). oomd still comes up after
// --logd-start-wait, watches, denies a critical subject and reports it; the hog's kill
// decision waits, because its audit record cannot be made durable (invariant 3). Once
// the directory is mended, execd's next restart of logd succeeds, oomd connects, and
// the waiting records reach the journal in order, and only then the kill happens.
func TestWatchdogComesUpWithoutLogd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	s := startStack(t, recoveryManifest(`, "--logd-start-wait", "500ms"`),
		map[string]string{"policy.json": policyJSON, "journal": "not a directory"})
	s.waitLine("logd unreachable at start and no spill file", 30*time.Second)
	c := dialClient(t, ctx, s)
	for _, subj := range []string{"hog", "pinned"} {
		_, err := c.WaitEvent(ctx, subj+" registered", ctlclient.IsKind(subj, "subjectRegistered"))
		require.NoError(t, err)
	}
	require.NoError(t, c.Inject(ctx, "pinned", 16<<20))
	_, err := c.WaitEvent(ctx, "pinned denied without logd", ctlclient.IsKind("pinned", "killDenied"))
	require.NoError(t, err)
	s.waitLine("oomd: kill denied (subject=pinned", 10*time.Second)
	injectToKill(t, ctx, c, "hog", 16<<20)
	decided, err := c.WaitEvent(ctx, "hog decided", ctlclient.IsKind("hog", "killDecided"))
	require.NoError(t, err)
	waitTicks(t, ctx, c, 20)
	assert.Zero(t, s.lines.count("oomd: kill app=hog"), "no kill before its audit record is durable")
	st := status(t, ctx, c)
	assert.True(t, st.AuditLogdDown(), "status says logd is down")
	assert.GreaterOrEqual(t, st.AuditWaiting(), uint64(2), "the denial and the decision wait")

	require.NoError(t, os.Remove(s.path("journal")))
	require.NoError(t, os.Mkdir(s.path("journal"), 0o700))
	s.waitLine("logd ready", 60*time.Second)
	s.waitLine("oomd: kill app=hog", 30*time.Second)
	mine := checkWriterSequence(t, waitAudit(t, ctx, c, "hog", oomdpb.EventKind_killed))
	denied, ok := find(mine, "pinned", oomdpb.EventKind_killDenied)
	require.True(t, ok, "the denial made without logd reached it: %+v", mine)
	d, ok := find(mine, "hog", oomdpb.EventKind_killDecided)
	require.True(t, ok)
	assert.Equal(t, decided.Decision, d.decision)
	assert.Less(t, denied.writerSeq, d.writerSeq)
	require.NoError(t, s.stop(20*time.Second))
}

// oneKillAcrossRestart waits, through the restarted oomd, for the hog's killed record and
// 20 more ticks (room for a wrong second decision to show), then requires exactly one
// killDecided and one killed for the hog with the same decision, a writer sequence
// without gap or duplicate, and the kill marker printed `markers` times (once, unless
// the first oomd completed the kill before it died). It returns the decision ids.
func oneKillAcrossRestart(t *testing.T, ctx context.Context, s *stack, markers int) []uint64 {
	t.Helper()
	c2 := dialClient(t, ctx, s)
	for {
		mine := checkWriterSequence(t, readAudit(t, ctx, c2))
		if n, _ := countAudit(mine, "hog", oomdpb.EventKind_killed); n > 0 {
			break
		}
		waitTicks(t, ctx, c2, 1) // the killed record is not gating: it may trail the marker
	}
	waitTicks(t, ctx, c2, 20)
	mine := checkWriterSequence(t, readAudit(t, ctx, c2))
	n, decided := countAudit(mine, "hog", oomdpb.EventKind_killDecided)
	assert.Equal(t, 1, n, "one decision for hog instance 1, across the restart: %+v", mine)
	n, killed := countAudit(mine, "hog", oomdpb.EventKind_killed)
	assert.Equal(t, 1, n, "its kill reported once: %+v", mine)
	assert.Equal(t, decided, killed)
	assert.Equal(t, markers, s.lines.count("oomd: kill app=hog"), "kill markers")
	return decided
}
