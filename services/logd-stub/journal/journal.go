package journal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/internal/safefile"
)

// Defaults for Options.
const (
	DefaultMaxSegmentBytes = 4 << 20
	DefaultMaxSegments     = 8
	DefaultMaxWriters      = 64
)

// Options bound the journal. Zero fields take the defaults.
type Options struct {
	// MaxSegmentBytes is the size at which a segment is sealed and a new one started.
	// At least MinSegmentBytes(MaxWriters).
	MaxSegmentBytes int64
	// MaxSegments is how many segment files are kept; the oldest is deleted beyond it.
	// At least 2, so the records just before a rotation stay readable.
	MaxSegments int
	// MaxWriters bounds the per-writer table; a new writer beyond it is refused.
	// 1..4096.
	MaxWriters int
	// Syncer performs every fsync (segments, the directory, the high-water mark);
	// nil = safefile.OS. Tests count or fail fsyncs through it.
	Syncer safefile.Syncer
	// Now stamps each entry's append time (Entry.AppendedAtNs); nil = time.Now.
	Now func() time.Time
}

// MinSegmentBytes is the smallest MaxSegmentBytes that always fits a full checkpoint and
// one largest entry, which is what keeps every segment within its bound.
func MinSegmentBytes(maxWriters int) int64 {
	return checkpointFrameBytes(maxWriters) + frameHeaderBytes + entryFixedBytes + MaxWriterBytes + MaxDataBytes
}

