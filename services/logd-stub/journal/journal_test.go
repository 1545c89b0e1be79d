package journal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

// testNow is the wall clock the tests' journals stamp entries with (Options.Now).
var testNow = time.Unix(1_800_000_000, 5)

func open(t testing.TB, dir string, opts Options) *Journal {
	t.Helper()
	if opts.Now == nil {
		opts.Now = func() time.Time { return testNow }
	}
	j, err := Open(dir, opts, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { j.Close() })
	return j
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func data(writer string, ws uint64) []byte {
	return []byte(fmt.Sprintf("record %s/%d", writer, ws))
}

// appendN appends writerSeqs from..to of writer and syncs them.
func appendN(t testing.TB, j *Journal, writer string, from, to uint64) {
	t.Helper()
	var seq uint64
	for ws := from; ws <= to; ws++ {
		var err error
		seq, err = j.Append(writer, ws, data(writer, ws))
		require.NoError(t, err, "append %s/%d", writer, ws)
	}
	require.NoError(t, j.Sync(ctxT(t), seq))
}

func readAll(t testing.TB, j *Journal) ([]Entry, uint64) {
	t.Helper()
	var all []Entry
	var missed uint64
	since := uint64(0)
	for {
		es, next, m, err := j.Read(since, 100, 0)
		require.NoError(t, err)
		missed += m
		if len(es) == 0 {
			return all, missed
		}
		all = append(all, es...)
		since = next
	}
}

func segmentFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+segmentSuffix))
	require.NoError(t, err)
	return m
}

func TestAppendSyncReadAndReopen(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir, Options{})
	appendN(t, j, "oomd", 1, 10)
	appendN(t, j, "other", 1, 3)

	es, missed := readAll(t, j)
	require.Len(t, es, 13)
	assert.Zero(t, missed)
	for i, e := range es {
		assert.Equal(t, uint64(i+1), e.Seq, "seqs are consecutive from 1")
	}
	assert.Equal(t, Entry{Seq: 11, Writer: "other", WriterSeq: 1, AppendedAtNs: testNow.UnixNano(), Data: data("other", 1)}, es[10])

	// The same records come back from disk alone.
	require.NoError(t, j.Close())
	j2 := open(t, dir, Options{})
	es2, _ := readAll(t, j2)
	assert.Equal(t, es, es2)
	st := j2.Status()
	assert.Equal(t, Status{FirstSeq: 1, LastSeq: 13, DurableSeq: 13, DiskBytes: st.DiskBytes, Segments: 1, Fsyncs: st.Fsyncs}, st)
	assert.Equal(t, uint64(10), j2.LastWriterSeq("oomd"))
	assert.Equal(t, uint64(3), j2.LastWriterSeq("other"))
}

func TestReadServesOnlyDurableRecords(t *testing.T) {
	j := open(t, t.TempDir(), Options{})
	seq, err := j.Append("oomd", 1, data("oomd", 1))
	require.NoError(t, err)
	es, next, _, err := j.Read(0, 10, 0)
	require.NoError(t, err)
	assert.Empty(t, es, "a record that is not fsync'ed could still vanish and its seq be reused")
	assert.Zero(t, next)
	require.NoError(t, j.Sync(ctxT(t), seq))
	es, next, _, err = j.Read(0, 10, 0)
	require.NoError(t, err)
	assert.Len(t, es, 1)
	assert.Equal(t, seq, next)
}

func TestReadBounds(t *testing.T) {
	j := open(t, t.TempDir(), Options{})
	appendN(t, j, "oomd", 1, 300)
	es, next, _, err := j.Read(0, 7, 0)
	require.NoError(t, err)
	assert.Len(t, es, 7)
	assert.Equal(t, uint64(7), next)

	// maxBytes stops early but always returns at least one entry.
	es, _, _, err = j.Read(100, 50, 1)
	require.NoError(t, err)
	require.Len(t, es, 1)
	assert.Equal(t, uint64(101), es[0].Seq)

	// A start past a sparse mark still begins at the right entry.
	es, next, _, err = j.Read(sparseEvery*2+5, 3, 0)
	require.NoError(t, err)
	require.Len(t, es, 3)
	assert.Equal(t, uint64(sparseEvery*2+6), es[0].Seq)
	assert.Equal(t, uint64(sparseEvery*2+8), next)

	es, next, missed, err := j.Read(300, 10, 0)
	require.NoError(t, err)
	assert.Empty(t, es)
	assert.Equal(t, uint64(300), next)
	assert.Zero(t, missed)
}

