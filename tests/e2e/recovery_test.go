package e2e

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/ctlclient"
)

// startWithHog starts recoveryManifest's stack with policyJSON and returns it, with a
// client, once oomd registered the hog.
func startWithHog(t *testing.T, ctx context.Context) (*stack, *ctlclient.Client) {
	t.Helper()
	return startWithHogFlags(t, ctx, "")
}

// startWithHogFlags is startWithHog with oomdFlags appended to oomd's argv
// (recoveryManifest).
func startWithHogFlags(t *testing.T, ctx context.Context, oomdFlags string) (*stack, *ctlclient.Client) {
	t.Helper()
	s := startStack(t, recoveryManifest(oomdFlags), map[string]string{"policy.json": policyJSON})
	c := dialClient(t, ctx, s)
	_, err := c.WaitEvent(ctx, "hog registered", ctlclient.IsKind("hog", "subjectRegistered"))
	require.NoError(t, err)
	return s, c
}

// recoveryManifest is logd and oomd, both restarted by execd when they crash, a hog and
// a critical hog (whose crossing is denied, to put audit records in logd). oomdFlags are
// appended to oomd's argv.
func recoveryManifest(oomdFlags string) string {
	return `{"services": [
  {"id": "logd", "argv": ["${BIN}/logd-stub", "--socket", "${RUNTIME_DIR}/logd.sock", "--dir", "${RUNTIME_DIR}/journal"],
   "critical": true, "stopTimeoutMs": 2000, "restart": "on-failure"},
  {"id": "oomd", "argv": ["${BIN}/oomd", "--socket", "${RUNTIME_DIR}/oomd.sock", "--logd", "${RUNTIME_DIR}/logd.sock",
                          "--enable-inject", "--policy", "${RUNTIME_DIR}/policy.json"` + oomdFlags + `],
   "role": "watchdog", "critical": true, "dependsOn": ["logd"], "stopTimeoutMs": 2000, "restart": "on-failure"},
  {"id": "hog", "argv": ["${BIN}/hog", "--step-every", "0", "--max-bytes", "67108864"],
   "injectable": true, "dependsOn": ["oomd"], "stopTimeoutMs": 1000},
  {"id": "pinned", "argv": ["${BIN}/hog", "--step-every", "0", "--max-bytes", "67108864"],
   "injectable": true, "critical": true, "dependsOn": ["oomd"], "stopTimeoutMs": 1000}
]}`
}

// auditEntry is one logd journal entry as Control.audit returns it.
type auditEntry struct {
	seq       uint64
	writer    string
	writerSeq uint64
	kind      oomdpb.EventKind
	subject   string
	decision  uint64
}

// readAudit reads every journal entry through oomd's Control.audit, page by page.
func readAudit(t *testing.T, ctx context.Context, c *ctlclient.Client) []auditEntry {
	t.Helper()
	var out []auditEntry
	since := uint64(0)
	for {
		f, rel := c.Ctl.Audit(ctx, func(p oomdpb.Control_audit_Params) error {
			p.SetSinceSeq(since)
			p.SetLimit(1024)
			return nil
		})
		res, err := f.Struct()
		require.NoError(t, err)
		require.Zero(t, res.Missed(), "journal rotated records away during the test")
		l, err := res.Entries()
		require.NoError(t, err)
		for i := 0; i < l.Len(); i++ {
			e := l.At(i)
			r, err := e.Record()
			require.NoError(t, err)
			w, _ := e.Writer()
			subj, _ := r.Subject()
			out = append(out, auditEntry{seq: e.Seq(), writer: w, writerSeq: r.WriterSeq(), kind: r.Kind(), subject: subj, decision: r.Decision()})
		}
		next := res.NextSeq()
		rel()
		if l.Len() == 0 || next == since {
			return out
		}
		since = next
	}
}

// checkWriterSequence asserts that oomd's records in logd are exactly 1, 2, 3, ... in
// journal order: no duplicate and no gap, whatever restarts happened.
func checkWriterSequence(t *testing.T, entries []auditEntry) []auditEntry {
	t.Helper()
	var mine []auditEntry
	for _, e := range entries {
		if e.writer == "oomd" {
			mine = append(mine, e)
		}
	}
	for i, e := range mine {
		require.Equal(t, uint64(i+1), e.writerSeq, "oomd's record #%d in logd (journal seq %d) has writerSeq %d: %+v", i+1, e.seq, e.writerSeq, mine)
	}
	return mine
}