func (o *Options) withDefaults() (Options, error) {
	r := *o
	if r.MaxWriters == 0 {
		r.MaxWriters = DefaultMaxWriters
	}
	if r.MaxSegmentBytes == 0 {
		r.MaxSegmentBytes = DefaultMaxSegmentBytes
	}
	if r.MaxSegments == 0 {
		r.MaxSegments = DefaultMaxSegments
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.MaxWriters < 1 || r.MaxWriters > 4096 {
		return r, fmt.Errorf("max writers %d: must be 1..4096", r.MaxWriters)
	}
	if min := MinSegmentBytes(r.MaxWriters); r.MaxSegmentBytes < min || r.MaxSegmentBytes > 1<<30 {
		return r, fmt.Errorf("max segment bytes %d: must be %d..%d (the lower bound grows with max writers)", r.MaxSegmentBytes, min, 1<<30)
	}
	if r.MaxSegments < 2 || r.MaxSegments > 1024 {
		return r, fmt.Errorf("max segments %d: must be 2..1024", r.MaxSegments)
	}
	return r, nil
}

// Errors returned by the journal. Append's sequencing errors are ErrDuplicate and
// *GapError; the rest are about the journal itself.
var (
	ErrDuplicate      = errors.New("duplicate: writerSeq is not above the writer's last")
	ErrTooManyWriters = errors.New("too many writers")
	ErrBadWriter      = fmt.Errorf("writer name must be 1..%d bytes of UTF-8", MaxWriterBytes)
	ErrTooLarge       = errors.New("record data too large")
	ErrClosed         = errors.New("journal closed")
	// ErrFailed: an fsync or write failed. After a failed fsync the kernel may have
	// dropped dirty pages, so nothing written since the last good fsync can be trusted
	// again; the journal refuses all further work and the process should restart so
	// Open re-reads the files.
	ErrFailed = errors.New("journal failed")
	ErrInUse  = errors.New("journal directory is locked by another process")
	// ErrFenced: the writer was opened again (Fence) since this appender's epoch began,
	// so its appends would race the new opener's. A crashed writer's last in-flight
	// record can never land after its successor learned lastWriterSeq.
	ErrFenced = errors.New("writer was opened again by another appender (fenced)")
)

// GapError is returned when a writer skips writerSeqs.
type GapError struct {
	Writer   string
	Expected uint64
	Got      uint64
}

func (e *GapError) Error() string {
	return fmt.Sprintf("writerSeq gap for writer %q: expected %d, got %d", e.Writer, e.Expected, e.Got)
}

// Entry is one record as Read returns it.
type Entry struct {
	Seq       uint64
	Writer    string
	WriterSeq uint64
	// AppendedAtNs is logd's wall clock when the entry was appended (Unix ns), for
	// people; 0 for entries written before logd kept it.
	AppendedAtNs int64
	Data         []byte
}

// Status is a snapshot of the journal's sequence numbers and size.
type Status struct {
	FirstSeq   uint64 // oldest seq still on disk (LastSeq+1 when none is)
	LastSeq    uint64 // last seq written
	DurableSeq uint64 // last seq fsync'ed; Read serves up to here
	DiskBytes  uint64 // sum of segment file sizes
	Segments   int
	Fsyncs     uint64 // fsyncs since Open (segments, directory, high-water mark); far fewer than syncs under load

	// What recovery found at Open (logd's schema has no field for these: logd logs each
	// at ERROR and writes a "corrupt" record into the journal, see Damage).
	Corruptions      int    // damaged ranges quarantined, and cuts of acknowledged records
	QuarantinedBytes int64  // bytes moved to quarantine files
	LostSeqs         uint64 // seqs known lost (in gap frames written by this Open)
	TornBytes        int64  // bytes of torn tail cut (a crash mid-append; nothing acknowledged)
}

// Damage is one finding of recovery that lost or may have lost acknowledged data.
type Damage struct {
	Segment    string // segment file name
	Offset     int64  // where the damaged bytes started (-1: nothing on disk, records missing)
	Bytes      int64  // damaged bytes (moved to Quarantine)
	Quarantine string // quarantine file name in the journal directory, "" if no bytes
	FirstLost  uint64 // seqs FirstLost..LastLost are gone (0, 0: none known)
	LastLost   uint64
	Cause      string
}

type writerState struct {
	// epoch counts Fence calls (in memory: appenders do not outlive logd).
	epoch         uint64
	lastWriterSeq uint64
	// lastSeq is the journal seq holding lastWriterSeq, 0 when it is known durable
	// (recovered from disk), so syncing up to it covers all of the writer's records.
	lastSeq uint64
}

type mark struct {
	seq uint64
	off int64
}

type segment struct {
	first uint64 // seq of the first entry, from the file name
	last  uint64 // seq of the last entry; first-1 when empty
	size  int64
	f     *os.File
	path  string
	marks []mark
}

func (s *segment) empty() bool { return s.last < s.first }

func (s *segment) noteEntry(seq uint64, off int64) {
	// Spaced by seq rather than at multiples, so gaps (recovered damage) cannot leave a
	// long run without a mark.
	if len(s.marks) == 0 || seq-s.marks[len(s.marks)-1].seq >= sparseEvery {
		s.marks = append(s.marks, mark{seq, off})
	}
	s.last = seq
}

// Journal is safe for concurrent use.
type Journal struct {
	dir  *safefile.Dir
	opts Options
	log  *zap.Logger
	lock *os.File
	sy   safefile.Syncer // counts into fsyncs
	hwm  hwm             // the durable high-water mark as last written

	damage []Damage // what recovery found; fixed after Open
	// endsCorrupt: recovery found the newest segment's end damaged, so records after it
	// may have been acknowledged; the journal continues above the high-water mark.
	endsCorrupt bool
	found       Status // recovery's counters (the Corruptions.. fields)

	mu       sync.Mutex
	segments []*segment // oldest first; the last is the active one
	writers  map[string]*writerState
	last     uint64 // last seq written
	durable  uint64 // last seq covered by a completed fsync
	syncing  bool
	syncDone chan struct{} // closed when the in-flight fsync finishes
	buf      []byte
	err      error // sticky ErrFailed
	closed   bool
	failed   chan struct{}

	fsyncs atomic.Uint64
	// onWait, if set (tests), runs with mu held when a Sync caller starts waiting for an
	// in-flight fsync.
	onWait func()
}

// fsync syncs one file and counts it.
func (j *Journal) fsync(f *os.File) error { return j.sy.Sync(f) }

// syncDir makes the directory's entries durable.
func (j *Journal) syncDir() error { return j.dir.Sync(j.sy) }

// Open opens or creates the journal in dir, recovering from a crash (see the package
// doc).
func Open(dir string, opts Options, log *zap.Logger) (*Journal, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("journal options: %w", err)
	}
	d, err := safefile.OpenDir(dir, true)
	if err != nil {
		return nil, fmt.Errorf("journal dir: %w", err)
	}
	lock, err := d.OpenFile("LOCK", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		d.Close()
		return nil, fmt.Errorf("lock %s: %w (%v)", dir, ErrInUse, err)
	}
	j := &Journal{
		dir: d, opts: o, log: log, lock: lock,
		writers: make(map[string]*writerState),
		failed:  make(chan struct{}),
	}
	syncer := o.Syncer
	if syncer == nil {
		syncer = safefile.OS
	}
	j.sy = countingSyncer{inner: syncer, n: &j.fsyncs}
	if err := j.recover(); err != nil {
		j.closeFiles()
		return nil, err
	}
	return j, nil
}

