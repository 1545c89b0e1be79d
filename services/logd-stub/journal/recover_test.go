package journal

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"oomd.dev/oomd/internal/safefile"
)

// syncSpy is the fsync seam for tests: it records which files were fsync'ed and can fail
// the next fsync of a file whose name has a given suffix.
type syncSpy struct {
	mu     sync.Mutex
	synced []string // base names, in order
	failOn string   // suffix; "" = never fail
	err    error
}

func (s *syncSpy) Sync(f *os.File) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := filepath.Base(f.Name())
	s.synced = append(s.synced, name)
	if s.failOn != "" && strings.HasSuffix(name, s.failOn) {
		return s.err
	}
	return f.Sync()
}

func (s *syncSpy) count(suffix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, name := range s.synced {
		if strings.HasSuffix(name, suffix) {
			n++
		}
	}
	return n
}

// observed returns a logger that also records entries for assertions.
func observed(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.InfoLevel)
	return zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core)), logs
}

// TestSyncIsAnFsync: an acknowledged Sync has fsync'ed the segment (through the seam),
// and a failed fsync is never acknowledged nor served.
func TestSyncIsAnFsync(t *testing.T) {
	spy := &syncSpy{}
	j, err := Open(t.TempDir(), Options{Syncer: spy}, zaptest.NewLogger(t))
	require.NoError(t, err)
	defer j.Close()
	seq, err := j.Append("oomd", 1, data("oomd", 1))
	require.NoError(t, err)
	before := spy.count(segmentSuffix)
	require.NoError(t, j.Sync(ctxT(t), seq))
	assert.Equal(t, before+1, spy.count(segmentSuffix), "Sync must fsync the segment once")
	assert.Equal(t, seq, j.Status().DurableSeq)

	seq, err = j.Append("oomd", 2, data("oomd", 2))
	require.NoError(t, err)
	spy.mu.Lock()
	spy.failOn, spy.err = segmentSuffix, errors.New("injected EIO")
	spy.mu.Unlock()
	err = j.Sync(ctxT(t), seq)
	require.ErrorIs(t, err, ErrFailed, "a failed fsync is not an acknowledgement")
	assert.Equal(t, seq-1, j.Status().DurableSeq)
	_, err = j.SyncWriter(ctxT(t), "oomd")
	assert.ErrorIs(t, err, ErrFailed, "nor is any later sync")
	select {
	case <-j.Failed():
	default:
		t.Fatal("the journal did not report its failure")
	}
}

// TestSeqReservationIsDurableAndBatched: the high-water mark file is replaced once per
// hwmBatch appends, not per append or per sync.
func TestSeqReservationIsDurableAndBatched(t *testing.T) {
	spy := &syncSpy{}
	dir := t.TempDir()
	j, err := Open(dir, Options{Syncer: spy}, zaptest.NewLogger(t))
	require.NoError(t, err)
	atOpen := spy.count(hwmName + ".tmp")
	require.Equal(t, 1, atOpen, "Open reserves the first batch")
	for ws := uint64(1); ws <= 3*hwmBatch; ws++ {
		_, err := j.Append("oomd", ws, nil)
		require.NoError(t, err)
	}
	assert.Equal(t, atOpen+2, spy.count(hwmName+".tmp"), "two more batches for 3 batches of records")
	h, err := j.readHWM()
	require.NoError(t, err)
	assert.GreaterOrEqual(t, h.reserved, uint64(3*hwmBatch), "every handed-out seq is under the durable mark")
	require.NoError(t, j.Close())
	h, err = (&Journal{dir: mustDir(t, dir)}).readHWM()
	require.NoError(t, err)
	assert.Equal(t, hwm{reserved: 3 * hwmBatch, durable: 3 * hwmBatch}, h, "a clean close records the exact end")
}

func mustDir(t *testing.T, path string) *safefile.Dir {
	d, err := safefile.OpenDir(path, false)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return d
}

