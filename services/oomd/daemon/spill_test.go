package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	capnp "capnproto.org/go/capnp/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/internal/safefile"
	"oomd.dev/oomd/services/logd-stub/journal"
	"oomd.dev/oomd/services/logd-stub/server"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/wire"
)

func spillRec(seq uint64) SpilledRecord {
	return SpilledRecord{JournalSeq: seq, Rec: policy.AuditRecord{
		WriterSeq: seq, Tick: 10 * seq, Kind: policy.EventKillDecided, Subject: fmt.Sprintf("hog%d", seq),
		Instance: 1, Bytes: 1 << 30, Limit: 8 << 20, Decision: seq, Reason: "hard limit exceeded",
	}}
}

func spillRecs(from, to uint64) []SpilledRecord {
	var out []SpilledRecord
	for s := from; s <= to; s++ {
		out = append(out, spillRec(s))
	}
	return out
}

func openSpill(t *testing.T, path string, max int64) *Spill {
	t.Helper()
	s, err := OpenSpill(path, max, zaptest.NewLogger(t))
	require.NoError(t, err)
	return s
}

func TestSpillRoundTripAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.spill")
	s := openSpill(t, path, 0)
	require.NoError(t, s.Append(spillRecs(41, 43)))
	require.NoError(t, s.Append(spillRecs(44, 44)))
	require.Error(t, s.Append(spillRecs(46, 46)), "a gap in journal seqs is refused")
	require.NoError(t, s.Close())

	s = openSpill(t, path, 0)
	defer s.Close()
	want := spillRecs(41, 44)
	assert.Equal(t, want, s.Records(), "records come back in order, unchanged")
	last, ok := s.Last()
	assert.True(t, ok)
	assert.Equal(t, uint64(44), last)

	require.NoError(t, s.Reset())
	assert.Zero(t, s.Len())
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Zero(t, fi.Size())
	require.NoError(t, s.Append(spillRecs(45, 45)), "after a reset any seq may start the file")
}

// TestSpillTornTailIsCut truncates the file at every byte offset inside its last record:
// reopening keeps exactly the records before it, cuts the file there, and appends go on.
func TestSpillTornTailIsCut(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.spill")
	s := openSpill(t, path, 0)
	require.NoError(t, s.Append(spillRecs(1, 3)))
	before := s.Size()
	require.NoError(t, s.Append(spillRecs(4, 4)))
	full := s.Size()
	require.NoError(t, s.Close())
	data, err := os.ReadFile(path)
	require.NoError(t, err)

	for cut := before; cut < full; cut++ {
		p := filepath.Join(dir, fmt.Sprintf("cut%d.spill", cut))
		require.NoError(t, os.WriteFile(p, data[:cut], 0o600))
		s := openSpill(t, p, 0)
		assert.Equal(t, spillRecs(1, 3), s.Records(), "cut at %d", cut)
		fi, err := os.Stat(p)
		require.NoError(t, err)
		assert.Equal(t, before, fi.Size(), "the torn tail is cut off the file (cut at %d)", cut)
		require.NoError(t, s.Append(spillRecs(4, 5)), "cut at %d", cut)
		require.NoError(t, s.Close())
		s = openSpill(t, p, 0)
		assert.Equal(t, spillRecs(1, 5), s.Records(), "cut at %d, after appending again", cut)
		require.NoError(t, s.Close())
	}

}

// lostRec is the placeholder recovery puts where a record was lost to corruption.
func lostRec(seq uint64, quarantine string) SpilledRecord {
	return SpilledRecord{JournalSeq: seq, Rec: policy.AuditRecord{WriterSeq: seq, Kind: policy.EventAuditSpilled,
		Reason: "lost: spill file corruption, damaged bytes in " + quarantine}}
}

