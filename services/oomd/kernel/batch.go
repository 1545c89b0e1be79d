package kernel

import (
	"errors"

	"oomd.dev/oomd/internal/rawsys"
	"oomd.dev/oomd/internal/uring"
)

// batchSize is how many usage counters one io_uring_enter reads; a tick with more
// subjects makes one enter per batchSize of them.
const batchSize = 256

// Batch takes many subjects' readings with one system call per batchSize subjects: the
// usage counters are read together through an io_uring (internal/uring), and what each
// reading needs beyond that (memory.stat above the soft limit, proc mode's tree) is read
// one by one, as Reader.Read does. Where io_uring is not available it reads a pread per
// subject, with the same results.
//
// A Batch is not safe for concurrent use; Close releases the ring.
type Batch struct {
	ring  *uring.Batch
	why   error        // why there is no ring (nil while there is one)
	reads []uring.Read // the cgroup-mode items' usage reads, in item order
	// The system calls of closed rings, and the usage preads.
	enters, preads uint64
}

// Calls is what the batch's reads cost in system calls so far, for tests and metrics:
// io_uring_enter calls and usage preads.
func (b *Batch) Calls() (enters, preads uint64) {
	enters = b.enters
	if b.ring != nil {
		enters += b.ring.Enters
	}
	return enters, b.preads
}

// NewBatch makes a Batch, with a ring unless noRing; Fallback says whether (and why) it
// reads with pread.
func NewBatch(noRing bool) *Batch {
	if noRing {
		return &Batch{why: errNoRing}
	}
	ring, err := uring.New(batchSize)
	return &Batch{ring: ring, why: err}
}

var errNoRing = errors.New("io_uring turned off")

// Fallback is why the batch reads a pread per subject (nil: it reads through io_uring).
func (b *Batch) Fallback() error { return b.why }

// Item is one subject's reading in a Batch: the Reader and the usage above which its
// memory.stat is read (Reader.Read's detailAbove); Bytes and Err are the result.
type Item struct {
	Reader      *Reader
	DetailAbove uint64
	Bytes       uint64
	Err         error
}

// Read takes every item's reading. A failure of the ring itself (not of one read) closes
// it, and this and every later call read with pread; the returned error says so once.
func (b *Batch) Read(items []Item) error {
	var ringErr error
	for start := 0; start < len(items); start += batchSize {
		chunk := items[start:min(start+batchSize, len(items))]
		if err := b.readChunk(chunk); err != nil && ringErr == nil {
			ringErr = err
		}
	}
	return ringErr
}

func (b *Batch) readChunk(items []Item) error {
	b.reads = b.reads[:0]
	for i := range items {
		r := items[i].Reader
		if r.mode == ModeProc {
			items[i].Bytes, items[i].Err = r.Read(items[i].DetailAbove)
			continue
		}
		b.reads = append(b.reads, uring.Read{Fd: r.usageFd, Buf: r.buf[:]})
	}
	var ringErr error
	if b.ring != nil && len(b.reads) > 0 {
		if err := b.ring.Read(b.reads); err != nil {
			b.closeRing()
			b.why, ringErr = err, err
		}
	}
	if b.ring == nil {
		for k := range b.reads {
			b.preads++
			b.reads[k].N, b.reads[k].Err = rawsys.Pread(b.reads[k].Fd, b.reads[k].Buf, 0)
		}
	}
	k := 0
	for i := range items {
		r := items[i].Reader
		if r.mode == ModeProc {
			continue
		}
		items[i].Bytes, items[i].Err = r.finish(b.reads[k].N, b.reads[k].Err, items[i].DetailAbove)
		k++
	}
	clear(b.reads) // drop the buffers' references until the next call
	return ringErr
}

// Close releases the ring.
func (b *Batch) Close() { b.closeRing() }

func (b *Batch) closeRing() {
	if b.ring != nil {
		b.enters += b.ring.Enters
		b.ring.Close()
		b.ring = nil
	}
}