// Damage lists what recovery at Open found lost or damaged (empty after a clean or
// merely torn shutdown).
func (j *Journal) Damage() []Damage { return append([]Damage(nil), j.damage...) }

// noteWriter raises a writer's last writerSeq. Recovery admits writers beyond
// MaxWriters (the table on disk wins over a lowered option); only new appends are refused.
func (j *Journal) noteWriter(w string, writerSeq, seq uint64) {
	ws := j.writers[w]
	if ws == nil {
		ws = &writerState{}
		j.writers[w] = ws
	}
	if writerSeq > ws.lastWriterSeq {
		ws.lastWriterSeq, ws.lastSeq = writerSeq, seq
	}
}

func (j *Journal) active() *segment { return j.segments[len(j.segments)-1] }

// startSegment creates the segment whose first entry will be seq `first`, writes its
// checkpoint and makes both the file and its directory entry durable.
func (j *Journal) startSegment(first uint64) error {
	name := segmentName(first)
	path := j.dir.Join(name)
	f, err := j.dir.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create segment %s: %w", path, err)
	}
	s := &segment{first: first, last: first - 1, f: f, path: path}
	j.buf = encodeCheckpoint(j.buf[:0], j.writers)
	if err := j.writeAt(s, j.buf); err != nil {
		f.Close()
		return err
	}
	if err := j.fsync(f); err != nil {
		f.Close()
		return fmt.Errorf("fsync segment %s: %w", path, err)
	}
	if err := j.syncDir(); err != nil {
		f.Close()
		return err
	}
	j.segments = append(j.segments, s)
	return nil
}

// writeAt appends b to s at its current end. On a failed write the file is cut back so
// no partial frame stays behind the last good one.
func (j *Journal) writeAt(s *segment, b []byte) error {
	if _, err := s.f.WriteAt(b, s.size); err != nil {
		_ = s.f.Truncate(s.size)
		return fmt.Errorf("write segment %s at %d: %w", s.path, s.size, err)
	}
	s.size += int64(len(b))
	return nil
}

// dropOldest deletes segments beyond MaxSegments, oldest first.
func (j *Journal) dropOldest() error {
	if len(j.segments) <= j.opts.MaxSegments {
		return nil
	}
	for len(j.segments) > j.opts.MaxSegments {
		s := j.segments[0]
		s.f.Close()
		if err := j.dir.Remove(filepath.Base(s.path)); err != nil {
			return fmt.Errorf("remove oldest segment: %w", err)
		}
		j.log.Info("dropped oldest segment", zap.String("segment", s.path),
			zap.Uint64("seq", s.last), zap.Int64("bytes", s.size))
		j.segments = j.segments[1:]
	}
	return j.syncDir()
}

// rotate seals the active segment (fsync) and starts the next one. The caller holds mu
// and has made sure no fsync is in flight.
func (j *Journal) rotate() error {
	old := j.active()
	if err := j.fsync(old.f); err != nil {
		return fmt.Errorf("fsync segment %s before sealing: %w", old.path, err)
	}
	j.durable = j.last
	if err := j.startSegment(j.last + 1); err != nil {
		return err
	}
	return j.dropOldest()
}