func TestWriterSequencing(t *testing.T) {
	j := open(t, t.TempDir(), Options{MaxWriters: 2})
	appendN(t, j, "oomd", 1, 3)

	_, err := j.Append("oomd", 5, nil)
	var gap *GapError
	require.ErrorAs(t, err, &gap)
	assert.Equal(t, GapError{Writer: "oomd", Expected: 4, Got: 5}, *gap)
	assert.EqualError(t, err, `writerSeq gap for writer "oomd": expected 4, got 5`)

	for _, ws := range []uint64{0, 1, 3} {
		_, err = j.Append("oomd", ws, nil)
		assert.ErrorIs(t, err, ErrDuplicate, "writerSeq %d", ws)
	}
	assert.Equal(t, uint64(3), j.Status().LastSeq, "rejected records take no seq")

	_, err = j.Append("", 1, nil)
	assert.ErrorIs(t, err, ErrBadWriter)
	_, err = j.Append(string(make([]byte, MaxWriterBytes+1)), 1, nil)
	assert.ErrorIs(t, err, ErrBadWriter)
	_, err = j.Append("oomd", 4, make([]byte, MaxDataBytes+1))
	assert.ErrorIs(t, err, ErrTooLarge)

	_, err = j.Append("second", 1, nil)
	require.NoError(t, err)
	_, err = j.Append("third", 1, nil)
	assert.ErrorIs(t, err, ErrTooManyWriters)
	_, err = j.SyncWriter(ctxT(t), "third")
	assert.ErrorIs(t, err, ErrTooManyWriters)
}

func TestRestartKeepsSeqAndLastWriterSeq(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir, Options{})
	appendN(t, j, "oomd", 1, 5)
	require.NoError(t, j.Close())

	j = open(t, dir, Options{})
	assert.Equal(t, uint64(5), j.LastWriterSeq("oomd"))
	_, err := j.Append("oomd", 5, nil)
	assert.ErrorIs(t, err, ErrDuplicate, "dedup works after a restart")
	seq, err := j.Append("oomd", 6, data("oomd", 6))
	require.NoError(t, err)
	assert.Equal(t, uint64(6), seq, "journal seq continues across restarts")
}

func TestSecondOpenOfSameDirRefused(t *testing.T) {
	dir := t.TempDir()
	open(t, dir, Options{})
	_, err := Open(dir, Options{}, zaptest.NewLogger(t))
	assert.ErrorIs(t, err, ErrInUse)
}

func TestOptionsValidated(t *testing.T) {
	for _, o := range []Options{
		{MaxSegments: 1},
		{MaxSegmentBytes: 100},
		{MaxWriters: 5000},
	} {
		_, err := Open(t.TempDir(), o, zaptest.NewLogger(t))
		assert.Error(t, err, "%+v", o)
	}
}

// buildTail writes n records of writer "oomd", closes the journal, and returns the
// segment path, its bytes, and the offset where the last record starts.
func buildTail(t *testing.T, n uint64) (string, []byte, int64) {
	t.Helper()
	dir := t.TempDir()
	j := open(t, dir, Options{})
	appendN(t, j, "oomd", 1, n-1)
	lastStart := int64(j.Status().DiskBytes)
	appendN(t, j, "oomd", n, n)
	require.NoError(t, j.Close())
	segs := segmentFiles(t, dir)
	require.Len(t, segs, 1)
	b, err := os.ReadFile(segs[0])
	require.NoError(t, err)
	return segs[0], b, lastStart
}

// recoverFrom writes seg into a fresh directory and opens a journal on it.
func recoverFrom(t *testing.T, name string, seg []byte) (*Journal, string) {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.Base(name)), seg, 0o600))
	return open(t, dir, Options{}), dir
}

