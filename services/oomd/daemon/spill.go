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

	"oomd.dev/oomd/internal/frame"
	"oomd.dev/oomd/services/oomd/policy"
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
	spillVersion = 1
	// spillFixedBytes: version, journal writerSeq, tick, kind, instance, bytes, limit,
	// decision, subject length, reason length.
	spillFixedBytes  = 1 + 8 + 8 + 2 + 8 + 8 + 8 + 8 + 1 + 2
	spillMaxSubject  = 64
	spillMaxReason   = policy.MaxReasonBytes
	spillMaxPayload  = spillFixedBytes + spillMaxSubject + spillMaxReason
	spillMinMaxBytes = 64 << 10
)

// SpilledRecord is one audit record in the spill file, with the writerSeq it has (and
// will have) in logd's journal.
type SpilledRecord struct {
	JournalSeq uint64
	Rec        policy.AuditRecord
}

// Spill is oomd's own durable audit store for when logd is unreachable or slow. It is an
// append-only file of frames (internal/frame: len, CRC32C, payload), each one audit
// record with its journal writerSeq; the seqs in a file are consecutive. Append returns
// only after fsync, so an appended record is durable and counts as the audit a kill
// waits for. Once logd holds every spilled record, Reset truncates the file.
//
// The file survives restarts: OpenSpill reads it back, cuts a torn or corrupt tail (a
// crash mid-append; nothing before it was acknowledged past it) and the auditor replays
// what is left to logd before anything else.
//
// Bounds: the file never exceeds maxBytes (Append refuses with ErrSpillFull); the records
// are also kept in memory (at most ~2x the file size) for replay.
type Spill struct {
	path     string
	log      *zap.Logger
	f        *os.File
	maxBytes int64
	buf      []byte

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
	if maxBytes == 0 {
		maxBytes = DefaultSpillMaxBytes
	}
	if maxBytes < spillMinMaxBytes {
		return nil, fmt.Errorf("spill: max bytes %d below the minimum %d", maxBytes, spillMinMaxBytes)
	}
	if log == nil {
		log = zap.NewNop()
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spill: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("spill %s: locked by another process: %w", path, err)
	}
	s := &Spill{path: path, log: log.Named("spill"), f: f, maxBytes: maxBytes}
	if err := s.recover(); err != nil {
		f.Close()
		return nil, err
	}
	// A new file's directory entry must be durable too.
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return s, nil
}

func (s *Spill) recover() error {
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("spill: %w", err)
	}
	r := frame.NewReader(s.f, spillMaxPayload)
	var cause error
	for {
		p, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if !errors.Is(err, frame.ErrTorn) && !errors.Is(err, frame.ErrCorrupt) {
				return fmt.Errorf("spill: read %s: %w", s.path, err)
			}
			cause = err
			break
		}
		rec, err := decodeSpilled(p)
		if err == nil && len(s.recs) > 0 && rec.JournalSeq != s.recs[len(s.recs)-1].JournalSeq+1 {
			err = fmt.Errorf("journal seq %d after %d", rec.JournalSeq, s.recs[len(s.recs)-1].JournalSeq)
		}
		if err != nil {
			cause = fmt.Errorf("%w: %v", frame.ErrCorrupt, err)
			break
		}
		s.recs = append(s.recs, rec)
	}
	s.size = r.Offset()
	if cause != nil {
		s.log.Warn("spill file: cutting a torn or corrupt tail", zap.String("path", s.path),
			zap.Int64("keptBytes", s.size), zap.Int("keptRecords", len(s.recs)), zap.Error(cause))
		if err := s.f.Truncate(s.size); err != nil {
			return fmt.Errorf("spill: truncate %s: %w", s.path, err)
		}
	}
	if err := s.f.Sync(); err != nil {
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
	if err := s.f.Sync(); err != nil {
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
		s.recs = append(s.recs, r)
	}
	return nil
}

// Reset empties the spill once logd holds every record in it.
func (s *Spill) Reset() error {
	if err := s.f.Truncate(0); err != nil {
		return fmt.Errorf("spill: truncate: %w", err)
	}
	if err := s.f.Sync(); err != nil {
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
func (s *Spill) Close() error { return s.f.Close() }

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
	buf = append(buf, byte(len(subject)))
	buf = binary.LittleEndian.AppendUint16(buf, uint16(len(reason)))
	buf = append(buf, subject...)
	return append(buf, reason...)
}

func decodeSpilled(p []byte) (SpilledRecord, error) {
	if len(p) < spillFixedBytes {
		return SpilledRecord{}, fmt.Errorf("record of %d bytes is shorter than its header", len(p))
	}
	if p[0] != spillVersion {
		return SpilledRecord{}, fmt.Errorf("unknown record version %d", p[0])
	}
	le := binary.LittleEndian
	r := SpilledRecord{JournalSeq: le.Uint64(p[1:])}
	r.Rec.Tick = le.Uint64(p[9:])
	r.Rec.Kind = policy.EventKind(le.Uint16(p[17:]))
	r.Rec.Instance = le.Uint64(p[19:])
	r.Rec.Bytes = le.Uint64(p[27:])
	r.Rec.Limit = le.Uint64(p[35:])
	r.Rec.Decision = le.Uint64(p[43:])
	slen, rlen := int(p[51]), int(le.Uint16(p[52:]))
	rest := p[spillFixedBytes:]
	if slen > spillMaxSubject || rlen > spillMaxReason || len(rest) != slen+rlen {
		return SpilledRecord{}, fmt.Errorf("bad lengths subject=%d reason=%d for %d bytes", slen, rlen, len(rest))
	}
	if r.JournalSeq == 0 {
		return SpilledRecord{}, errors.New("journal seq 0")
	}
	r.Rec.Subject = string(rest[:slen])
	r.Rec.Reason = string(rest[slen:])
	r.Rec.WriterSeq = r.JournalSeq // the run that spilled it is gone; only the journal seq counts
	return r, nil
}