func (j *Journal) usableLocked() error {
	if j.err != nil {
		return j.err
	}
	if j.closed {
		return ErrClosed
	}
	return nil
}

// fail makes err sticky. Called with mu held.
func (j *Journal) fail(err error) error {
	if j.err == nil {
		j.err = fmt.Errorf("%w: %w", ErrFailed, err)
		close(j.failed)
		j.log.Error("journal failed; restart logd to recover", zap.Error(err))
	}
	return j.err
}

// Failed is closed when the journal hit a write or fsync error and refuses further work.
func (j *Journal) Failed() <-chan struct{} { return j.failed }

// ValidWriter reports whether w is an acceptable writer name (1..64 bytes of UTF-8).
func ValidWriter(w string) bool {
	return len(w) >= 1 && len(w) <= MaxWriterBytes && utf8.ValidString(w)
}

// Append writes one record of writer with the writer's next writerSeq and returns its
// journal seq. It does not fsync. writerSeq must be the writer's last + 1:
// a lower one returns ErrDuplicate (nothing written), a higher one *GapError.
func (j *Journal) Append(writer string, writerSeq uint64, data []byte) (uint64, error) {
	return j.append(writer, 0, writerSeq, data, false)
}

// Fence starts a new epoch of writer and returns it: from now on AppendFenced with an
// earlier epoch fails with ErrFenced. logd fences at every Journal.open before it reads
// lastWriterSeq, so a record still in flight on a dead writer's connection cannot land
// after the writer's successor was told where the sequence stands (it would take the
// successor's next writerSeq, and the successor's own record would then be dropped as a
// duplicate). A new writer beyond MaxWriters is refused with ErrTooManyWriters.
func (j *Journal) Fence(writer string) (uint64, error) {
	if !ValidWriter(writer) {
		return 0, ErrBadWriter
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	ws := j.writers[writer]
	if ws == nil {
		if len(j.writers) >= j.opts.MaxWriters {
			return 0, fmt.Errorf("%w: %d writers already known; writer %q refused", ErrTooManyWriters, j.opts.MaxWriters, writer)
		}
		ws = &writerState{}
		j.writers[writer] = ws
	}
	ws.epoch++
	return ws.epoch, nil
}

// Fenced reports whether epoch is no longer writer's current one.
func (j *Journal) Fenced(writer string, epoch uint64) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	ws := j.writers[writer]
	return ws == nil || ws.epoch != epoch
}

// AppendFenced is Append for an appender opened at epoch (Fence); lost declares the
// writerSeqs up to writerSeq lost, as AppendLost does.
func (j *Journal) AppendFenced(writer string, epoch, writerSeq uint64, data []byte, lost bool) (uint64, error) {
	if epoch == 0 {
		return 0, fmt.Errorf("append: epoch 0: call Fence first")
	}
	return j.append(writer, epoch, writerSeq, data, lost)
}

// AppendLost is Append for a record by which the writer declares its writerSeqs from
// its last + 1 up to writerSeq lost (logd no longer has them after damage or a restore
// from a backup, and the writer no longer holds them): it is accepted above last + 1 too,
// and the writer continues after it. The caller checks that data is such a declaration.
func (j *Journal) AppendLost(writer string, writerSeq uint64, data []byte) (uint64, error) {
	return j.append(writer, 0, writerSeq, data, true)
}

