package server

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3/flowcontrol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/guards"
	"oomd.dev/oomd/internal/rpcx"
	"oomd.dev/oomd/internal/testutil"
	"oomd.dev/oomd/services/logd-stub/journal"
)

func TestMain(m *testing.M) { testutil.Main(m) }

type logd struct {
	dir    string
	socket string
	j      *journal.Journal
	stop   func()
}

// startLogd serves a journal in dir on a real Unix socket, as Run does.
func startLogd(t testing.TB, dir string) *logd {
	t.Helper()
	log := testLogger(t)
	j, err := journal.Open(dir, journal.Options{}, log)
	require.NoError(t, err)
	socket := filepath.Join(t.TempDir(), "logd.sock")
	l, err := rpcx.Listen(socket)
	require.NoError(t, err)
	srv := rpcx.NewServer(log, New(j, log).Bootstrap, rpcx.WithGuard(guards.Journal))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	var stopped bool
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		require.NoError(t, <-done)
		srv.Close(5 * time.Second)
		require.NoError(t, j.Close())
	}
	t.Cleanup(stop)
	return &logd{dir: dir, socket: socket, j: j, stop: stop}
}

// testLogger logs at debug in tests; benchmarks measure logd, not per-record debug
// lines written through testing.B.
func testLogger(t testing.TB) *zap.Logger {
	if _, bench := t.(*testing.B); bench {
		return zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	}
	return zaptest.NewLogger(t)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dial(t testing.TB, socket string) oomdpb.Journal {
	t.Helper()
	conn, c, err := rpcx.Dial(ctxT(t), socket, testLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	j := oomdpb.Journal(c)
	t.Cleanup(j.Release)
	return j
}

func openWriter(t testing.TB, j oomdpb.Journal, writer string) (oomdpb.Appender, uint64) {
	t.Helper()
	f, release := j.Open(ctxT(t), func(p oomdpb.Journal_open_Params) error { return p.SetWriter(writer) })
	defer release()
	res, err := f.Struct()
	require.NoError(t, err, "open %q", writer)
	a := res.Appender().AddRef()
	t.Cleanup(a.Release)
	// The window must stay above the largest message (docs/capnp-traps.md, trap 4).
	a.SetFlowLimiter(flowcontrol.NewFixedLimiter(64 << 10))
	return a, res.LastWriterSeq()
}

type rec struct {
	writerSeq, tick, bytes, limit, decision, instance uint64
	kind                                              oomdpb.EventKind
	subject, reason                                   string
}

func sample(ws uint64) rec {
	return rec{writerSeq: ws, tick: 100 + ws, bytes: ws << 20, limit: 1 << 20, decision: ws,
		instance: 3, kind: oomdpb.EventKind_killDecided, subject: fmt.Sprintf("hog%d", ws%3), reason: "hard"}
}

func appendRec(ctx context.Context, a oomdpb.Appender, r rec) error {
	return a.Append(ctx, func(p oomdpb.Appender_append_Params) error {
		ar, err := p.NewRecord()
		if err != nil {
			return err
		}
		ar.SetWriterSeq(r.writerSeq)
		ar.SetTick(r.tick)
		ar.SetKind(r.kind)
		ar.SetBytes(r.bytes)
		ar.SetLimit(r.limit)
		ar.SetDecision(r.decision)
		ar.SetInstance(r.instance)
		if err := ar.SetSubject(r.subject); err != nil {
			return err
		}
		return ar.SetReason(r.reason)
	})
}

func syncTo(ctx context.Context, a oomdpb.Appender, upTo uint64) (uint64, error) {
	f, release := a.Sync(ctx, func(p oomdpb.Appender_sync_Params) error { p.SetUpTo(upTo); return nil })
	defer release()
	res, err := f.Struct()
	if err != nil {
		return 0, err
	}
	return res.DurableWriterSeq(), nil
}

type entry struct {
	seq    uint64
	writer string
	rec    rec
}

func toRec(t testing.TB, ar oomdpb.AuditRecord) rec {
	subject, err := ar.Subject()
	require.NoError(t, err)
	reason, err := ar.Reason()
	require.NoError(t, err)
	return rec{writerSeq: ar.WriterSeq(), tick: ar.Tick(), bytes: ar.Bytes(), limit: ar.Limit(),
		decision: ar.Decision(), instance: ar.Instance(), kind: ar.Kind(), subject: subject, reason: reason}
}

func read(t testing.TB, j oomdpb.Journal, since uint64, limit uint32) ([]entry, uint64, uint64, error) {
	f, release := j.Read(ctxT(t), func(p oomdpb.Journal_read_Params) error {
		p.SetSinceSeq(since)
		p.SetLimit(limit)
		return nil
	})
	defer release()
	res, err := f.Struct()
	if err != nil {
		return nil, 0, 0, err
	}
	list, err := res.Entries()
	require.NoError(t, err)
	var out []entry
	for i := 0; i < list.Len(); i++ {
		e := list.At(i)
		w, err := e.Writer()
		require.NoError(t, err)
		r, err := e.Record()
		require.NoError(t, err)
		out = append(out, entry{seq: e.Seq(), writer: w, rec: toRec(t, r)})
	}
	return out, res.NextSeq(), res.Missed(), nil
}

func TestAppendSyncReadOverSocket(t *testing.T) {
	ctx := ctxT(t)
	l := startLogd(t, t.TempDir())
	j := dial(t, l.socket)
	a, last := openWriter(t, j, "oomd")
	assert.Zero(t, last)

	for ws := uint64(1); ws <= 50; ws++ {
		require.NoError(t, appendRec(ctx, a, sample(ws)))
	}
	durable, err := syncTo(ctx, a, 50)
	require.NoError(t, err)
	assert.Equal(t, uint64(50), durable)

	es, next, missed, err := read(t, j, 0, 1024)
	require.NoError(t, err)
	require.Len(t, es, 50)
	assert.Equal(t, uint64(50), next)
	assert.Zero(t, missed)
	for i, e := range es {
		assert.Equal(t, entry{seq: uint64(i + 1), writer: "oomd", rec: sample(uint64(i + 1))}, e)
	}

	es, next, _, err = read(t, j, 45, 2)
	require.NoError(t, err)
	require.Len(t, es, 2)
	assert.Equal(t, uint64(46), es[0].seq)
	assert.Equal(t, uint64(47), next)

	f, release := j.Status(ctx, nil)
	defer release()
	st, err := f.Struct()
	require.NoError(t, err)
	assert.Equal(t, uint64(1), st.FirstSeq())
	assert.Equal(t, uint64(50), st.LastSeq())
	assert.Equal(t, uint64(50), st.DurableSeq())
	assert.Positive(t, st.DiskBytes())
}

func TestSyncAckMeansOnDisk(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	l := startLogd(t, dir)
	a, _ := openWriter(t, dial(t, l.socket), "oomd")
	for ws := uint64(1); ws <= 10; ws++ {
		require.NoError(t, appendRec(ctx, a, sample(ws)))
	}
	_, err := syncTo(ctx, a, 10)
	require.NoError(t, err)
	l.stop()

	// Only the files: a fresh journal on the same directory finds every record.
	j, err := journal.Open(dir, journal.Options{}, zaptest.NewLogger(t))
	require.NoError(t, err)
	defer j.Close()
	es, _, _, err := j.Read(0, 100, 0)
	require.NoError(t, err)
	require.Len(t, es, 10)
	for i, e := range es {
		r, err := decodeRecord(e.Data)
		require.NoError(t, err)
		assert.Equal(t, sample(uint64(i+1)), toRec(t, r))
	}
}

func TestWriterSeqGapRejected(t *testing.T) {
	ctx := ctxT(t)
	l := startLogd(t, t.TempDir())
	j := dial(t, l.socket)
	a, _ := openWriter(t, j, "oomd")
	require.NoError(t, appendRec(ctx, a, sample(1)))
	_ = appendRec(ctx, a, sample(3)) // a stream call's failure surfaces later
	assert.ErrorContains(t, a.WaitStreaming(), "expected 2, got 3")
	_, err := syncTo(ctx, a, 1)
	assert.ErrorContains(t, err, "expected 2, got 3", "the broken appender refuses sync too")

	// Opening again resumes after what is durable.
	a2, last := openWriter(t, j, "oomd")
	assert.Equal(t, uint64(1), last)
	require.NoError(t, appendRec(ctx, a2, sample(2)))
	durable, err := syncTo(ctx, a2, 2)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), durable)
}