// checkRecoveredTo asserts the journal holds exactly records 1..n of "oomd" and that
// appending continues at n+1, also after another restart.
func checkRecoveredTo(t *testing.T, j *Journal, dir string, n uint64, msg string) {
	t.Helper()
	es, _ := readAll(t, j)
	require.Len(t, es, int(n), msg)
	for i, e := range es {
		require.Equal(t, Entry{Seq: uint64(i + 1), Writer: "oomd", WriterSeq: uint64(i + 1), AppendedAtNs: testNow.UnixNano(), Data: data("oomd", uint64(i+1))}, e, msg)
	}
	require.Equal(t, n, j.LastWriterSeq("oomd"), msg)
	seq, err := j.Append("oomd", n+1, data("oomd", n+1))
	require.NoError(t, err, msg)
	require.Equal(t, n+1, seq, msg)
	require.NoError(t, j.Sync(ctxT(t), seq), msg)
	require.NoError(t, j.Close(), msg)

	j2 := open(t, dir, Options{})
	es, _ = readAll(t, j2)
	require.Len(t, es, int(n+1), msg)
	require.Equal(t, data("oomd", n+1), es[n].Data, msg)
	require.NoError(t, j2.Close(), msg)
}

func TestTornTailAtEveryByteOffset(t *testing.T) {
	const n = 5
	name, seg, lastStart := buildTail(t, n)
	for cut := lastStart; cut < int64(len(seg)); cut++ {
		j, dir := recoverFrom(t, name, seg[:cut])
		msg := fmt.Sprintf("last record cut after %d of its %d bytes", cut-lastStart, int64(len(seg))-lastStart)
		assert.Equal(t, uint64(lastStart), j.Status().DiskBytes, msg)
		checkRecoveredTo(t, j, dir, n-1, msg)
	}
}

func TestCorruptTailCut(t *testing.T) {
	const n = 5
	name, seg, lastStart := buildTail(t, n)
	for off := lastStart; off < int64(len(seg)); off++ {
		bad := append([]byte(nil), seg...)
		bad[off] ^= 0x5a
		j, dir := recoverFrom(t, name, bad)
		checkRecoveredTo(t, j, dir, n-1, fmt.Sprintf("byte %d of the last record flipped", off-lastStart))
	}

	// A crash can leave zeroed or garbage blocks after the last frame.
	for _, tail := range [][]byte{make([]byte, 4096), []byte("garbage after the last frame")} {
		j, dir := recoverFrom(t, name, append(append([]byte(nil), seg...), tail...))
		checkRecoveredTo(t, j, dir, n, fmt.Sprintf("%d bytes of junk after the tail", len(tail)))
	}
}

func smallOptions() Options {
	return Options{MaxWriters: 2, MaxSegments: 3, MaxSegmentBytes: MinSegmentBytes(2)}
}

func TestRotationKeepsDiskBoundedAndReportsMissed(t *testing.T) {
	dir := t.TempDir()
	opts := smallOptions()
	j := open(t, dir, opts)
	// "early" writes once and is then rotated away by "oomd"'s records.
	appendN(t, j, "early", 1, 1)
	for ws := uint64(1); ws <= 2000; ws += 100 {
		appendN(t, j, "oomd", ws, ws+99)
		st := j.Status()
		require.LessOrEqual(t, st.DiskBytes, uint64(opts.MaxSegments)*uint64(opts.MaxSegmentBytes))
		require.LessOrEqual(t, len(segmentFiles(t, dir)), opts.MaxSegments)
	}
	st := j.Status()
	assert.Equal(t, uint64(2001), st.LastSeq)
	require.Greater(t, st.FirstSeq, uint64(2), "old records must have rotated away")

	es, next, missed, err := j.Read(0, 10, 0)
	require.NoError(t, err)
	require.NotEmpty(t, es)
	assert.Equal(t, st.FirstSeq, es[0].Seq)
	assert.Equal(t, st.FirstSeq-1, missed, "everything before the oldest segment was missed")
	_, _, missed, err = j.Read(next, 10, 0)
	require.NoError(t, err)
	assert.Zero(t, missed, "a reader that keeps up misses nothing")

	// The writer table outlives the records (segment checkpoints).
	require.NoError(t, j.Close())
	j = open(t, dir, opts)
	assert.Equal(t, uint64(1), j.LastWriterSeq("early"))
	assert.Equal(t, uint64(2000), j.LastWriterSeq("oomd"))
	st2 := j.Status()
	st.Fsyncs, st2.Fsyncs = 0, 0
	assert.Equal(t, st, st2)
}

