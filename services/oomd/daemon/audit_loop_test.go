package daemon

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3/rpc"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/policy"
)

func TestAuditViewNext(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    auditView
		want auditStep
	}{
		{"idle, connected", auditView{connected: true}, stepWait},
		{"idle, no logd", auditView{}, stepWait},
		{"idle, no logd, spill holds records", auditView{hasSpill: true, spilled: true}, stepWait},
		{"pending, no spill file, no logd: they wait", auditView{pending: 2}, stepWait},
		{"pending, no spill file, logd", auditView{pending: 2, connected: true}, stepFlush},
		{"pending, empty spill, logd", auditView{pending: 2, hasSpill: true, connected: true}, stepFlush},
		{"pending, empty spill, no logd", auditView{pending: 2, hasSpill: true}, stepSpill},
		{"pending behind spilled records, logd: spilled to keep the order", auditView{pending: 1, hasSpill: true, spilled: true, connected: true}, stepSpill},
		{"pending behind spilled records, no logd", auditView{pending: 1, hasSpill: true, spilled: true}, stepSpill},
		{"nothing pending, spill holds records, logd", auditView{hasSpill: true, spilled: true, connected: true}, stepReplay},
	} {
		assert.Equal(t, tc.want, tc.v.next(), tc.name)
	}
}

func TestAuditViewSpillReason(t *testing.T) {
	const cause = "logd: sync: context deadline exceeded"
	assert.Equal(t, cause, auditView{pending: 1, hasSpill: true}.spillReason(cause), "no logd")
	assert.Equal(t, cause, auditView{pending: 1, hasSpill: true, spilled: true}.spillReason(cause), "no logd, spill not empty")
	assert.Equal(t, "earlier records not yet replayed to logd",
		auditView{pending: 1, hasSpill: true, spilled: true, connected: true}.spillReason(cause), "logd, spill not empty")
}

func TestBackoff(t *testing.T) {
	var b backoff
	assert.Zero(t, b.delay(), "no delay before any failure")
	var got []time.Duration
	for range 8 {
		got = append(got, b.grow())
	}
	ms := time.Millisecond
	assert.Equal(t, []time.Duration{50 * ms, 100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 2000 * ms, 2000 * ms}, got)
	assert.Equal(t, 2*time.Second, b.delay())
	b.reset()
	assert.Zero(t, b.delay())
	assert.Equal(t, 50*ms, b.grow(), "after progress it starts again from the first delay")
}

// newLoopAuditor is an auditor whose logd never answers (nothing listens on its socket),
// with a spill file bounded by maxSpill (0: the default) and its writer position at base,
// as Open leaves it when it continues from a spill.
func newLoopAuditor(t *testing.T, maxSpill int64, base uint64) (*LogdAuditor, *Spill, *acks) {
	t.Helper()
	dir := t.TempDir()
	a := NewLogdAuditor(filepath.Join(dir, "nobody.sock"), zaptest.NewLogger(t))
	sp := openSpill(t, filepath.Join(dir, "audit.spill"), maxSpill)
	t.Cleanup(func() { sp.Close() })
	a.UseSpill(sp, 0)
	k := newAcks()
	a.SetSpillHook(k.spill)
	a.base, a.opened = base, true
	return a, sp, k
}

// TestAuditLoopSpillsWithoutLogd: with no session, a step puts the pending records in the
// spill file at base + their number, acknowledges them through the hook with the cause,
// and leaves nothing to do.
func TestAuditLoopSpillsWithoutLogd(t *testing.T) {
	a, sp, k := newLoopAuditor(t, 0, 41)
	l := newAuditLoop(a, nil, k.ack)
	ctx := context.Background()

	a.Submit([]policy.AuditRecord{coreRec(1, "hog1"), coreRec(2, "hog2")})
	require.True(t, l.step(ctx), "spilling is progress")
	assert.Empty(t, a.snapshot(), "nothing pending once spilled")
	assert.Equal(t, []uint64{42, 43}, journalSeqs(sp))
	assert.Equal(t, []uint64{2}, k.spilled)
	assert.Equal(t, []string{"logd unreachable"}, k.reasons)
	assert.False(t, l.step(ctx), "nothing left to do without logd")
	assert.Nil(t, l.retry, "nothing to retry")

	l.cause = "logd: logd connection closed"
	a.Submit([]policy.AuditRecord{coreRec(3, "hog3")})
	require.True(t, l.step(ctx))
	assert.Equal(t, []uint64{42, 43, 44}, journalSeqs(sp))
	assert.Equal(t, []string{"logd unreachable", "logd: logd connection closed"}, k.reasons, "the reason is why the session ended")
}

