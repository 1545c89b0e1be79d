package daemon

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/gen/bounds"
	"oomd.dev/oomd/internal/frame"
	"oomd.dev/oomd/internal/safefile"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/wire"
)

// DefaultSpillMaxBytes is the default bound of the spill file (--spill-max-bytes).
// A spilled record is 60-400 bytes (subject <= 64, reason <= 256), so 8 MiB holds at
// least ~20 000 records: hours of kill decisions and denials, or minutes of a spoofer's
// rejections (one per tick) during a logd outage.
const DefaultSpillMaxBytes = 8 << 20

// ErrSpillFull is returned by Spill.Append when the batch would exceed the bound. Nothing
// is written; the records stay pending (and their kills wait) until logd takes the spill.
var ErrSpillFull = errors.New("audit spill file is full")

const (
	// spillVersion 2 added the execd run after the decision and the trace position after
	// the reason; version 1 records (written before) are still read, with run 0
	// (unknown) and no trace position.
	spillVersion = 2
	// spillFixedBytes: version, journal writerSeq, tick, kind, instance, bytes, limit,
	// decision, execd run, subject length, reason length, trace position length.
	spillFixedBytes   = 1 + 8 + 8 + 2 + 8 + 8 + 8 + 8 + 8 + 1 + 2 + 1
	spillFixedBytesV1 = spillFixedBytes - 8 - 1
	spillMaxTracePos  = bounds.MaxTracePosBytes
	spillMaxSubject   = bounds.MaxSubjectBytes
	spillMaxReason    = bounds.MaxReasonBytes
	spillMaxPayload   = spillFixedBytes + spillMaxSubject + spillMaxReason + spillMaxTracePos
	spillMinMaxBytes  = 64 << 10
)

// SpilledRecord is one audit record in the spill file, with the writerSeq it has (and
// will have) in logd's journal.
type SpilledRecord struct {
	JournalSeq uint64
	Rec        policy.AuditRecord
	ExecdRun   uint64 // AuditRecord.execdRun: which execd run Rec.Instance belongs to
}

// Spill is oomd's own durable audit store for when logd is unreachable or slow. It is an
// append-only file of frames (internal/frame: len, CRC32C, payload), each one audit
// record with its journal writerSeq; the seqs in a file are consecutive. Append returns
// only after fsync, so an appended record is durable and counts as the audit a kill
// waits for. Once logd holds every spilled record, Reset truncates the file.
//
// The file survives restarts: OpenSpill reads it back (cutting a torn tail, keeping
// every intact record around corruption, see recover) and the auditor replays what is
// left to logd before anything else. The path must not be a symlink and must name a
// regular file.
//
// Bounds: the file never exceeds maxBytes (Append refuses with ErrSpillFull); the records
// are also kept in memory (at most ~2x the file size) for replay.
type Spill struct {
	path     string
	log      *zap.Logger
	f        *os.File
	dir      *safefile.Dir // the spill's directory: quarantine files, rewrites, its fsync
	syncer   safefile.Syncer
	maxBytes int64
	buf      []byte
	// Corrupt counts the damaged ranges recovery quarantined at open; Lost the records
	// known lost to them (each replaced by a placeholder record, see recover).
	Corrupt, Lost int

	// mu lets Len, Last and Size be read from any goroutine (status, tests); Append,
	// Reset and Records belong to one goroutine (the auditor's).
	mu   sync.Mutex
	size int64
	recs []SpilledRecord
}

// OpenSpill opens (creating if needed) the spill file at path, bounded by maxBytes
// (0 = DefaultSpillMaxBytes), and recovers its content. The file is flock'ed: two oomd
// processes never share one.
func OpenSpill(path string, maxBytes int64, log *zap.Logger) (*Spill, error) {
	return openSpillWith(path, maxBytes, log, safefile.OS)
}

// openSpillWith is OpenSpill with the fsync seam (tests count or fail fsyncs through it).
func openSpillWith(path string, maxBytes int64, log *zap.Logger, syncer safefile.Syncer) (*Spill, error) {
	if maxBytes == 0 {
		maxBytes = DefaultSpillMaxBytes
	}
	if maxBytes < spillMinMaxBytes {
		return nil, fmt.Errorf("spill: max bytes %d below the minimum %d", maxBytes, spillMinMaxBytes)
	}
	if log == nil {
		log = zap.NewNop()
	}
	// Never through a symlink (it would truncate or fill whatever it points at), and
	// only a regular file.
	f, err := safefile.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spill: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("spill %s: locked by another process: %w", path, err)
	}
	dir, err := safefile.OpenDir(filepath.Dir(path), false)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("spill: %w", err)
	}
	s := &Spill{path: path, log: log.Named("spill"), f: f, dir: dir, syncer: syncer, maxBytes: maxBytes}
	if err := s.recover(); err != nil {
		s.Close()
		return nil, err
	}
	// A new file's directory entry must be durable too.
	if err := dir.Sync(syncer); err != nil {
		s.Close()
		return nil, fmt.Errorf("spill: %w", err)
	}
	return s, nil
}