func TestCorruptSealedSegmentReportedAsMissed(t *testing.T) {
	dir := t.TempDir()
	opts := smallOptions()
	j := open(t, dir, opts)
	appendN(t, j, "oomd", 1, 60)
	require.NoError(t, j.Close())
	segs := segmentFiles(t, dir)
	require.GreaterOrEqual(t, len(segs), 2)
	first, _ := parseSegmentName(filepath.Base(segs[1]))
	sealedLast := first - 1

	// Damage the last frame of the first (sealed) segment.
	b, err := os.ReadFile(segs[0])
	require.NoError(t, err)
	b[len(b)-3] ^= 0xff
	require.NoError(t, os.WriteFile(segs[0], b, 0o600))

	j = open(t, dir, opts)
	es, missed := readAll(t, j)
	assert.Equal(t, uint64(1), missed)
	assert.Len(t, es, 59)
	for _, e := range es {
		assert.NotEqual(t, sealedLast, e.Seq)
	}
	assert.Equal(t, uint64(60), j.LastWriterSeq("oomd"))
	seq, err := j.Append("oomd", 61, nil)
	require.NoError(t, err)
	assert.Equal(t, uint64(61), seq)
}

func TestEmptiedActiveSegmentGetsItsCheckpointBack(t *testing.T) {
	dir := t.TempDir()
	opts := smallOptions()
	j := open(t, dir, opts)
	appendN(t, j, "early", 1, 1)
	appendN(t, j, "oomd", 1, 150)
	require.NoError(t, j.Close())
	segs := segmentFiles(t, dir)
	require.GreaterOrEqual(t, len(segs), 2)
	// A crash right after the last segment was created, before its checkpoint landed.
	require.NoError(t, os.Truncate(segs[len(segs)-1], 3))

	j = open(t, dir, opts)
	// Rotate until every segment older than the emptied one is gone.
	first, _ := parseSegmentName(filepath.Base(segs[len(segs)-1]))
	ws := j.LastWriterSeq("oomd")
	for j.Status().FirstSeq <= first {
		appendN(t, j, "oomd", ws+1, ws+10)
		ws += 10
	}
	require.NoError(t, j.Close())
	j = open(t, dir, opts)
	assert.Equal(t, uint64(1), j.LastWriterSeq("early"))
}

func TestConcurrentWritersGroupCommit(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir, Options{MaxSegmentBytes: MinSegmentBytes(DefaultMaxWriters)})
	const writers, each = 8, 100
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("w%d", w)
			for ws := uint64(1); ws <= each; ws++ {
				if _, err := j.Append(name, ws, data(name, ws)); err != nil {
					errs <- err
					return
				}
				got, err := j.SyncWriter(context.Background(), name)
				if err != nil || got != ws {
					errs <- errors.Join(err, fmt.Errorf("%s: durable %d, want %d", name, got, ws))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, j.Close())

	j = open(t, dir, Options{MaxSegmentBytes: MinSegmentBytes(DefaultMaxWriters)})
	es, missed := readAll(t, j)
	assert.Len(t, es, writers*each)
	assert.Zero(t, missed)
	next := map[string]uint64{}
	for _, e := range es {
		next[e.Writer]++
		require.Equal(t, next[e.Writer], e.WriterSeq, "each writer's records are in order")
	}
}

// holdFsync makes the journal look as if an fsync were in flight until the returned
// func is called.
func holdFsync(j *Journal) (release func()) {
	j.mu.Lock()
	done := make(chan struct{})
	j.syncing, j.syncDone = true, done
	j.mu.Unlock()
	return func() {
		j.mu.Lock()
		j.syncing = false
		close(done)
		j.mu.Unlock()
	}
}