// TestAuditLoopWaitsWhenTheSpillIsFull: records the full spill refuses stay pending and
// unacknowledged; a retry is armed, further apart after each refusal, and the first
// spill that succeeds again resets the delay.
func TestAuditLoopWaitsWhenTheSpillIsFull(t *testing.T) {
	a, sp, k := newLoopAuditor(t, spillMinMaxBytes, 0)
	n := uint64(0)
	for _, batch := range []uint64{16, 1} { // fewer fsyncs than one record at a time
		for sp.Append(spillRecs(n+1, n+batch)) == nil {
			n += batch
		}
	}
	a.base = n
	l := newAuditLoop(a, nil, k.ack)
	ctx := context.Background()

	a.Submit([]policy.AuditRecord{coreRec(1, "wait1")})
	for i, want := range []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond} {
		msg := fmt.Sprintf("refusal %d", i+1)
		require.False(t, l.step(ctx), msg)
		assert.Equal(t, uint64(i+1), a.spillFailures.Load(), msg)
		assert.NotNil(t, l.retry, "%s: a retry is armed", msg)
		assert.Equal(t, want, l.respill.delay(), msg)
	}
	assert.Equal(t, []policy.AuditRecord{coreRec(1, "wait1")}, a.snapshot(), "the record waits in memory")
	assert.Zero(t, k.acked, "nothing is acknowledged while it is durable nowhere")
	assert.Equal(t, int(n), sp.Len(), "the full spill is left as it is")

	require.NoError(t, sp.Reset()) // room again (as after a replay)
	require.True(t, l.step(ctx))
	assert.Equal(t, uint64(1), k.acked)
	assert.Zero(t, l.respill.delay(), "a spill that succeeds resets the delay")
}

// pipeSession is a logd session on one end of a pipe; closing the returned end is logd
// going away.
func pipeSession(t *testing.T) (*logdSession, net.Conn) {
	t.Helper()
	ours, theirs := net.Pipe()
	conn := rpc.NewConn(rpc.NewStreamTransport(ours), nil)
	t.Cleanup(func() { conn.Close(); theirs.Close() })
	return &logdSession{conn: conn, log: zaptest.NewLogger(t)}, theirs
}

// TestAuditLoopTakesDialResultsAndLosesSessions plays the dialer: every dial's result
// grows the redial delay whether it brought a session or not, a session's end is seen
// and recorded as the cause of what spills next, and wait ends with ctx.
func TestAuditLoopTakesDialResultsAndLosesSessions(t *testing.T) {
	a, _, k := newLoopAuditor(t, 0, 0)
	l := newAuditLoop(a, nil, k.ack)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l.dialing = true // a dial is under way: wait starts no other

	l.sessions <- nil
	require.True(t, l.wait(ctx))
	assert.False(t, l.dialing)
	assert.Nil(t, l.s, "a failed dial brings no session")
	assert.Equal(t, 50*time.Millisecond, l.redial.delay())

	s, logd := pipeSession(t)
	l.dialing = true
	l.sessions <- s
	require.True(t, l.wait(ctx))
	assert.Same(t, s, l.s)
	assert.Equal(t, 100*time.Millisecond, l.redial.delay(), "a session does not reset the delay: only an acknowledgement does")
	assert.True(t, l.view(0).connected)
	a.mu.Lock()
	a.journal = oomdpb.Journal_ServerToClient(&hungJournal{}) // as connect leaves it
	a.mu.Unlock()
	connected, _ := a.State()
	require.True(t, connected)

	require.NoError(t, logd.Close())
	l.dialing = true // keep wait from dialing once the session is gone
	require.True(t, l.wait(ctx), "the session's end wakes the loop")
	require.NoError(t, ctx.Err(), "woken by the session's end, not the deadline")
	assert.Nil(t, l.s)
	assert.Equal(t, "logd: logd connection closed", l.cause)
	connected, _ = a.State()
	assert.False(t, connected, "the lost session's journal is let go")

	l.retry = time.After(0)
	require.True(t, l.wait(ctx))
	assert.Nil(t, l.retry, "a retry that fired is disarmed")

	cancel()
	assert.False(t, l.wait(ctx), "wait ends with ctx")
}

// TestAuditorDoneDropsAcknowledgedRecords: an acknowledgement up to n drops the pending
// records up to n, keeps the rest in order, and one below them changes nothing.
func TestAuditorDoneDropsAcknowledgedRecords(t *testing.T) {
	a := NewLogdAuditor("", zaptest.NewLogger(t))
	a.Submit([]policy.AuditRecord{coreRec(4, "a"), coreRec(5, "b"), coreRec(6, "c")})
	a.done(3)
	assert.Len(t, a.snapshot(), 3)
	a.done(5)
	assert.Equal(t, []policy.AuditRecord{coreRec(6, "c")}, a.snapshot())
	a.done(6)
	assert.Empty(t, a.snapshot())
}

func journalSeqs(sp *Spill) []uint64 {
	var out []uint64
	for _, r := range sp.Records() {
		out = append(out, r.JournalSeq)
	}
	return out
}