// recover reads the file back. Only an incomplete frame (or zeros) at its very end is a
// torn tail (a crash mid-append, never acknowledged): cut, WARN. Any other damage is
// corruption: every intact record after it is kept (frame.Walk resynchronises on the
// next frame whose checksum matches, whose record decodes and whose seq fits), the
// damaged bytes are copied to "<spill>.quarantine.<n>", and the file is rewritten without
// them. A record known lost (its seq lies between two kept ones) is replaced by a
// placeholder record (kind auditSpilled, reason "lost: ...") so logd still receives
// every writerSeq in order and the journal says what was lost. Each finding is logged at
// ERROR with offsets and counts.
func (s *Spill) recover() error {
	fi, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("spill: %w", err)
	}
	size := fi.Size()
	// A resynchronised record may not claim a seq further ahead than the file could
	// hold records: that bounds the placeholders too.
	maxAhead := uint64(size/(frame.HeaderBytes+spillFixedBytes)) + 1
	var holes []spillHole
	accept := func(_ int64, p []byte, resync bool) error {
		rec, err := decodeSpilled(p)
		if err != nil {
			return fmt.Errorf("%w: %v", frame.ErrReject, err)
		}
		if n := len(s.recs); n > 0 {
			prev := s.recs[n-1].JournalSeq
			switch {
			case !resync && rec.JournalSeq != prev+1:
				return fmt.Errorf("%w: journal seq %d after %d", frame.ErrReject, rec.JournalSeq, prev)
			case rec.JournalSeq <= prev || rec.JournalSeq > prev+maxAhead:
				return fmt.Errorf("%w: journal seq %d does not fit after %d", frame.ErrReject, rec.JournalSeq, prev)
			case rec.JournalSeq > prev+1:
				holes = append(holes, spillHole{at: n, from: prev + 1, to: rec.JournalSeq - 1})
			}
		}
		s.recs = append(s.recs, rec)
		return nil
	}
	damage, err := frame.Walk(s.f, size, frame.WalkOptions{MaxPayload: spillMaxPayload}, accept)
	if err != nil {
		return fmt.Errorf("spill: read %s: %w", s.path, err)
	}
	s.size = size
	var corrupt []frame.Damage
	for _, d := range damage {
		if d.AtEnd && d.Torn {
			s.log.Warn("spill file: cutting a torn tail (a crash mid-append; nothing acknowledged is lost)",
				zap.String("path", s.path), zap.Int64("offset", d.Off), zap.Int64("bytes", d.End-d.Off),
				zap.Int("keptRecords", len(s.recs)), zap.NamedError("cause", d.Cause))
			s.size = d.Off
			continue
		}
		corrupt = append(corrupt, d)
	}
	if len(corrupt) > 0 {
		if err := s.repair(corrupt, holes); err != nil {
			return err
		}
	} else if s.size < size {
		if err := s.f.Truncate(s.size); err != nil {
			return fmt.Errorf("spill: truncate %s: %w", s.path, err)
		}
	}
	if err := s.syncer.Sync(s.f); err != nil {
		return fmt.Errorf("spill: fsync %s: %w", s.path, err)
	}
	if _, err := s.f.Seek(s.size, io.SeekStart); err != nil {
		return fmt.Errorf("spill: %w", err)
	}
	if len(s.recs) > 0 {
		s.log.Info("spill file holds records for logd", zap.String("path", s.path),
			zap.Uint64("first", s.recs[0].JournalSeq), zap.Uint64("last", s.recs[len(s.recs)-1].JournalSeq))
	}
	return nil
}

// spillHole: records from..to were lost before s.recs[at].
type spillHole struct {
	at       int
	from, to uint64
}