// TestSpillFlippedByteCostsOnlyThatRecord: a flipped byte anywhere in a middle record
// (the only copy of a kill decision while logd is down) loses that record only: the
// records after it are kept, a placeholder keeps the seqs gap-free for logd, the damaged
// bytes are quarantined, the log says "corrupt", and the repaired file reopens clean.
// A damaged last record (complete, bad checksum) is corruption too, not a torn tail.
func TestSpillFlippedByteCostsOnlyThatRecord(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.spill")
	s := openSpill(t, path, 0)
	require.NoError(t, s.Append(spillRecs(1, 2)))
	start := s.Size()
	require.NoError(t, s.Append(spillRecs(3, 3)))
	end := s.Size()
	require.NoError(t, s.Append(spillRecs(4, 5)))
	full := s.Size()
	require.NoError(t, s.Close())
	data, err := os.ReadFile(path)
	require.NoError(t, err)

	for _, at := range []int64{0, 2, 5, 9, 30, end - start - 1} {
		msg := fmt.Sprintf("byte %d of record 3 flipped", at)
		sub := t.TempDir()
		p := filepath.Join(sub, "audit.spill")
		bad := bytes.Clone(data)
		bad[start+at] ^= 0x40
		require.NoError(t, os.WriteFile(p, bad, 0o600))

		log, logs := observedLog(t)
		s, err := OpenSpill(p, 0, log)
		require.NoError(t, err, msg)
		want := append(append(spillRecs(1, 2), lostRec(3, "audit.spill.quarantine.1")), spillRecs(4, 5)...)
		assert.Equal(t, want, s.Records(), msg)
		assert.Equal(t, 1, s.Corrupt, msg)
		assert.Equal(t, 1, s.Lost, msg)
		q, err := os.ReadFile(filepath.Join(sub, "audit.spill.quarantine.1"))
		require.NoError(t, err, msg)
		assert.Equal(t, bad[start:end], q, "%s: the quarantine holds the damaged bytes", msg)
		errs := logs.FilterMessageSnippet("corrupt").FilterLevelExact(zapcore.ErrorLevel).All()
		require.NotEmpty(t, errs, msg)
		assert.Equal(t, int64(1), errs[len(errs)-1].ContextMap()["recordsLost"], msg)
		require.NoError(t, s.Append(spillRecs(6, 6)), msg)
		require.NoError(t, s.Close())

		log, logs = observedLog(t)
		s, err = OpenSpill(p, 0, log)
		require.NoError(t, err, msg)
		assert.Equal(t, append(want, spillRecs(6, 6)...), s.Records(), msg)
		assert.Zero(t, s.Corrupt, "%s: reopens clean", msg)
		assert.Zero(t, logs.FilterLevelExact(zapcore.ErrorLevel).Len(), msg)
		require.NoError(t, s.Close())
	}

	bad := bytes.Clone(data)
	bad[full-1] ^= 0x40
	p := filepath.Join(dir, "lastflipped.spill")
	require.NoError(t, os.WriteFile(p, bad, 0o600))
	log, logs := observedLog(t)
	s, err = OpenSpill(p, 0, log)
	require.NoError(t, err)
	defer s.Close()
	assert.Equal(t, spillRecs(1, 4), s.Records())
	assert.Equal(t, 1, s.Corrupt)
	assert.Zero(t, logs.FilterMessageSnippet("torn").Len(), "a complete record with a bad checksum is not a torn tail")
	assert.FileExists(t, p+".quarantine.1")
}

func observedLog(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.InfoLevel)
	return zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core)), logs
}

// countingSyncer is the fsync seam: it counts fsyncs and fails them while err is set.
type countingSyncer struct {
	mu  sync.Mutex
	n   int
	err error
}

func (c *countingSyncer) Sync(f *os.File) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if c.err != nil {
		return c.err
	}
	return f.Sync()
}

func (c *countingSyncer) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// TestSpillAppendIsFsynced: Append returns only after an fsync (seen through the seam),
// and an Append whose fsync fails is not acknowledged, leaves no record behind, and
// does not grow the file.
func TestSpillAppendIsFsynced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.spill")
	sy := &countingSyncer{}
	s, err := openSpillWith(path, 0, zaptest.NewLogger(t), sy)
	require.NoError(t, err)
	defer s.Close()
	before := sy.count()
	require.NoError(t, s.Append(spillRecs(1, 3)))
	assert.Equal(t, before+1, sy.count(), "one fsync per appended batch")

	size := s.Size()
	sy.mu.Lock()
	sy.err = errors.New("injected EIO")
	sy.mu.Unlock()
	require.Error(t, s.Append(spillRecs(4, 4)), "an fsync error is not an acknowledgement")
	assert.Equal(t, 3, s.Len())
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, size, fi.Size(), "the unsynced bytes are cut")

	sy.mu.Lock()
	sy.err = nil
	sy.mu.Unlock()
	before = sy.count()
	require.NoError(t, s.Reset())
	assert.Equal(t, before+1, sy.count(), "Reset fsyncs the emptied file")
}