// append: epoch 0 is unfenced (Append, AppendLost).
func (j *Journal) append(writer string, epoch, writerSeq uint64, data []byte, skip bool) (uint64, error) {
	if !ValidWriter(writer) {
		return 0, ErrBadWriter
	}
	if len(data) > MaxDataBytes {
		return 0, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, len(data), MaxDataBytes)
	}
	n := entryFrameBytes(writer, data)
	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		if err := j.usableLocked(); err != nil {
			return 0, err
		}
		// Rotation may close the oldest segment; let an in-flight fsync finish first so
		// its file is never closed under it. Costs a wait once per segment at most.
		if !j.syncing || j.active().size+n <= j.opts.MaxSegmentBytes {
			break
		}
		done := j.syncDone
		j.mu.Unlock()
		<-done
		j.mu.Lock()
	}
	ws := j.writers[writer]
	var last uint64
	if epoch != 0 && (ws == nil || ws.epoch != epoch) {
		return 0, ErrFenced
	}
	if ws != nil {
		last = ws.lastWriterSeq
	} else if len(j.writers) >= j.opts.MaxWriters {
		return 0, fmt.Errorf("%w: %d writers already known; writer %q refused", ErrTooManyWriters, len(j.writers), writer)
	}
	if writerSeq <= last {
		return 0, ErrDuplicate
	}
	if writerSeq != last+1 && !skip {
		return 0, &GapError{Writer: writer, Expected: last + 1, Got: writerSeq}
	}
	// MinSegmentBytes guarantees a fresh segment takes any entry, so an empty active
	// segment never rotates (that would only make another empty one).
	if a := j.active(); !a.empty() && a.size+n > j.opts.MaxSegmentBytes {
		if err := j.rotate(); err != nil {
			return 0, j.fail(err)
		}
	}
	seq := j.last + 1
	// Once per hwmBatch records: the seq must be below the durable high-water mark
	// before it can reach a reader, so that no later recovery hands it out again.
	if err := j.reserve(seq); err != nil {
		return 0, err
	}
	a := j.active()
	off := a.size
	j.buf = encodeEntry(j.buf[:0], seq, writerSeq, j.opts.Now().UnixNano(), writer, data)
	if err := j.writeAt(a, j.buf); err != nil {
		// Nothing was appended (writeAt cut the file back), so the journal stays usable.
		return 0, err
	}
	a.noteEntry(seq, off)
	j.last = seq
	j.noteWriter(writer, writerSeq, seq)
	return seq, nil
}

// Sync returns once every entry with seq <= upTo is fsync'ed (upTo beyond the last
// written seq means all of them). Concurrent callers share fsyncs.
func (j *Journal) Sync(ctx context.Context, upTo uint64) error {
	for {
		j.mu.Lock()
		if err := j.usableLocked(); err != nil {
			j.mu.Unlock()
			return err
		}
		upTo = min(upTo, j.last)
		if j.durable >= upTo {
			j.mu.Unlock()
			return nil
		}
		if j.syncing {
			done := j.syncDone
			if j.onWait != nil {
				j.onWait()
			}
			j.mu.Unlock()
			select {
			case <-done:
				continue
			case <-ctx.Done():
				return fmt.Errorf("wait for fsync: %w", ctx.Err())
			}
		}
		// Lead one group commit: everything written so far rides on this fsync.
		j.syncing = true
		done := make(chan struct{})
		j.syncDone = done
		target, a := j.last, j.active()
		j.mu.Unlock()

		err := j.fsync(a.f)

		j.mu.Lock()
		j.syncing = false
		close(done)
		if err != nil {
			err = j.fail(fmt.Errorf("fsync segment %s: %w", a.path, err))
			j.mu.Unlock()
			return err
		}
		j.durable = max(j.durable, target)
		j.mu.Unlock()
	}
}

// LastWriterSeq returns the highest writerSeq appended by writer (0 if none).
func (j *Journal) LastWriterSeq(writer string) uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	if ws := j.writers[writer]; ws != nil {
		return ws.lastWriterSeq
	}
	return 0
}