// repair quarantines the corrupt ranges, fills the holes with placeholder records and
// rewrites the file from s.recs: a new file, fsync'ed and locked, renamed over the old
// one, then the directory fsync'ed. A crash leaves the old file (recovered again at the
// next start) or the new one.
func (s *Spill) repair(corrupt []frame.Damage, holes []spillHole) error {
	base := filepath.Base(s.path)
	var ranges []safefile.Range
	for _, d := range corrupt {
		ranges = append(ranges, safefile.Range{Off: d.Off, End: d.End})
	}
	qname, err := s.dir.Quarantine(base, s.f, ranges, s.syncer)
	if err != nil {
		return fmt.Errorf("spill: %w", err)
	}
	recs := make([]SpilledRecord, 0, len(s.recs))
	next := 0
	lost := 0
	for _, h := range holes {
		recs = append(recs, s.recs[next:h.at]...)
		next = h.at
		for seq := h.from; seq <= h.to; seq++ {
			recs = append(recs, SpilledRecord{JournalSeq: seq, Rec: wire.LostRecord(seq, "spill file corruption, damaged bytes in "+qname)})
			lost++
		}
	}
	recs = append(recs, s.recs[next:]...)
	s.recs = recs
	s.Corrupt, s.Lost = len(corrupt), lost
	for _, d := range corrupt {
		s.log.Error("spill file corrupt: damaged bytes quarantined, every intact record kept",
			zap.String("path", s.path), zap.Int64("offset", d.Off), zap.Int64("bytes", d.End-d.Off),
			zap.String("quarantine", qname), zap.Bool("atEnd", d.AtEnd), zap.NamedError("cause", d.Cause))
	}
	s.log.Error("spill file corrupt", zap.String("path", s.path), zap.Int("corruptions", len(corrupt)),
		zap.Int("recordsLost", lost), zap.Int("keptRecords", len(s.recs)-lost), zap.String("quarantine", qname))

	tmp := base + ".tmp"
	_ = s.dir.Remove(tmp)
	f, err := s.dir.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("spill: rewrite: %w", err)
	}
	fail := func(err error) error {
		f.Close()
		_ = s.dir.Remove(tmp)
		return fmt.Errorf("spill: rewrite %s: %w", s.path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fail(err)
	}
	var buf []byte
	for _, r := range s.recs {
		var start int
		buf, start = frame.Begin(buf)
		buf = encodeSpilled(buf, r)
		buf = frame.Seal(buf, start)
	}
	if _, err := f.Write(buf); err != nil {
		return fail(err)
	}
	if err := s.syncer.Sync(f); err != nil {
		return fail(err)
	}
	if err := s.dir.Rename(tmp, base); err != nil {
		return fail(err)
	}
	if err := s.dir.Sync(s.syncer); err != nil {
		f.Close()
		return fmt.Errorf("spill: %w", err)
	}
	s.f.Close()
	s.f, s.size = f, int64(len(buf))
	return nil
}

// Records returns the spilled records in order (the slice is the spill's; do not keep it
// across Append or Reset).
func (s *Spill) Records() []SpilledRecord { return s.recs }

// Len is the number of spilled records.
func (s *Spill) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.recs)
}

// Last is the journal seq of the last spilled record, false if the spill is empty.
func (s *Spill) Last() (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.recs) == 0 {
		return 0, false
	}
	return s.recs[len(s.recs)-1].JournalSeq, true
}

// Size is the file's size in bytes.
func (s *Spill) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size
}