// TestSpillRefusesSymlink: --spill naming a symlink is refused with the path in the
// error, and the file it points at is not touched.
func TestSpillRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "precious")
	require.NoError(t, os.WriteFile(target, bytes.Repeat([]byte("x"), 36893), 0o600))
	link := filepath.Join(dir, "audit.spill")
	require.NoError(t, os.Symlink(target, link))
	_, err := OpenSpill(link, 0, zaptest.NewLogger(t))
	require.ErrorIs(t, err, safefile.ErrSymlink)
	assert.Contains(t, err.Error(), link)
	fi, err := os.Stat(target)
	require.NoError(t, err)
	assert.Equal(t, int64(36893), fi.Size())

	_, err = OpenSpill(dir, 0, zaptest.NewLogger(t))
	assert.ErrorIs(t, err, safefile.ErrNotRegular, "a directory is not a spill file")
}

// TestSpillBound: the file never grows past its bound; a batch that does not fit is
// refused whole (ErrSpillFull) and nothing of it is written.
func TestSpillBound(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.spill")
	const max = spillMinMaxBytes
	s := openSpill(t, path, max)
	defer s.Close()
	_, err := OpenSpill(path, max, zaptest.NewLogger(t))
	require.Error(t, err, "a second process cannot open a spill file in use")

	seq := uint64(1)
	for {
		err := s.Append(spillRecs(seq, seq+9))
		if errors.Is(err, ErrSpillFull) {
			break
		}
		require.NoError(t, err)
		seq += 10
	}
	size := s.Size()
	assert.LessOrEqual(t, size, int64(max))
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, size, fi.Size(), "a refused batch writes nothing")
	assert.Equal(t, int(seq-1), s.Len())
	_, err = OpenSpill(path, 1024, zaptest.NewLogger(t))
	require.Error(t, err, "a bound below the minimum is refused")
}

// logdFixture is an in-process logd (the real journal and server) on a Unix socket.
type logdFixture struct {
	sock string
	j    *journal.Journal
	srv  *rpcx.Server
}

func startLogd(t *testing.T, dir string) *logdFixture {
	t.Helper()
	log := zaptest.NewLogger(t).Named("logd")
	j, err := journal.Open(filepath.Join(dir, "journal"), journal.Options{}, log)
	require.NoError(t, err)
	sock := filepath.Join(dir, "logd.sock")
	l, err := rpcx.Listen(sock)
	require.NoError(t, err)
	srv := rpcx.NewServer(log, server.New(j, log).Bootstrap)
	ctx, cancel := context.WithCancel(context.Background())
	go srv.Serve(ctx, l)
	f := &logdFixture{sock: sock, j: j, srv: srv}
	t.Cleanup(func() { cancel(); srv.Close(2 * time.Second); j.Close() })
	return f
}

// entries returns (writerSeq, subject) of every journal entry of writer "oomd".
func (f *logdFixture) entries(t *testing.T) [][2]any {
	t.Helper()
	es, _, missed, err := f.j.Read(0, 1000, 1<<20)
	require.NoError(t, err)
	require.Zero(t, missed)
	var out [][2]any
	for _, e := range es {
		if e.Writer != WriterName {
			continue
		}
		msg, _, err := capnp.NewMessage(capnp.SingleSegment(e.Data))
		require.NoError(t, err)
		rec, err := oomdpb.ReadRootAuditRecord(msg)
		require.NoError(t, err)
		subj, _ := rec.Subject()
		require.Equal(t, e.WriterSeq, rec.WriterSeq())
		out = append(out, [2]any{e.WriterSeq, subj})
	}
	return out
}

// acks collects what the auditor acknowledged, durable in logd or spilled.
type acks struct {
	mu      sync.Mutex
	acked   uint64
	spilled []uint64
	reasons []string
	wake    chan struct{}
}

func newAcks() *acks { return &acks{wake: make(chan struct{}, 100)} }

func (a *acks) ack(upTo uint64) {
	a.mu.Lock()
	a.acked = max(a.acked, upTo)
	a.mu.Unlock()
	a.wake <- struct{}{}
}

func (a *acks) spill(upTo uint64, reason string) {
	a.mu.Lock()
	a.acked = max(a.acked, upTo)
	a.spilled = append(a.spilled, upTo)
	a.reasons = append(a.reasons, reason)
	a.mu.Unlock()
	a.wake <- struct{}{}
}

func (a *acks) waitAcked(t *testing.T, upTo uint64) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		a.mu.Lock()
		got := a.acked
		a.mu.Unlock()
		if got >= upTo {
			return
		}
		select {
		case <-a.wake:
		case <-deadline:
			t.Fatalf("acked up to %d, want %d", got, upTo)
		}
	}
}

