package journal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
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
	ErrBadWriter      = errors.New("writer name must be 1..64 bytes of UTF-8")
	ErrTooLarge       = errors.New("record data too large")
	ErrClosed         = errors.New("journal closed")
	// ErrFailed: an fsync or write failed. After a failed fsync the kernel may have
	// dropped dirty pages, so nothing written since the last good fsync can be trusted
	// again; the journal refuses all further work and the process should restart so
	// Open re-reads the files.
	ErrFailed = errors.New("journal failed")
	ErrInUse  = errors.New("journal directory is locked by another process")
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
	Data      []byte
}

// Status is a snapshot of the journal's sequence numbers and size.
type Status struct {
	FirstSeq   uint64 // oldest seq still on disk (LastSeq+1 when none is)
	LastSeq    uint64 // last seq written
	DurableSeq uint64 // last seq fsync'ed; Read serves up to here
	DiskBytes  uint64 // sum of segment file sizes
	Segments   int
	Fsyncs     uint64 // segment fsyncs since Open; far fewer than syncs under load
}

type writerState struct {
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
	if (seq-s.first)%sparseEvery == 0 {
		s.marks = append(s.marks, mark{seq, off})
	}
	s.last = seq
}

// Journal is safe for concurrent use.
type Journal struct {
	dir  string
	opts Options
	log  *zap.Logger
	lock *os.File

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

// fsync syncs one segment file and counts it.
func (j *Journal) fsync(f *os.File) error {
	j.fsyncs.Add(1)
	return f.Sync()
}

// Open opens or creates the journal in dir, recovering from a crash (see the package
// doc).
func Open(dir string, opts Options, log *zap.Logger) (*Journal, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("journal options: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create journal dir: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("lock %s: %w (%v)", dir, ErrInUse, err)
	}
	j := &Journal{
		dir: dir, opts: o, log: log, lock: lock,
		writers: make(map[string]*writerState),
		failed:  make(chan struct{}),
	}
	if err := j.recover(); err != nil {
		j.closeFiles()
		return nil, err
	}
	return j, nil
}

func (j *Journal) recover() error {
	des, err := os.ReadDir(j.dir)
	if err != nil {
		return fmt.Errorf("list journal dir: %w", err)
	}
	for _, de := range des {
		first, ok := parseSegmentName(de.Name())
		if !ok {
			continue
		}
		path := filepath.Join(j.dir, de.Name())
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("open segment %s: %w", path, err)
		}
		j.segments = append(j.segments, &segment{first: first, last: first - 1, f: f, path: path})
	}
	sort.Slice(j.segments, func(a, b int) bool { return j.segments[a].first < j.segments[b].first })

	for i, s := range j.segments {
		if i > 0 && s.first <= j.segments[i-1].last {
			return fmt.Errorf("segment %s starts at seq %d, inside the previous segment (ends at %d): the directory was tampered with", s.path, s.first, j.segments[i-1].last)
		}
		if err := j.scan(s, i == len(j.segments)-1); err != nil {
			return err
		}
		// Frames the previous process wrote but never fsync'ed can still sit dirty in
		// the page cache; syncing now makes everything recovered durable before any of
		// it is served or acknowledged.
		if err := j.fsync(s.f); err != nil {
			return fmt.Errorf("fsync segment %s: %w", s.path, err)
		}
	}

	if len(j.segments) == 0 {
		if err := j.startSegment(1); err != nil {
			return err
		}
	} else if a := j.active(); a.size == 0 {
		// The crash cut even the checkpoint: write it again so this segment alone still
		// carries the writer table once older segments rotate away.
		j.buf = encodeCheckpoint(j.buf[:0], j.writers)
		if err := j.writeAt(a, j.buf); err != nil {
			return err
		}
		if err := j.fsync(a.f); err != nil {
			return fmt.Errorf("fsync segment %s: %w", a.path, err)
		}
	}
	a := j.active()
	j.last = a.last
	j.durable = j.last
	if err := j.dropOldest(); err != nil {
		return err
	}
	st := j.statusLocked()
	j.log.Info("journal open", zap.String("dir", j.dir), zap.Uint64("first_seq", st.FirstSeq),
		zap.Uint64("seq", st.LastSeq), zap.Int("segments", st.Segments),
		zap.Uint64("bytes", st.DiskBytes), zap.Int("writers", len(j.writers)))
	return nil
}

// scan reads one segment, rebuilding its index and the writer table, and cuts it at the
// first bad frame.
func (j *Journal) scan(s *segment, isLast bool) error {
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("seek segment %s: %w", s.path, err)
	}
	fr := newFrameReader(s.f)
	var off int64
	var bad error
	for {
		f, err := fr.next()
		if err == io.EOF {
			break
		}
		if err == nil && f.kind == kindEntry && f.seq != s.last+1 {
			err = fmt.Errorf("entry seq %d where %d was expected", f.seq, s.last+1)
		}
		if err == nil && f.kind == kindCheckpoint && off != 0 {
			err = errors.New("checkpoint not at the start of the segment")
		}
		if err != nil {
			bad = err
			break
		}
		switch f.kind {
		case kindEntry:
			s.noteEntry(f.seq, off)
			j.noteWriter(string(f.writer), f.writerSeq, 0)
		case kindCheckpoint:
			for _, c := range f.checkpoint {
				j.noteWriter(c.writer, c.lastWriterSeq, 0)
			}
		}
		off += f.size
	}
	fi, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("stat segment %s: %w", s.path, err)
	}
	s.size = off
	if bad == nil && fi.Size() == off {
		return nil
	}
	cut := fi.Size() - off
	fields := []zap.Field{zap.String("segment", s.path), zap.Int64("offset", off),
		zap.Int64("bytes", cut), zap.Uint64("seq", s.last), zap.NamedError("cause", bad)}
	if isLast {
		j.log.Warn("cutting torn tail of the journal", fields...)
	} else {
		j.log.Error("cutting corrupt data in a sealed segment: later seqs of this segment are lost", fields...)
	}
	if err := s.f.Truncate(off); err != nil {
		return fmt.Errorf("truncate segment %s at %d: %w", s.path, off, err)
	}
	return nil
}

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
	path := filepath.Join(j.dir, segmentName(first))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
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
	if err := syncDir(j.dir); err != nil {
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
		if err := os.Remove(s.path); err != nil {
			return fmt.Errorf("remove oldest segment %s: %w", s.path, err)
		}
		j.log.Info("dropped oldest segment", zap.String("segment", s.path),
			zap.Uint64("seq", s.last), zap.Int64("bytes", s.size))
		j.segments = j.segments[1:]
	}
	return syncDir(j.dir)
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
	if ws != nil {
		last = ws.lastWriterSeq
	} else if len(j.writers) >= j.opts.MaxWriters {
		return 0, fmt.Errorf("%w: %d writers already known; writer %q refused", ErrTooManyWriters, len(j.writers), writer)
	}
	if writerSeq <= last {
		return 0, ErrDuplicate
	}
	if writerSeq != last+1 {
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
	a := j.active()
	off := a.size
	j.buf = encodeEntry(j.buf[:0], seq, writerSeq, writer, data)
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
				Data: append([]byte(nil), f.data...)})
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
	st := Status{LastSeq: j.last, DurableSeq: j.durable, FirstSeq: j.last + 1, Segments: len(j.segments),
		Fsyncs: j.fsyncs.Load()}
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
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s for fsync: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}