// TestLostRecordBridgesAGap: only a lost-record placeholder (package lostrec) may skip
// writerSeqs; it stands for the skipped ones, the writer continues after it, and that
// survives a restart. Anything else across the gap still breaks the appender, including
// records that look almost like a placeholder.
func TestLostRecordBridgesAGap(t *testing.T) {
	lost := func(ws uint64) rec {
		return rec{writerSeq: ws, kind: oomdpb.EventKind_auditSpilled, reason: "lost: writerSeqs 2..3"}
	}
	for name, r := range map[string]rec{
		"not a placeholder":    sample(3),
		"with a subject":       func() rec { r := lost(3); r.subject = "hog"; return r }(),
		"with a decision":      func() rec { r := lost(3); r.decision = 7; return r }(),
		"another kind":         func() rec { r := lost(3); r.kind = oomdpb.EventKind_killDenied; return r }(),
		"reason not lost: ...": func() rec { r := lost(3); r.reason = "writerSeqs 2..3"; return r }(),
	} {
		t.Run(name, func(t *testing.T) {
			ctx := ctxT(t)
			l := startLogd(t, t.TempDir())
			a, _ := openWriter(t, dial(t, l.socket), "oomd")
			require.NoError(t, appendRec(ctx, a, sample(1)))
			_ = appendRec(ctx, a, r)
			assert.ErrorContains(t, a.WaitStreaming(), "expected 2, got 3")
		})
	}

	ctx := ctxT(t)
	dir := t.TempDir()
	l := startLogd(t, dir)
	a, _ := openWriter(t, dial(t, l.socket), "oomd")
	require.NoError(t, appendRec(ctx, a, sample(1)))
	require.NoError(t, appendRec(ctx, a, lost(3)))
	require.NoError(t, appendRec(ctx, a, sample(4)))
	durable, err := syncTo(ctx, a, 4)
	require.NoError(t, err)
	assert.Equal(t, uint64(4), durable)
	l.stop()

	l = startLogd(t, dir)
	j := dial(t, l.socket)
	a, last := openWriter(t, j, "oomd")
	assert.Equal(t, uint64(4), last, "the placeholder's writerSeq survives a restart")
	require.NoError(t, appendRec(ctx, a, sample(5)))
	_, err = syncTo(ctx, a, 5)
	require.NoError(t, err)
	es, _, _, err := read(t, j, 0, 10)
	require.NoError(t, err)
	assert.Equal(t, []entry{{1, "oomd", sample(1)}, {2, "oomd", lost(3)}, {3, "oomd", sample(4)}, {4, "oomd", sample(5)}}, es)
}