func coreRec(seq uint64, subject string) policy.AuditRecord {
	return policy.AuditRecord{WriterSeq: seq, Kind: policy.EventKillDecided, Subject: subject, Decision: seq, Reason: "hard limit exceeded"}
}

// eventually polls cond (an observation of another goroutine's progress, not a timing
// assertion) until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAuditorSpillsWhileLogdIsDownAndReplaysInOrder: an oomd run that starts from a
// non-empty spill while logd is down continues the journal sequence from it, spills
// new records (acknowledged through the spill hook), and, once logd is up, replays
// everything in order, skipping what logd already had, then empties the spill and
// writes to logd directly.
func TestAuditorSpillsWhileLogdIsDownAndReplaysInOrder(t *testing.T) {
	dir := t.TempDir()
	log := zaptest.NewLogger(t)
	sp := openSpill(t, filepath.Join(dir, "audit.spill"), 0)
	defer sp.Close()

	// logd already holds records 1..3 of writer oomd; the spill holds 2..5 (2 and 3 were
	// sent to logd and also spilled when its sync timed out).
	f := startLogd(t, dir)
	for seq := uint64(1); seq <= 3; seq++ {
		data, err := auditData(spillRec(seq))
		require.NoError(t, err)
		_, err = f.j.Append(WriterName, seq, data)
		require.NoError(t, err)
	}
	require.NoError(t, f.j.Sync(context.Background(), 3))
	f.srv.Close(time.Second) // logd goes away (socket closed); the journal stays
	require.NoError(t, os.Remove(f.sock))
	require.NoError(t, sp.Append(spillRecs(2, 5)))

	a := NewLogdAuditor(f.sock, log)
	a.UseSpill(sp, 0)
	k := newAcks()
	a.SetSpillHook(k.spill)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	require.NoError(t, a.Start(ctx, k.ack), "a non-empty spill lets oomd start without logd")

	a.Submit([]policy.AuditRecord{coreRec(1, "new1"), coreRec(2, "new2")})
	k.waitAcked(t, 2)
	k.mu.Lock()
	assert.Equal(t, []uint64{2}, k.spilled, "acknowledged through the spill while logd is down")
	k.mu.Unlock()
	last, _ := sp.Last()
	assert.Equal(t, uint64(7), last, "core records 1, 2 continue the spill's journal seqs as 6, 7")

	// logd comes back on the same journal.
	l, err := rpcx.Listen(f.sock)
	require.NoError(t, err)
	srv := rpcx.NewServer(log.Named("logd2"), server.New(f.j, log).Bootstrap)
	sctx, scancel := context.WithCancel(context.Background())
	defer func() { scancel(); srv.Close(2 * time.Second) }()
	go srv.Serve(sctx, l)

	eventually(t, "the spill to be replayed and emptied", func() bool { return len(f.entries(t)) == 7 && sp.Len() == 0 })
	a.Submit([]policy.AuditRecord{coreRec(3, "new3")})
	k.waitAcked(t, 3)
	assert.Equal(t, [][2]any{
		{uint64(1), "hog1"}, {uint64(2), "hog2"}, {uint64(3), "hog3"}, {uint64(4), "hog4"}, {uint64(5), "hog5"},
		{uint64(6), "new1"}, {uint64(7), "new2"}, {uint64(8), "new3"},
	}, f.entries(t), "every record exactly once, in order")
	k.mu.Lock()
	assert.Equal(t, []uint64{2}, k.spilled, "record 3 went to logd directly")
	k.mu.Unlock()
}