// copyDir copies the journal files of src (not the lock) into a fresh directory: a
// snapshot as a crash or a power cut would leave it.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	des, err := os.ReadDir(src)
	require.NoError(t, err)
	for _, de := range des {
		if de.Name() == "LOCK" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, de.Name()))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dst, de.Name()), b, 0o600))
	}
	return dst
}

// frameOffsets returns the start offsets of the frames of a segment file.
func frameOffsets(t *testing.T, path string) []int64 {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	fr := newFrameReader(f)
	var offs []int64
	off := int64(0)
	for {
		fm, err := fr.next()
		if err == io.EOF {
			return offs
		}
		require.NoError(t, err)
		offs = append(offs, off)
		off += fm.size
	}
}

func seqsOf(es []Entry) []uint64 {
	var out []uint64
	for _, e := range es {
		out = append(out, e.Seq)
	}
	return out
}

func seqRange(from, to uint64, skip ...uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		if len(skip) == 0 || s != skip[0] {
			out = append(out, s)
		}
	}
	return out
}

func quarantineFiles(t *testing.T, dir string) []string {
	m, err := filepath.Glob(filepath.Join(dir, "*.quarantine.*"))
	require.NoError(t, err)
	return m
}

// TestFlippedByteCostsOnlyThatRecord flips one byte at several offsets of one record,
// in an older (sealed) segment and in the middle of the newest one: every other record
// survives, the damaged bytes are quarantined, the log says "corrupt" with the count,
// the next append gets a seq above all earlier ones, and the repaired journal reopens
// clean.
func TestFlippedByteCostsOnlyThatRecord(t *testing.T) {
	const total = 120
	src := t.TempDir()
	opts := smallOptions()
	j := open(t, src, opts)
	appendN(t, j, "oomd", 1, total)
	require.NoError(t, j.Close())
	segs := segmentFiles(t, src)
	require.Len(t, segs, 3)

	for _, tc := range []struct {
		name  string
		seg   int
		frame int // index among the segment's frames (0 is the checkpoint)
	}{
		{"older segment", 0, 5},
		{"older segment, its last record", 0, -1},
		{"newest segment, middle", 2, 3},
		{"older segment, its checkpoint", 1, 0},
	} {
		offs := frameOffsets(t, segs[tc.seg])
		fi := tc.frame
		if fi < 0 {
			fi = len(offs) - 1
		}
		first, _ := parseSegmentName(filepath.Base(segs[tc.seg]))
		victim := first + uint64(fi) - 1 // 0 for the checkpoint: no record lost
		if fi == 0 {
			victim = 0
		}
		nLost := uint64(0)
		if victim != 0 {
			nLost = 1
		}
		end := int64(0)
		if fi+1 < len(offs) {
			end = offs[fi+1]
		} else {
			st, err := os.Stat(segs[tc.seg])
			require.NoError(t, err)
			end = st.Size()
		}
		for _, at := range []int64{0, 3, 5, 9, 20, end - offs[fi] - 1} {
			msg := fmt.Sprintf("%s: byte %d of record %d flipped", tc.name, at, victim)
			dir := copyDir(t, src)
			path := filepath.Join(dir, filepath.Base(segs[tc.seg]))
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			orig := bytes.Clone(b[offs[fi]:end])
			b[offs[fi]+at] ^= 0x5a
			require.NoError(t, os.WriteFile(path, b, 0o600))

			log, logs := observed(t)
			j, err := Open(dir, opts, log)
			require.NoError(t, err, msg)
			es, missed := readAll(t, j)
			require.Equal(t, seqRange(1, total, victim), seqsOf(es), msg)
			assert.Equal(t, nLost, missed, msg)
			st := j.Status()
			assert.Equal(t, 1, st.Corruptions, msg)
			assert.Equal(t, nLost, st.LostSeqs, msg)
			require.Len(t, j.Damage(), 1, msg)
			d := j.Damage()[0]
			assert.Equal(t, victim, d.FirstLost, msg)
			assert.Equal(t, victim, d.LastLost, msg)
			q := quarantineFiles(t, dir)
			require.Len(t, q, 1, msg)
			qb, err := os.ReadFile(q[0])
			require.NoError(t, err)
			orig[at] ^= 0x5a
			assert.Equal(t, orig, qb, "%s: the quarantine holds exactly the damaged bytes", msg)
			corrupt := logs.FilterMessageSnippet("corrupt").FilterLevelExact(zapcore.ErrorLevel).All()
			require.NotEmpty(t, corrupt, msg)
			if nLost > 0 {
				assert.Equal(t, nLost, corrupt[0].ContextMap()["records_lost"], msg)
			}

			seq, err := j.Append("oomd", total+1, data("oomd", total+1))
			require.NoError(t, err, msg)
			assert.Equal(t, uint64(total+1), seq, "%s: a fresh seq above every earlier one", msg)
			require.NoError(t, j.Sync(ctxT(t), seq), msg)
			require.NoError(t, j.Close(), msg)

			log, logs = observed(t)
			j, err = Open(dir, opts, log)
			require.NoError(t, err, msg)
			es, _ = readAll(t, j)
			assert.Equal(t, append(seqRange(1, total, victim), total+1), seqsOf(es), msg)
			assert.Zero(t, j.Status().Corruptions, "%s: the repaired journal reopens clean", msg)
			assert.Zero(t, logs.FilterLevelExact(zapcore.ErrorLevel).Len(), msg)
			require.NoError(t, j.Close(), msg)
		}
	}
}