func TestDuplicateDropped(t *testing.T) {
	ctx := ctxT(t)
	l := startLogd(t, t.TempDir())
	j := dial(t, l.socket)
	a, _ := openWriter(t, j, "oomd")
	for ws := uint64(1); ws <= 3; ws++ {
		require.NoError(t, appendRec(ctx, a, sample(ws)))
	}
	_, err := syncTo(ctx, a, 3)
	require.NoError(t, err)

	// A writer replaying from its spill file resends what logd already has.
	a2, last := openWriter(t, j, "oomd")
	assert.Equal(t, uint64(3), last)
	for ws := uint64(1); ws <= 5; ws++ {
		require.NoError(t, appendRec(ctx, a2, sample(ws)))
	}
	durable, err := syncTo(ctx, a2, 5)
	require.NoError(t, err)
	assert.Equal(t, uint64(5), durable)

	es, _, _, err := read(t, j, 0, 100)
	require.NoError(t, err)
	require.Len(t, es, 5, "duplicates are dropped, not stored twice")
	for i, e := range es {
		assert.Equal(t, uint64(i+1), e.rec.writerSeq)
	}
}

func TestBadInputCostsOnlyThatCall(t *testing.T) {
	ctx := ctxT(t)
	l := startLogd(t, t.TempDir())
	j := dial(t, l.socket)

	for _, w := range []string{"", strings.Repeat("w", 65)} {
		f, release := j.Open(ctx, func(p oomdpb.Journal_open_Params) error { return p.SetWriter(w) })
		_, err := f.Struct()
		release()
		assert.ErrorContains(t, err, "must be 1..64", "writer of %d bytes", len(w))
	}
	for _, limit := range []uint32{0, 1025} {
		_, _, _, err := read(t, j, 0, limit)
		assert.ErrorContains(t, err, "out of range 1..1024", "limit %d", limit)
	}

	bad := map[string]rec{
		"subject is 65 bytes":          {writerSeq: 1, subject: strings.Repeat("s", 65)},
		"reason is 257 bytes":          {writerSeq: 1, reason: strings.Repeat("r", 257)},
		"writerSeq must be at least 1": {writerSeq: 0},
	}
	for want, r := range bad {
		a, _ := openWriter(t, j, "oomd")
		_ = appendRec(ctx, a, r)
		assert.ErrorContains(t, a.WaitStreaming(), want)
	}

	a, _ := openWriter(t, j, "oomd")
	_ = a.Append(ctx, func(oomdpb.Appender_append_Params) error { return nil })
	assert.ErrorContains(t, a.WaitStreaming(), "record is missing")

	a, _ = openWriter(t, j, "oomd")
	_, err := syncTo(ctx, a, 7)
	assert.ErrorContains(t, err, "appended only up to writerSeq 0")

	// The connection and the journal are fine.
	a, last := openWriter(t, j, "oomd")
	assert.Zero(t, last)
	require.NoError(t, appendRec(ctx, a, sample(1)))
	durable, err := syncTo(ctx, a, 1)
	require.NoError(t, err)
	assert.Equal(t, uint64(1), durable)
}

