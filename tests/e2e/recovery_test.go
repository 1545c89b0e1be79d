package e2e

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/ctlclient"
)

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
	require.NoError(t, c2.Inject(ctx, "hog", 16<<20))
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