// TestCutOnAFrameBoundaryIsLoud: records cut exactly on a frame boundary leave no bad
// bytes, but the journal knows (the next segment's first seq, the durable high-water
// mark), says "records cut: n" and never reuses their seqs.
func TestCutOnAFrameBoundaryIsLoud(t *testing.T) {
	const total = 120
	src := t.TempDir()
	opts := smallOptions()
	j := open(t, src, opts)
	appendN(t, j, "oomd", 1, total)
	require.NoError(t, j.Close())
	segs := segmentFiles(t, src)
	require.Len(t, segs, 3)

	for _, tc := range []struct {
		name string
		seg  int
	}{{"newest segment", 2}, {"older segment", 0}} {
		dir := copyDir(t, src)
		path := filepath.Join(dir, filepath.Base(segs[tc.seg]))
		offs := frameOffsets(t, path)
		require.Greater(t, len(offs), 4)
		require.NoError(t, os.Truncate(path, offs[len(offs)-3])) // the last 3 records
		first, _ := parseSegmentName(filepath.Base(path))
		lastKept := first + uint64(len(offs)-3) - 2

		log, logs := observed(t)
		j, err := Open(dir, opts, log)
		require.NoError(t, err, tc.name)
		cut := logs.FilterMessageSnippet("records").FilterLevelExact(zapcore.ErrorLevel).All()
		require.NotEmpty(t, cut, tc.name)
		assert.Equal(t, uint64(3), cut[0].ContextMap()["records_cut"], tc.name)
		assert.Equal(t, 1, j.Status().Corruptions, tc.name)
		seq, err := j.Append("oomd", j.LastWriterSeq("oomd")+1, nil)
		require.NoError(t, err, tc.name)
		assert.Equal(t, uint64(total+1), seq, "%s: above every seq handed out (the cut ones are not reused)", tc.name)
		require.NoError(t, j.Sync(ctxT(t), seq))
		es, missed := readAll(t, j)
		assert.Equal(t, uint64(3), missed, "%s: readers are told", tc.name)
		for _, e := range es {
			assert.False(t, e.Seq > lastKept && e.Seq <= lastKept+3, "%s: seq %d was cut", tc.name, e.Seq)
		}
		require.NoError(t, j.Close())
	}
}