// Append writes recs (consecutive journal seqs following Last) and fsyncs. On
// ErrSpillFull nothing was written. After a write or fsync error the file is cut back
// to its previous size when possible.
func (s *Spill) Append(recs []SpilledRecord) error {
	if len(recs) == 0 {
		return nil
	}
	next, ok := s.Last()
	for _, r := range recs {
		if ok && r.JournalSeq != next+1 {
			return fmt.Errorf("spill: journal seq %d does not follow %d", r.JournalSeq, next)
		}
		next, ok = r.JournalSeq, true
	}
	buf := s.buf[:0]
	for _, r := range recs {
		var start int
		buf, start = frame.Begin(buf)
		buf = encodeSpilled(buf, r)
		buf = frame.Seal(buf, start)
	}
	s.buf = buf
	if s.size+int64(len(buf)) > s.maxBytes {
		return fmt.Errorf("%w (%d of %d bytes used, %d more needed)", ErrSpillFull, s.size, s.maxBytes, len(buf))
	}
	if _, err := s.f.WriteAt(buf, s.size); err != nil {
		s.f.Truncate(s.size)
		return fmt.Errorf("spill: write: %w", err)
	}
	if err := s.syncer.Sync(s.f); err != nil {
		// After a failed fsync the written pages cannot be trusted: cut them.
		s.f.Truncate(s.size)
		return fmt.Errorf("spill: fsync: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.size += int64(len(buf))
	for _, r := range recs {
		r.Rec.WriterSeq = r.JournalSeq // as decodeSpilled returns it
		r.Rec.Subject = clipString(r.Rec.Subject, spillMaxSubject)
		r.Rec.Reason = clipString(r.Rec.Reason, spillMaxReason)
		r.Rec.TracePos = clipString(r.Rec.TracePos, spillMaxTracePos)
		s.recs = append(s.recs, r)
	}
	return nil
}

// Reset empties the spill once logd holds every record in it.
func (s *Spill) Reset() error {
	if err := s.f.Truncate(0); err != nil {
		return fmt.Errorf("spill: truncate: %w", err)
	}
	if err := s.syncer.Sync(s.f); err != nil {
		return fmt.Errorf("spill: fsync: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.size = 0
	clear(s.recs)
	s.recs = s.recs[:0]
	return nil
}

// Close closes the file (and releases the lock).
func (s *Spill) Close() error {
	s.dir.Close()
	return s.f.Close()
}

func clipString(v string, n int) string {
	if len(v) > n {
		return v[:n]
	}
	return v
}

func encodeSpilled(buf []byte, r SpilledRecord) []byte {
	subject := clipString(r.Rec.Subject, spillMaxSubject)
	reason := clipString(r.Rec.Reason, spillMaxReason)
	buf = append(buf, spillVersion)
	buf = binary.LittleEndian.AppendUint64(buf, r.JournalSeq)
	buf = binary.LittleEndian.AppendUint64(buf, r.Rec.Tick)
	buf = binary.LittleEndian.AppendUint16(buf, uint16(r.Rec.Kind))
	buf = binary.LittleEndian.AppendUint64(buf, r.Rec.Instance)
	buf = binary.LittleEndian.AppendUint64(buf, r.Rec.Bytes)
	buf = binary.LittleEndian.AppendUint64(buf, r.Rec.Limit)
	buf = binary.LittleEndian.AppendUint64(buf, r.Rec.Decision)
	buf = binary.LittleEndian.AppendUint64(buf, r.ExecdRun)
	pos := clipString(r.Rec.TracePos, spillMaxTracePos)
	buf = append(buf, byte(len(subject)))
	buf = binary.LittleEndian.AppendUint16(buf, uint16(len(reason)))
	buf = append(buf, byte(len(pos)))
	buf = append(buf, subject...)
	buf = append(buf, reason...)
	return append(buf, pos...)
}

func decodeSpilled(p []byte) (SpilledRecord, error) {
	fixed := spillFixedBytes
	switch {
	case len(p) > 0 && p[0] == 1:
		fixed = spillFixedBytesV1
	case len(p) > 0 && p[0] != spillVersion:
		return SpilledRecord{}, fmt.Errorf("unknown record version %d", p[0])
	}
	if len(p) < fixed {
		return SpilledRecord{}, fmt.Errorf("record of %d bytes is shorter than its header", len(p))
	}
	le := binary.LittleEndian
	r := SpilledRecord{JournalSeq: le.Uint64(p[1:])}
	r.Rec.Tick = le.Uint64(p[9:])
	r.Rec.Kind = policy.EventKind(le.Uint16(p[17:]))
	r.Rec.Instance = le.Uint64(p[19:])
	r.Rec.Bytes = le.Uint64(p[27:])
	r.Rec.Limit = le.Uint64(p[35:])
	r.Rec.Decision = le.Uint64(p[43:])
	slen, rlen, plen := int(p[51]), int(le.Uint16(p[52:])), 0
	if fixed == spillFixedBytes {
		r.ExecdRun = le.Uint64(p[51:])
		slen, rlen, plen = int(p[59]), int(le.Uint16(p[60:])), int(p[62])
	}
	rest := p[fixed:]
	if slen > spillMaxSubject || rlen > spillMaxReason || plen > spillMaxTracePos || len(rest) != slen+rlen+plen {
		return SpilledRecord{}, fmt.Errorf("bad lengths subject=%d reason=%d tracePos=%d for %d bytes", slen, rlen, plen, len(rest))
	}
	if r.JournalSeq == 0 {
		return SpilledRecord{}, errors.New("journal seq 0")
	}
	r.Rec.Subject = string(rest[:slen])
	r.Rec.Reason = string(rest[slen : slen+rlen])
	r.Rec.TracePos = string(rest[slen+rlen:])
	r.Rec.WriterSeq = r.JournalSeq // the run that spilled it is gone; only the journal seq counts
	return r, nil
}