// waitAudit reads logd's journal through oomd until it holds a record of kind about
// subject, and returns all entries.
func waitAudit(t *testing.T, ctx context.Context, c *ctlclient.Client, subject string, kind oomdpb.EventKind) []auditEntry {
	t.Helper()
	for {
		entries := readAudit(t, ctx, c)
		if _, ok := find(entries, subject, kind); ok {
			return entries
		}
		waitTicks(t, ctx, c, 1)
	}
}

func find(entries []auditEntry, subject string, kind oomdpb.EventKind) (auditEntry, bool) {
	for _, e := range entries {
		if e.subject == subject && e.kind == kind {
			return e, true
		}
	}
	return auditEntry{}, false
}

// TestRestartedOomdStillKills: oomd is SIGKILLed mid-run; execd restarts it, hands it
// every live subject again and delivers each subject a fresh memstat connection, so a
// hog that crosses hardBytes afterwards is still killed. The new instance continues
// oomd's writer sequence in logd instead of colliding with the old one's records.
func TestRestartedOomdStillKills(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	s := startStack(t, recoveryManifest(""), map[string]string{"policy.json": policyJSON})
	c := dialClient(t, ctx, s)
	for _, subj := range []string{"hog", "pinned"} {
		_, err := c.WaitEvent(ctx, subj+" registered", ctlclient.IsKind(subj, "subjectRegistered"))
		require.NoError(t, err)
	}
	// Before the crash: a denial, audited by the first oomd.
	require.NoError(t, c.Inject(ctx, "pinned", 16<<20))
	_, err := c.WaitEvent(ctx, "pinned denied", ctlclient.IsKind("pinned", "killDenied"))
	require.NoError(t, err)
	s.waitLine("oomd: kill denied (subject=pinned", 10*time.Second)

	oomdPid := pidOf(t, s, "oomd")
	require.NoError(t, syscall.Kill(oomdPid, syscall.SIGKILL))
	s.waitLine(`restart scheduled	{"subject": "oomd"`, 10*time.Second)
	s.waitCount("oomd: ready", 2, 30*time.Second)

	c2 := dialClient(t, ctx, s)
	for _, subj := range []string{"hog", "pinned"} {
		_, err := c2.WaitEvent(ctx, subj+" registered with the new oomd", ctlclient.IsKind(subj, "subjectRegistered"))
		require.NoError(t, err)
	}
	// The pinned hog changed nothing since the crash: the new oomd learns its usage only
	// because lib/memstat re-publishes the latest value on the new connection, and denies
	// it again.
	_, err = c2.WaitEvent(ctx, "pinned denied by the new oomd", ctlclient.IsKind("pinned", "killDenied"))
	require.NoError(t, err)
	// Inject reaches the hog through its TestHook, offered again on the new connection.
	injectToKill(t, ctx, c2, "hog", 16<<20)
	killed, err := c2.WaitEvent(ctx, "hog killed by the restarted oomd", ctlclient.IsKind("hog", "killed"))
	require.NoError(t, err)
	assert.Greater(t, killed.Bytes, uint64(8<<20))
	assert.Equal(t, fmt.Sprintf("oomd: kill app=hog bytes=%d", killed.Bytes), s.waitLine("oomd: kill app=hog", 10*time.Second))

	mine := checkWriterSequence(t, readAudit(t, ctx, c2))
	denied, ok := find(mine, "pinned", oomdpb.EventKind_killDenied)
	require.True(t, ok, "the first oomd's denial is in logd: %+v", mine)
	decided, ok := find(mine, "hog", oomdpb.EventKind_killDecided)
	require.True(t, ok, "the restarted oomd's kill decision is in logd: %+v", mine)
	assert.Equal(t, killed.Decision, decided.decision)
	assert.Greater(t, decided.writerSeq, denied.writerSeq, "the new oomd continues the writer sequence")
	require.NoError(t, s.stop(20*time.Second))
}

// logdOutage SIGKILLs logd and keeps it down: a file stands where its journal
// directory was, so every restart execd makes fails until restore puts the directory
// back; restore returns once the next logd instance is ready.
func logdOutage(t *testing.T, s *stack) (restore func()) {
	t.Helper()
	logdPid := pidOf(t, s, "logd")
	require.NoError(t, syscall.Kill(logdPid, syscall.SIGSTOP)) // nothing moves while we swap
	back := journalAside(t, s)
	require.NoError(t, syscall.Kill(logdPid, syscall.SIGKILL))
	s.waitLine(`exited	{"subject": "logd", "instance": 2`, 20*time.Second) // a restart that failed
	return func() {
		t.Helper()
		back()
		s.waitCount("logd ready", 2, 60*time.Second)
	}
}