func TestOneFsyncCoversAllWaitingSyncs(t *testing.T) {
	j := open(t, t.TempDir(), Options{})
	const writers = 8
	seqs := make([]uint64, writers)
	for w := range writers {
		var err error
		seqs[w], err = j.Append(fmt.Sprintf("w%d", w), 1, nil)
		require.NoError(t, err)
	}
	waiting := make(chan struct{}, writers)
	j.mu.Lock()
	j.onWait = func() { waiting <- struct{}{} }
	j.mu.Unlock()
	release := holdFsync(j)
	before := j.Status().Fsyncs

	ctx := ctxT(t)
	errs := make(chan error, writers)
	for _, seq := range seqs {
		go func() { errs <- j.Sync(ctx, seq) }()
	}
	for range writers {
		<-waiting
	}
	release()
	for range writers {
		require.NoError(t, <-errs)
	}
	st := j.Status()
	assert.Equal(t, before+1, st.Fsyncs, "%d waiting syncs share one fsync", writers)
	assert.Equal(t, seqs[writers-1], st.DurableSeq)
}

func TestSyncHonoursContext(t *testing.T) {
	j := open(t, t.TempDir(), Options{})
	seq, err := j.Append("oomd", 1, nil)
	require.NoError(t, err)
	// While an fsync is in flight, a waiter must give up when its context ends.
	release := holdFsync(j)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, j.Sync(ctx, seq), context.Canceled)
	release()
	assert.NoError(t, j.Sync(context.Background(), seq))
}

func BenchmarkAppendSync(b *testing.B) {
	j := open(b, b.TempDir(), Options{})
	rec := make([]byte, 200)
	ctx := context.Background()
	b.SetBytes(int64(len(rec)))
	for i := 0; b.Loop(); i++ {
		seq, err := j.Append("oomd", uint64(i+1), rec)
		if err != nil {
			b.Fatal(err)
		}
		if err := j.Sync(ctx, seq); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/record")
}

// BenchmarkAppendSyncParallel: every goroutine is its own writer waiting for its own
// record to be durable; group commit lets one fsync cover many of them.
func BenchmarkAppendSyncParallel(b *testing.B) {
	j := open(b, b.TempDir(), Options{})
	rec := make([]byte, 200)
	var id sync.Mutex
	n := 0
	b.SetParallelism(16)
	b.SetBytes(int64(len(rec)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id.Lock()
		n++
		name := fmt.Sprintf("w%d", n)
		id.Unlock()
		for ws := uint64(1); pb.Next(); ws++ {
			seq, err := j.Append(name, ws, rec)
			if err != nil {
				b.Error(err)
				return
			}
			if err := j.Sync(context.Background(), seq); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/record")
}

// TestEntriesKeepTheirAppendTime: each entry keeps logd's wall clock at append across a
// reopen; an entry of the format before the time was kept (kind 0x01) still reads, with
// time 0, beside new ones.
func TestEntriesKeepTheirAppendTime(t *testing.T) {
	dir := t.TempDir()
	tick := int64(0)
	clock := func() time.Time { tick++; return time.Unix(1_800_000_000+tick, 0) }
	j := open(t, dir, Options{Now: clock})
	for ws := uint64(1); ws <= 3; ws++ {
		_, err := j.Append("oomd", ws, data("oomd", ws))
		require.NoError(t, err)
	}
	require.NoError(t, j.Sync(ctxT(t), 3))
	require.NoError(t, j.Close())

	j = open(t, dir, Options{Now: clock})
	es, _ := readAll(t, j)
	require.Len(t, es, 3)
	for i, e := range es {
		assert.Equal(t, time.Unix(1_800_000_000+int64(i+1), 0).UnixNano(), e.AppendedAtNs, "entry %d", i+1)
	}

	// A version-1 entry, as an older logd wrote it, decodes with time 0.
	v2 := encodeEntry(nil, 9, 4, 77, "oomd", []byte("x"))
	p := v2[frameHeaderBytes:]
	v1 := append([]byte{kindEntryV1}, p[1:17]...)
	v1 = append(v1, p[25:]...)
	f, err := decodePayload(v1)
	require.NoError(t, err)
	assert.Equal(t, frame{kind: kindEntry, seq: 9, writerSeq: 4, writer: []byte("oomd"), data: []byte("x")}, f)
	f, err = decodePayload(p)
	require.NoError(t, err)
	assert.Equal(t, int64(77), f.atNs)
}
