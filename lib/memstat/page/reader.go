package page

import (
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// MaxReadRetries bounds the attempts of one Read at a consistent snapshot. A write
// cycle is three stores, so an honest writer rarely costs more than one retry; a writer
// pre-empted or stopped mid-cycle costs exactly this many, and the sample is skipped.
const MaxReadRetries = 4

// Status says what one Read found.
type Status uint8

const (
	// OK: a sample that differs (in sequence or counter) from the last OK one.
	OK Status = iota
	// Unchanged: the same sample as the last OK one.
	Unchanged
	// NeverWritten: nothing was published yet (sequence or counter 0).
	NeverWritten
	// Torn: no consistent snapshot within MaxReadRetries (a write in progress, or a
	// writer that stopped mid-cycle or keeps scribbling). Skip this tick.
	Torn
	// BadMagic: the magic is not Magic; the subject wrote over the header.
	BadMagic
	// BadVersion: the magic is right but the layout version is not Version.
	BadVersion
	// Closed: the publisher set FlagClosed; the sample is its last value.
	Closed
)

var statusNames = [...]string{"ok", "unchanged", "never-written", "torn", "bad-magic", "bad-version", "closed"}

func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// Sample is one consistent snapshot of a page.
type Sample struct {
	Bytes   uint64 // the published value
	Counter uint64 // the publisher's sample counter
	Seq     uint64 // the (even) sequence the snapshot was taken at
}

// Reader reads one page (oomd's side). It is not safe for concurrent use: oomd reads
// all pages from its one tick loop.
type Reader struct {
	mem  []byte // nil after Close
	h    *header
	last Sample // the last OK sample
}

// NewReader verifies the page f (Verify) and maps it read-only. f may be closed
// afterwards: the mapping stays valid for as long as the Reader is open, whatever the
// subject does with its own fd or mapping, because the size is sealed.
func NewReader(f *os.File) (*Reader, error) {
	if err := Verify(f); err != nil {
		return nil, err
	}
	mem, err := mapPage(f, unix.PROT_READ)
	if err != nil {
		return nil, err
	}
	return &Reader{mem: mem, h: headerOf(mem)}, nil
}

// Read takes a snapshot of the page with at most MaxReadRetries attempts. It makes no
// syscall, does not allocate, and never waits.
//
// With OK the sample is new and becomes the reference for Unchanged. With Unchanged,
// and with every other status, the sample returned is the last OK one (zero if there
// was none), except Closed, which returns the consistent snapshot it found. The caller
// decides whether to keep using a stale value.
func (r *Reader) Read() (Sample, Status) {
	if r.h == nil {
		return r.last, Closed
	}
	h := r.h
	for i := 0; i < MaxReadRetries; i++ {
		switch mv := atomic.LoadUint64(&h.magicVersion); {
		case uint32(mv) != Magic:
			return r.last, BadMagic
		case uint32(mv>>32) != Version:
			return r.last, BadVersion
		}
		s1 := atomic.LoadUint64(&h.seq)
		if s1&1 != 0 {
			continue
		}
		s := Sample{
			Bytes:   atomic.LoadUint64(&h.bytes),
			Counter: atomic.LoadUint64(&h.counter),
			Seq:     s1,
		}
		flags := atomic.LoadUint64(&h.flags)
		if atomic.LoadUint64(&h.seq) != s1 {
			continue
		}
		switch {
		case flags&FlagClosed != 0:
			return s, Closed
		case s1 == 0 || s.Counter == 0:
			return r.last, NeverWritten
		case s == r.last:
			return s, Unchanged
		}
		r.last = s
		return s, OK
	}
	return r.last, Torn
}

// Last is the last OK sample (zero if none).
func (r *Reader) Last() Sample { return r.last }

// Close unmaps the page. A Read after Close returns the last OK sample and Closed.
func (r *Reader) Close() error {
	if r.mem == nil {
		return nil
	}
	err := unix.Munmap(r.mem)
	r.mem, r.h = nil, nil
	if err != nil {
		return fmt.Errorf("memstat page: munmap: %w", err)
	}
	return nil
}