// journalAside moves logd's journal directory out of the way and puts a file in its
// place, so every logd execd starts fails; back puts the directory back.
func journalAside(t *testing.T, s *stack) (back func()) {
	t.Helper()
	journalDir, aside := s.path("journal"), s.path("journal.aside")
	require.NoError(t, os.Rename(journalDir, aside))
	require.NoError(t, os.WriteFile(journalDir, nil, 0o600))
	return func() {
		t.Helper()
		require.NoError(t, os.Remove(journalDir))
		require.NoError(t, os.Rename(aside, journalDir))
	}
}

// TestLogdOutageSpillsAndReplaysExactlyOnce: logd is SIGKILLed mid-run and cannot come
// back for a while (its journal directory is out of the way, so execd's restarts fail).
// oomd spills the audit records to its own fsync'ed file, which counts as the durable
// audit: a hog that crosses hardBytes is still killed while logd is down. When logd can
// start again, execd's next restart brings it back with its sequence numbers, oomd
// replays the spill, and every audit record is in logd exactly once, in order.
func TestLogdOutageSpillsAndReplaysExactlyOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	s := startStack(t, recoveryManifest(`, "--spill", "${RUNTIME_DIR}/audit.spill"`), map[string]string{"policy.json": policyJSON})
	c := dialClient(t, ctx, s)
	for _, subj := range []string{"hog", "pinned"} {
		_, err := c.WaitEvent(ctx, subj+" registered", ctlclient.IsKind(subj, "subjectRegistered"))
		require.NoError(t, err)
	}
	// Before the outage: a denial, durable in logd.
	require.NoError(t, c.Inject(ctx, "pinned", 16<<20))
	_, err := c.WaitEvent(ctx, "pinned denied", ctlclient.IsKind("pinned", "killDenied"))
	require.NoError(t, err)
	before := waitAudit(t, ctx, c, "pinned", oomdpb.EventKind_killDenied)

	restore := logdOutage(t, s)

	injectToKill(t, ctx, c, "hog", 16<<20)
	spilled, err := c.WaitEvent(ctx, "auditSpilled", ctlclient.IsKind("", "auditSpilled"))
	require.NoError(t, err)
	assert.Contains(t, spilled.Reason, "cause=logd")
	killed, err := c.WaitEvent(ctx, "hog killed while logd is down", ctlclient.IsKind("hog", "killed"))
	require.NoError(t, err)
	s.waitLine("oomd: kill app=hog", 10*time.Second)
	// logd is still down: every instance after the first exited without becoming ready.
	assert.Equal(t, 1, s.lines.count("logd ready"), "logd came back before the kill")
	fi, err := os.Stat(s.path("audit.spill"))
	require.NoError(t, err)
	assert.Positive(t, fi.Size(), "the kill decision's record is durable in the spill file")
	af, arel := c.Ctl.Audit(ctx, func(p oomdpb.Control_audit_Params) error { p.SetLimit(1); return nil })
	_, err = af.Struct()
	arel()
	assert.Error(t, err, "logd is not connected")

	restore()
	s.waitLine("spill file replayed to logd and emptied", 30*time.Second)
	fi, err = os.Stat(s.path("audit.spill"))
	require.NoError(t, err)
	assert.Zero(t, fi.Size(), "the spill is emptied once logd has every record")

	after := readAudit(t, ctx, c)
	mine := checkWriterSequence(t, after)
	for i := 1; i < len(after); i++ {
		require.Greater(t, after[i].seq, after[i-1].seq, "logd's journal seqs only grow across its restart")
	}
	for i, e := range before {
		assert.Equal(t, e, after[i], "what logd held before the outage keeps its place and sequence numbers")
	}
	decided, ok := find(mine, "hog", oomdpb.EventKind_killDecided)
	require.True(t, ok, "the spilled kill decision reached logd: %+v", mine)
	assert.Equal(t, killed.Decision, decided.decision)
	_, ok = find(mine, "pinned", oomdpb.EventKind_killDenied)
	assert.True(t, ok)
	require.NoError(t, s.stop(20*time.Second))
}