// SyncWriter makes every record of writer durable and returns the writer's highest
// durable writerSeq. It fails with ErrTooManyWriters for an unknown writer when the
// table is full, so a writer learns at open time that it could never append.
func (j *Journal) SyncWriter(ctx context.Context, writer string) (uint64, error) {
	if !ValidWriter(writer) {
		return 0, ErrBadWriter
	}
	j.mu.Lock()
	ws := j.writers[writer]
	if ws == nil {
		full := len(j.writers) >= j.opts.MaxWriters
		j.mu.Unlock()
		if full {
			return 0, fmt.Errorf("%w: %d writers already known; writer %q refused", ErrTooManyWriters, j.opts.MaxWriters, writer)
		}
		return 0, nil
	}
	lastWriterSeq, seq := ws.lastWriterSeq, ws.lastSeq
	j.mu.Unlock()
	if err := j.Sync(ctx, seq); err != nil {
		return 0, err
	}
	return lastWriterSeq, nil
}

// Read returns durable entries with seq > since, oldest first: at most limit entries and,
// beyond the first, at most maxBytes of data (0: no byte bound). next is the seq to pass
// as since next time; missed counts seqs after since that are no longer on disk.
func (j *Journal) Read(since uint64, limit int, maxBytes int) (entries []Entry, next, missed uint64, err error) {
	next = since
	if limit <= 0 {
		return nil, next, 0, nil
	}
	// Held across the preads so rotation cannot close a file being read; reads are
	// bounded (limit, maxBytes) and served from the page cache in the common case.
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.usableLocked(); err != nil {
		return nil, next, 0, err
	}
	hi := j.durable
	expected := since + 1
	var bytes int
	for _, s := range j.segments {
		if s.empty() || s.last < since+1 || s.first > hi {
			continue
		}
		start := int64(0)
		for _, m := range s.marks {
			if m.seq > since+1 {
				break
			}
			start = m.off
		}
		fr := newFrameReader(io.NewSectionReader(s.f, start, s.size-start))
		for {
			f, err := fr.next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, next, missed, j.fail(fmt.Errorf("read segment %s: %w", s.path, err))
			}
			if f.kind != kindEntry || f.seq <= since {
				continue
			}
			if f.seq > hi || len(entries) == limit || (maxBytes > 0 && len(entries) > 0 && bytes+len(f.data) > maxBytes) {
				return entries, next, missed, nil
			}
			if f.seq > expected {
				missed += f.seq - expected
			}
			expected = f.seq + 1
			bytes += len(f.data)
			entries = append(entries, Entry{Seq: f.seq, Writer: string(f.writer), WriterSeq: f.writerSeq,
				AppendedAtNs: f.atNs, Data: append([]byte(nil), f.data...)})
			next = f.seq
		}
	}
	return entries, next, missed, nil
}

// Status returns the journal's current sequence numbers and size.
func (j *Journal) Status() Status {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.statusLocked()
}

func (j *Journal) statusLocked() Status {
	st := j.found
	st.LastSeq, st.DurableSeq, st.FirstSeq, st.Segments = j.last, j.durable, j.last+1, len(j.segments)
	st.Fsyncs = j.fsyncs.Load()
	for _, s := range j.segments {
		st.DiskBytes += uint64(s.size)
		if !s.empty() && s.first < st.FirstSeq {
			st.FirstSeq = s.first
		}
	}
	return st
}

// Close fsyncs what was written and releases the files and the directory lock.
func (j *Journal) Close() error {
	j.mu.Lock()
	for j.syncing {
		done := j.syncDone
		j.mu.Unlock()
		<-done
		j.mu.Lock()
	}
	if j.closed {
		j.mu.Unlock()
		return nil
	}
	j.closed = true
	var err error
	if j.err == nil {
		if serr := j.fsync(j.active().f); serr != nil {
			err = fmt.Errorf("fsync on close: %w", serr)
		} else {
			j.durable = j.last
			// Nothing above last was handed out: the next Open may continue right after
			// it, and knows exactly how many records a later cut took.
			if herr := j.writeHWM(hwm{reserved: j.last, durable: j.last}); herr != nil {
				err = herr
			}
		}
	}
	j.mu.Unlock()
	j.closeFiles()
	return err
}

func (j *Journal) closeFiles() {
	for _, s := range j.segments {
		s.f.Close()
	}
	j.lock.Close() // releases the flock
	j.dir.Close()
}