func TestRestartKeepsSeqAndLastWriterSeq(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	l := startLogd(t, dir)
	a, _ := openWriter(t, dial(t, l.socket), "oomd")
	for ws := uint64(1); ws <= 4; ws++ {
		require.NoError(t, appendRec(ctx, a, sample(ws)))
	}
	_, err := syncTo(ctx, a, 4)
	require.NoError(t, err)
	l.stop()

	l = startLogd(t, dir)
	j := dial(t, l.socket)
	a, last := openWriter(t, j, "oomd")
	assert.Equal(t, uint64(4), last)
	require.NoError(t, appendRec(ctx, a, sample(5)))
	_, err = syncTo(ctx, a, 5)
	require.NoError(t, err)
	es, _, _, err := read(t, j, 4, 10)
	require.NoError(t, err)
	require.Len(t, es, 1)
	assert.Equal(t, entry{seq: 5, writer: "oomd", rec: sample(5)}, es[0])
}

// BenchmarkAppendSyncRPC is the audit path oomd waits on before a kill: one record
// appended and acknowledged durable, over a real socket.
func BenchmarkAppendSyncRPC(b *testing.B) {
	ctx := context.Background()
	l := startLogd(b, b.TempDir())
	a, _ := openWriter(b, dial(b, l.socket), "oomd")
	ws := uint64(0)
	for b.Loop() {
		ws++
		if err := appendRec(ctx, a, sample(ws)); err != nil {
			b.Fatal(err)
		}
		if _, err := syncTo(ctx, a, ws); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/record")
}

// BenchmarkAppendSyncRPCGroup: 16 writers on their own connections, each waiting for
// its own record; one fsync covers many of them.
func BenchmarkAppendSyncRPCGroup(b *testing.B) {
	l := startLogd(b, b.TempDir())
	const writers = 16
	apps := make(chan oomdpb.Appender, writers)
	for w := range writers {
		a, _ := openWriter(b, dial(b, l.socket), fmt.Sprintf("w%d", w))
		apps <- a
	}
	b.SetParallelism((writers + 1) / 2) // GOMAXPROCS here is 2
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		a := <-apps
		ctx := context.Background()
		for ws := uint64(1); pb.Next(); ws++ {
			if err := appendRec(ctx, a, sample(ws)); err != nil {
				b.Error(err)
				return
			}
			if _, err := syncTo(ctx, a, ws); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/record")
}

// BenchmarkAppendBatchSyncRPC: 64 streamed appends, then one sync.
func BenchmarkAppendBatchSyncRPC(b *testing.B) {
	ctx := context.Background()
	l := startLogd(b, b.TempDir())
	a, _ := openWriter(b, dial(b, l.socket), "oomd")
	ws := uint64(0)
	for b.Loop() {
		for range 64 {
			ws++
			if err := appendRec(ctx, a, sample(ws)); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := syncTo(ctx, a, ws); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/64, "ns/record")
}

// TestOpenFencesEarlierAppender: after a writer opens again (a restarted oomd), nothing
// the previous Appender still sends can land: it would take the new opener's next
// writerSeq, and the new opener's own record would be dropped as a duplicate while its
// sync reported it durable. Removing the epoch check in journal.append turns this red.
func TestOpenFencesEarlierAppender(t *testing.T) {
	ctx := ctxT(t)
	l := startLogd(t, t.TempDir())
	old, _ := openWriter(t, dial(t, l.socket), "oomd")
	require.NoError(t, appendRec(ctx, old, sample(1)))
	_, err := syncTo(ctx, old, 1)
	require.NoError(t, err)

	j := dial(t, l.socket)
	a, last := openWriter(t, j, "oomd")
	require.Equal(t, uint64(1), last)

	// The dead writer's in-flight record arrives after the new open returned.
	stale := sample(2)
	stale.reason = "from the fenced appender"
	_ = appendRec(ctx, old, stale)
	assert.ErrorContains(t, old.WaitStreaming(), journal.ErrFenced.Error(), "errors cross the wire as text")
	_, err = syncTo(ctx, old, 1)
	assert.ErrorContains(t, err, "fenced")

	require.NoError(t, appendRec(ctx, a, sample(2)))
	durable, err := syncTo(ctx, a, 2)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), durable)
	es, _, _, err := read(t, j, 0, 10)
	require.NoError(t, err)
	assert.Equal(t, []entry{{1, "oomd", sample(1)}, {2, "oomd", sample(2)}}, es, "only the new opener's record 2")
}