// TestSpillSurvivesOomdRestart: during a logd outage oomd spills, is SIGKILLed, and its
// next instance starts from the spill file without logd (it continues the writer
// sequence from the last spilled record), spills its own records after the old ones and
// still kills. When logd is back, the spill is replayed: every record exactly once, in
// order.
func TestSpillSurvivesOomdRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	s := startStack(t, recoveryManifest(`, "--spill", "${RUNTIME_DIR}/audit.spill"`), map[string]string{"policy.json": policyJSON})
	c := dialClient(t, ctx, s)
	for _, subj := range []string{"hog", "pinned"} {
		_, err := c.WaitEvent(ctx, subj+" registered", ctlclient.IsKind(subj, "subjectRegistered"))
		require.NoError(t, err)
	}
	restore := logdOutage(t, s)

	require.NoError(t, c.Inject(ctx, "pinned", 16<<20))
	_, err := c.WaitEvent(ctx, "pinned denied", ctlclient.IsKind("pinned", "killDenied"))
	require.NoError(t, err)
	_, err = c.WaitEvent(ctx, "the denial spilled", ctlclient.IsKind("", "auditSpilled"))
	require.NoError(t, err)

	require.NoError(t, syscall.Kill(pidOf(t, s, "oomd"), syscall.SIGKILL))
	s.waitCount("oomd: ready", 2, 30*time.Second) // without logd: it continues from the spill
	assert.Equal(t, 1, s.lines.count("logd ready"), "logd is still down")
	c2 := dialClient(t, ctx, s)
	_, err = c2.WaitEvent(ctx, "pinned denied by the new oomd", ctlclient.IsKind("pinned", "killDenied"))
	require.NoError(t, err)
	injectToKill(t, ctx, c2, "hog", 16<<20)
	killed, err := c2.WaitEvent(ctx, "hog killed by the new oomd while logd is down", ctlclient.IsKind("hog", "killed"))
	require.NoError(t, err)
	s.waitLine("oomd: kill app=hog", 10*time.Second)
	assert.Equal(t, 1, s.lines.count("logd ready"), "logd came back before the kill")

	restore()
	s.waitLine("spill file replayed to logd and emptied", 30*time.Second)
	mine := checkWriterSequence(t, waitAudit(t, ctx, c2, "hog", oomdpb.EventKind_killDecided))
	denials := 0
	for _, e := range mine {
		if e.subject == "pinned" && e.kind == oomdpb.EventKind_killDenied {
			denials++
		}
	}
	assert.Equal(t, 2, denials, "one denial per oomd instance, each exactly once: %+v", mine)
	decided, _ := find(mine, "hog", oomdpb.EventKind_killDecided)
	assert.Equal(t, killed.Decision, decided.decision)
	require.NoError(t, s.stop(20*time.Second))
}

// TestFrozenLogdDoesNotDelayAKill: logd is frozen (SIGSTOP): it accepts but never
// acknowledges. After the sync timeout oomd spills the kill decision's record and the
// kill proceeds while logd is still frozen (contrast TestKillIsAuditedBeforeTerminateAndReportedAfterExit: without
// a spill file, where the kill waits). Once logd runs again the records are in it
// exactly once, in order.
func TestFrozenLogdDoesNotDelayAKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	s := startStack(t, recoveryManifest(`, "--spill", "${RUNTIME_DIR}/audit.spill", "--audit-sync-timeout", "200ms"`),
		map[string]string{"policy.json": policyJSON})
	c := dialClient(t, ctx, s)
	_, err := c.WaitEvent(ctx, "hog registered", ctlclient.IsKind("hog", "subjectRegistered"))
	require.NoError(t, err)

	logdPid := pidOf(t, s, "logd")
	require.NoError(t, syscall.Kill(logdPid, syscall.SIGSTOP))
	frozen := true
	defer func() {
		if frozen {
			syscall.Kill(logdPid, syscall.SIGCONT)
		}
	}()
	injectToKill(t, ctx, c, "hog", 16<<20)
	spilled, err := c.WaitEvent(ctx, "auditSpilled", ctlclient.IsKind("", "auditSpilled"))
	require.NoError(t, err)
	assert.Contains(t, spilled.Reason, "deadline exceeded", "spilled because logd did not sync in time")
	killed, err := c.WaitEvent(ctx, "hog killed while logd is frozen", ctlclient.IsKind("hog", "killed"))
	require.NoError(t, err)
	s.waitLine("oomd: kill app=hog", 10*time.Second)

	require.NoError(t, syscall.Kill(logdPid, syscall.SIGCONT))
	frozen = false
	s.waitLine("spill file replayed to logd and emptied", 30*time.Second)
	mine := checkWriterSequence(t, waitAudit(t, ctx, c, "hog", oomdpb.EventKind_killDecided))
	decided, _ := find(mine, "hog", oomdpb.EventKind_killDecided)
	assert.Equal(t, killed.Decision, decided.decision)
	require.NoError(t, s.stop(20*time.Second))
}