// TestAuditorSpillsWhenLogdDoesNotSync: logd accepts and opens but never acknowledges a
// sync; after the sync timeout the records are spilled and acknowledged from there.
func TestAuditorSpillsWhenLogdDoesNotSync(t *testing.T) {
	dir := t.TempDir()
	log := zaptest.NewLogger(t)
	sock := filepath.Join(dir, "logd.sock")
	l, err := rpcx.Listen(sock)
	require.NoError(t, err)
	hung := &hungJournal{last: 41, release: make(chan struct{})}
	defer close(hung.release)
	srv := rpcx.NewServer(log, func(rpcx.Peer) (capnp.Client, error) {
		return capnp.Client(oomdpb.Journal_ServerToClient(hung)), nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Serve(ctx, l)
	defer srv.Close(time.Second)

	sp := openSpill(t, filepath.Join(dir, "audit.spill"), 0)
	defer sp.Close()
	a := NewLogdAuditor(sock, log)
	a.UseSpill(sp, 50*time.Millisecond)
	k := newAcks()
	a.SetSpillHook(k.spill)
	require.NoError(t, a.Start(ctx, k.ack))
	a.Submit([]policy.AuditRecord{coreRec(1, "hog")})
	k.waitAcked(t, 1)
	k.mu.Lock()
	assert.Equal(t, []uint64{1}, k.spilled)
	assert.Contains(t, k.reasons[0], "logd: ")
	k.mu.Unlock()
	assert.Equal(t, []SpilledRecord{{JournalSeq: 42, Rec: policy.AuditRecord{WriterSeq: 42, Kind: policy.EventKillDecided,
		Subject: "hog", Decision: 1, Reason: "hard limit exceeded"}}}, sp.Records(), "journal seq = logd's last (41) + 1")
}

// hungJournal opens like logd but never answers a sync.
type hungJournal struct {
	last    uint64
	release chan struct{}
}

func (h *hungJournal) Open(_ context.Context, call oomdpb.Journal_open) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetLastWriterSeq(h.last)
	return res.SetAppender(oomdpb.Appender_ServerToClient(hungAppender{h}))
}

func (h *hungJournal) Read(context.Context, oomdpb.Journal_read) error {
	return errors.New("not implemented")
}

func (h *hungJournal) Status(context.Context, oomdpb.Journal_status) error {
	return errors.New("not implemented")
}

type hungAppender struct{ h *hungJournal }

func (hungAppender) Append(context.Context, oomdpb.Appender_append) error { return nil }

func (a hungAppender) Sync(ctx context.Context, call oomdpb.Appender_sync) error {
	call.Go()
	select {
	case <-ctx.Done():
	case <-a.h.release:
	}
	return errors.New("never synced")
}

// auditData encodes r the way logd stores records (canonical Cap'n Proto).
func auditData(r SpilledRecord) ([]byte, error) {
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		return nil, err
	}
	rec, err := oomdpb.NewRootAuditRecord(seg)
	if err != nil {
		return nil, err
	}
	if err := wire.SetAuditRecord(rec, r.Rec, r.JournalSeq, r.ExecdRun); err != nil {
		return nil, err
	}
	return capnp.Canonicalize(capnp.Struct(rec))
}

// TestAuditorAtTheSpillBound: with logd down and the spill full, new records are not
// acknowledged (their kills wait) and nothing is dropped; once logd is back the spill
// drains into it and the waiting records follow, all in order.
func TestAuditorAtTheSpillBound(t *testing.T) {
	dir := t.TempDir()
	log := zaptest.NewLogger(t)
	sp := openSpill(t, filepath.Join(dir, "audit.spill"), spillMinMaxBytes)
	defer sp.Close()
	n := uint64(0)
	for sp.Append(spillRecs(n+1, n+1)) == nil {
		n++
	}
	require.Greater(t, n, uint64(replayChunk), "the replay takes several chunks")

	f := startLogd(t, dir)
	f.srv.Close(time.Second)
	require.NoError(t, os.Remove(f.sock))

	a := NewLogdAuditor(f.sock, log)
	a.UseSpill(sp, 0)
	k := newAcks()
	a.SetSpillHook(k.spill)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	require.NoError(t, a.Start(ctx, k.ack))
	a.Submit([]policy.AuditRecord{coreRec(1, "wait1"), coreRec(2, "wait2")})
	eventually(t, "the auditor to find the spill full", func() bool { return a.spillFailures.Load() > 0 })
	k.mu.Lock()
	assert.Zero(t, k.acked, "nothing is acknowledged while it is durable nowhere")
	k.mu.Unlock()
	assert.Equal(t, int(n), sp.Len(), "the full spill is left as it is")

	l, err := rpcx.Listen(f.sock)
	require.NoError(t, err)
	srv := rpcx.NewServer(log.Named("logd2"), server.New(f.j, log).Bootstrap)
	sctx, scancel := context.WithCancel(context.Background())
	defer func() { scancel(); srv.Close(2 * time.Second) }()
	go srv.Serve(sctx, l)

	k.waitAcked(t, 2)
	got := f.entries(t)
	require.Len(t, got, int(n)+2)
	for i, e := range got {
		require.Equal(t, uint64(i+1), e[0])
	}
	assert.Equal(t, [2]any{n + 1, "wait1"}, got[n])
	assert.Equal(t, [2]any{n + 2, "wait2"}, got[n+1])
}