// TestCorruptEndOfNewestSegment: a damaged last record (complete, bad checksum) is not a
// torn tail: it is quarantined, reported, and its seq is not reused.
func TestCorruptEndOfNewestSegment(t *testing.T) {
	src := t.TempDir()
	j := open(t, src, Options{})
	appendN(t, j, "oomd", 1, 5)
	require.NoError(t, j.Close())
	dir := copyDir(t, src)
	path := segmentFiles(t, dir)[0]
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	b[len(b)-2] ^= 0xff
	require.NoError(t, os.WriteFile(path, b, 0o600))

	log, logs := observed(t)
	j, err = Open(dir, Options{}, log)
	require.NoError(t, err)
	es, _ := readAll(t, j)
	assert.Equal(t, seqRange(1, 4), seqsOf(es))
	assert.Len(t, quarantineFiles(t, dir), 1)
	assert.NotZero(t, logs.FilterMessageSnippet("corrupt").FilterLevelExact(zapcore.ErrorLevel).Len())
	assert.Zero(t, logs.FilterMessageSnippet("torn").Len(), "not a torn tail")
	d := j.Damage()
	require.Len(t, d, 1)
	assert.Equal(t, [2]uint64{5, 5}, [2]uint64{d[0].FirstLost, d[0].LastLost}, "the acknowledged record 5 is named lost")
	assert.Equal(t, uint64(4), j.LastWriterSeq("oomd"), "the writer is told its record 5 is not here (to resend it)")
	seq, err := j.Append("oomd", 5, nil)
	require.NoError(t, err)
	assert.Equal(t, uint64(6), seq, "seq 5 is not reused")
}

// TestTornTailAfterACrash is the real crash: the last record was written but not
// fsync'ed (never acknowledged) when the machine stopped. Cutting it is a WARN with the
// byte count, and its seq may be reused because no reader ever saw it.
func TestTornTailAfterACrash(t *testing.T) {
	src := t.TempDir()
	j := open(t, src, Options{})
	appendN(t, j, "oomd", 1, 4)
	lastStart := int64(j.Status().DiskBytes)
	_, err := j.Append("oomd", 5, data("oomd", 5)) // not synced
	require.NoError(t, err)
	dir := copyDir(t, src) // the crash: no Close
	path := segmentFiles(t, dir)[0]
	require.NoError(t, os.Truncate(path, lastStart+7))

	log, logs := observed(t)
	j2, err := Open(dir, Options{}, log)
	require.NoError(t, err)
	defer j2.Close()
	torn := logs.FilterMessageSnippet("torn").FilterLevelExact(zapcore.WarnLevel).All()
	require.Len(t, torn, 1)
	assert.Equal(t, int64(7), torn[0].ContextMap()["bytes"])
	assert.Zero(t, logs.FilterLevelExact(zapcore.ErrorLevel).Len())
	assert.Zero(t, j2.Status().Corruptions)
	assert.Equal(t, int64(7), j2.Status().TornBytes)
	es, missed := readAll(t, j2)
	assert.Equal(t, seqRange(1, 4), seqsOf(es))
	assert.Zero(t, missed)
}

func TestSymlinksRefused(t *testing.T) {
	root := t.TempDir()
	real := filepath.Join(root, "real")
	j := open(t, real, Options{})
	appendN(t, j, "oomd", 1, 2)
	require.NoError(t, j.Close())

	link := filepath.Join(root, "link")
	require.NoError(t, os.Symlink(real, link))
	_, err := Open(link, Options{}, zaptest.NewLogger(t))
	require.ErrorIs(t, err, safefile.ErrSymlink, "a symlinked journal directory")
	assert.Contains(t, err.Error(), link)

	other := filepath.Join(root, "other.seg")
	require.NoError(t, os.WriteFile(other, nil, 0o600))
	require.NoError(t, os.Symlink(other, filepath.Join(real, segmentName(1000))))
	_, err = Open(real, Options{}, zaptest.NewLogger(t))
	assert.ErrorIs(t, err, safefile.ErrSymlink, "a symlinked segment")
}
