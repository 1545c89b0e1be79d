package page

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Errors returned by Writer.Publish and Writer.Close.
var (
	// ErrClosed: the writer was closed; nothing was published.
	ErrClosed = errors.New("memstat page: writer closed")
	// ErrBusy: another writer of the same page (another process holding the fd) kept
	// the sequence odd for MaxAcquireWait; nothing was published. A writer that died
	// mid-write leaves the page busy for good (oomd sees it as torn).
	ErrBusy = errors.New("memstat page: another writer holds the page")
)

// MaxAcquireWait bounds how long a publisher waits for another process's write cycle to
// end. A cycle is three stores, so only a writer pre-empted mid-cycle (for longer than a
// scheduler time slice) or dead exhausts it. The first acquireSpins attempts are
// back-to-back; later ones yield and look at the (vDSO, syscall-free) clock.
const (
	MaxAcquireWait = 10 * time.Millisecond
	acquireSpins   = 16
)

// Writer publishes to a page (the subject's side).
//
// Concurrency: Publish and Close may be called from any number of goroutines. Within a
// process the writers are serialised by a mutex, which also keeps Close from unmapping
// the page under a Publish. Across processes (several processes holding the same fd)
// each write cycle starts with a compare-and-swap of the sequence from even to odd, so
// two processes never interleave their stores; the loser retries for at most
// MaxAcquireWait and then gives up with ErrBusy rather than spin without end.
type Writer struct {
	mu  sync.Mutex
	mem []byte // nil after Close
	h   *header
}

// NewWriter maps the page f read-write. The page must be one Create made (size and
// magic are checked). f may be closed afterwards: the mapping stays.
func NewWriter(f *os.File) (*Writer, error) {
	mem, err := mapPage(f, unix.PROT_READ|unix.PROT_WRITE)
	if err != nil {
		return nil, err
	}
	h := headerOf(mem)
	if mv := atomic.LoadUint64(&h.magicVersion); mv != magicVersion {
		unix.Munmap(mem)
		return nil, fmt.Errorf("%w: magic/version %#016x, want %#016x", ErrInvalidPage, mv, magicVersion)
	}
	return &Writer{mem: mem, h: h}, nil
}

// Publish makes bytes the page's value and raises the sample counter, in one seqlock
// cycle. It does not allocate or make a syscall. It fails only after Close (ErrClosed)
// or when another process keeps the page busy (ErrBusy).
func (w *Writer) Publish(bytes uint64) error {
	return w.publish(func(uint64) uint64 { return bytes })
}

// publish runs one write cycle whose value is computed from the new counter (tests use
// it to publish values that can be checked against their counter).
func (w *Writer) publish(value func(counter uint64) uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mem == nil {
		return ErrClosed
	}
	seq, ok := w.acquire()
	if !ok {
		return ErrBusy
	}
	c := atomic.LoadUint64(&w.h.counter) + 1
	atomic.StoreUint64(&w.h.bytes, value(c))
	atomic.StoreUint64(&w.h.counter, c)
	atomic.StoreUint64(&w.h.seq, seq+1)
	return nil
}

// acquire moves the sequence from even to odd and returns the odd value.
func (w *Writer) acquire() (uint64, bool) {
	var give time.Time
	for i := 0; ; i++ {
		s := atomic.LoadUint64(&w.h.seq)
		if s&1 == 0 && atomic.CompareAndSwapUint64(&w.h.seq, s, s+1) {
			return s + 1, true
		}
		switch {
		case i < acquireSpins:
		case give.IsZero():
			give = time.Now().Add(MaxAcquireWait)
		case time.Now().After(give):
			return 0, false
		default:
			runtime.Gosched()
		}
	}
}

// Close marks the page closed (FlagClosed, in a write cycle: the last value stays
// readable) and unmaps it. Later calls to Publish return ErrClosed. The flag is not
// set if another process keeps the page busy (the error says so); the page is unmapped
// in every case.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mem == nil {
		return ErrClosed
	}
	var err error
	if seq, ok := w.acquire(); ok {
		atomic.StoreUint64(&w.h.flags, atomic.LoadUint64(&w.h.flags)|FlagClosed)
		atomic.StoreUint64(&w.h.seq, seq+1)
	} else {
		err = fmt.Errorf("set the closed flag: %w", ErrBusy)
	}
	if uerr := unix.Munmap(w.mem); uerr != nil && err == nil {
		err = fmt.Errorf("memstat page: munmap: %w", uerr)
	}
	w.mem, w.h = nil, nil
	return err
}
