package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/services/oomd/policy"
)

func decided(id uint64, subject string, instance uint64) policy.AuditRecord {
	return policy.AuditRecord{Kind: policy.EventKillDecided, Subject: subject, Instance: instance, Bytes: 300, Limit: 200, Decision: id}
}

func ended(kind policy.EventKind, id uint64) policy.AuditRecord {
	return policy.AuditRecord{Kind: kind, Decision: id}
}

// TestDecisionScan: only decisions of the current execd run whose end is not durable
// stay open; every end kind closes one; ids continue above every decision seen, of any
// run; a record with a damaged subject is not adopted (the core would refuse the list).
func TestDecisionScan(t *testing.T) {
	const run, other = 7, 9
	s := newDecisionScan(run)
	for _, r := range []struct {
		rec policy.AuditRecord
		run uint64
	}{
		{decided(1, "hog", 1), run}, {ended(policy.EventKilled, 1), run},
		{decided(2, "hog", 2), run},   // open
		{decided(3, "web", 1), other}, // an earlier execd run: instance 1 is another process now
		{decided(4, "db", 1), run}, {ended(policy.EventSubjectExited, 4), run},
		{decided(5, "a", 1), run}, {ended(policy.EventKillRefused, 5), run},
		{decided(6, "b", 1), run}, {ended(policy.EventKillDenied, 6), run},
		{decided(8, "bad/subject", 1), run},
		{ended(policy.EventKillDenied, 11), other}, // the highest id seen
		{decided(10, "c", 3), run},                 // open
		{policy.AuditRecord{Kind: policy.EventLevelChanged}, run},
	} {
		s.add(r.rec, r.run)
	}
	got := s.result("test")
	assert.Equal(t, uint64(11), got.DecisionBase)
	assert.Equal(t, []policy.DurableDecision{
		{ID: 2, Subject: "hog", Instance: 2, Bytes: 300, Limit: 200},
		{ID: 10, Subject: "c", Instance: 3, Bytes: 300, Limit: 200},
	}, got.Durable)
	assert.Equal(t, 14, got.Records)

	assert.Empty(t, newDecisionScan(0).result("").Durable, "an unknown run adopts nothing")
}

// TestRecoverDecisionsReadsJournalThenSpill: the journal (through a real logd) holds
// decisions 1 (ended) and 2 (open); the spill holds the newer records logd does not
// have yet — 2 ends there, 3 opens — plus duplicates of what logd has, read once.
func TestRecoverDecisionsReadsJournalThenSpill(t *testing.T) {
	dir := t.TempDir()
	log := zaptest.NewLogger(t)
	const run = 42
	f := startLogd(t, dir)
	inJournal := []policy.AuditRecord{decided(1, "hog", 1), ended(policy.EventKilled, 1), decided(2, "hog", 2)}
	for i, r := range inJournal {
		data, err := auditData(SpilledRecord{JournalSeq: uint64(i + 1), Rec: r, ExecdRun: run})
		require.NoError(t, err)
		_, err = f.j.Append(WriterName, uint64(i+1), data)
		require.NoError(t, err)
	}
	require.NoError(t, f.j.Sync(context.Background(), 3))

	sp := openSpill(t, filepath.Join(dir, "audit.spill"), 0)
	defer sp.Close()
	require.NoError(t, sp.Append([]SpilledRecord{
		{JournalSeq: 3, Rec: decided(2, "hog", 2), ExecdRun: run}, // logd has it too
		{JournalSeq: 4, Rec: ended(policy.EventKilled, 2), ExecdRun: run},
		{JournalSeq: 5, Rec: decided(3, "web", 1), ExecdRun: run},
	}))

	a := NewLogdAuditor(f.sock, log)
	a.UseSpill(sp, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, a.Open(ctx))
	defer a.Close()
	got, err := a.RecoverDecisions(ctx, run)
	require.NoError(t, err)
	assert.Equal(t, uint64(3), got.DecisionBase)
	assert.Equal(t, []policy.DurableDecision{{ID: 3, Subject: "web", Instance: 1, Bytes: 300, Limit: 200}}, got.Durable)
	assert.Equal(t, 5, got.Records, "the duplicate spilled record is read once")
	assert.Equal(t, "logd journal and 2 spilled records", got.Source)

	// logd gone: the spill alone, said so.
	f.srv.Close(time.Second)
	require.NoError(t, os.Remove(f.sock))
	b := NewLogdAuditor(f.sock, log)
	b.UseSpill(sp, 0)
	require.NoError(t, b.Open(ctx))
	defer b.Close()
	got, err = b.RecoverDecisions(ctx, run)
	require.NoError(t, err)
	assert.Equal(t, "nothing from logd (unreachable at start) and 3 spilled records", got.Source)
	assert.Equal(t, []policy.DurableDecision{{ID: 3, Subject: "web", Instance: 1, Bytes: 300, Limit: 200}}, got.Durable)
}

// TestExecdRunIsStableAndNamesTheParent: the same process computes the same run; it is
// never 0.
func TestExecdRunIsStableAndNamesTheParent(t *testing.T) {
	a, err := ExecdRun()
	require.NoError(t, err)
	b, err := ExecdRun()
	require.NoError(t, err)
	assert.Equal(t, a, b)
	assert.NotZero(t, a)
	_, err = procStartTime(os.Getpid())
	require.NoError(t, err)
}

// TestSpillReadsVersion1Records: a spill file written before records carried the execd
// run is still read (run 0: unknown, so its decisions are not adopted).
func TestSpillReadsVersion1Records(t *testing.T) {
	r := spillRec(5)
	r.ExecdRun = 99
	r.Rec.TracePos = "trace-1-000001.otr:4096"
	v2 := encodeSpilled(nil, r)
	got, err := decodeSpilled(v2)
	require.NoError(t, err)
	assert.Equal(t, uint64(99), got.ExecdRun)
	assert.Equal(t, "trace-1-000001.otr:4096", got.Rec.TracePos)

	// Version 1: no execd run, no trace position length (and so no position).
	v1 := append([]byte{1}, v2[1:51]...)
	v1 = append(v1, v2[59:62]...)
	v1 = append(v1, v2[63:63+len(r.Rec.Subject)+len(r.Rec.Reason)]...)
	got, err = decodeSpilled(v1)
	require.NoError(t, err)
	want := r
	want.ExecdRun = 0
	want.Rec.WriterSeq = 5
	want.Rec.TracePos = ""
	assert.Equal(t, want, got)

	_, err = decodeSpilled(append([]byte{3}, v2[1:]...))
	assert.ErrorContains(t, err, "unknown record version 3")
}
