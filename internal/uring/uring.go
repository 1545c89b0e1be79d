// Package uring reads a batch of kernel-generated files in one system call: an io_uring
// with one read per file, submitted and waited for by a single io_uring_enter.
//
// It exists for the owner loop's per-tick readings (each subject's cgroup counter). A
// pread each costs a system call each, and on an idle oomd a tick is little else: with
// three subjects, three of its six system calls (docs/perf.md, "Idle cost beside
// earlyoom"). A Batch makes that one, whatever the number of subjects.
//
// The reads complete inside the io_uring_enter: cgroup and /proc files are pollable, so
// io_uring issues them at once, without a worker thread (io_file_supports_nowait), and
// they never block. If a kernel did hand one to a worker, the enter waits for it all the
// same (min_complete is the batch), so a Read always returns with every read done.
//
// Like internal/rawsys, the enter is a raw system call: it does not enter the Go
// scheduler's syscall state, which would wake the runtime's sysmon thread on an idle
// process. Nothing that can block for long belongs in a Batch.
//
// A Batch is not safe for concurrent use. New fails where io_uring is not available (an
// old kernel, kernel.io_uring_disabled, a seccomp filter such as Docker's default one);
// the caller then reads with pread, as before.
package uring

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel's ABI (include/uapi/linux/io_uring.h).
const (
	opRead = 22 // IORING_OP_READ (5.6)

	enterGetEvents = 1 << 0 // IORING_ENTER_GETEVENTS

	featSingleMmap = 1 << 0 // IORING_FEAT_SINGLE_MMAP (5.4)
	featNoDrop     = 1 << 1 // IORING_FEAT_NODROP (5.5): a full CQ never loses a completion
	featRWCurPos   = 1 << 3 // IORING_FEAT_RW_CUR_POS (5.6, with IORING_OP_READ itself)

	offSQRing = 0          // IORING_OFF_SQ_RING
	offSQEs   = 0x10000000 // IORING_OFF_SQES
)

type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqringOffsets
	cqOff                                                                  cqringOffsets
}

type sqe struct {
	opcode   uint8
	flags    uint8
	ioprio   uint16
	fd       int32
	off      uint64
	addr     uint64
	len      uint32
	rwFlags  uint32
	userData uint64
	_        [3]uint64
}

type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// The ABI's sizes and the offsets this package writes or reads, checked at compile time.
var (
	_ [64 - unsafe.Sizeof(sqe{})]struct{}
	_ [unsafe.Sizeof(sqe{}) - 64]struct{}
	_ [16 - unsafe.Sizeof(cqe{})]struct{}
	_ [120 - unsafe.Sizeof(params{})]struct{}
	_ [unsafe.Sizeof(params{}) - 120]struct{}
	_ [unsafe.Offsetof(sqe{}.fd) - 4]struct{}
	_ [unsafe.Offsetof(sqe{}.addr) - 16]struct{}
	_ [unsafe.Offsetof(sqe{}.len) - 24]struct{}
	_ [unsafe.Offsetof(sqe{}.userData) - 32]struct{}
	_ [unsafe.Offsetof(cqe{}.res) - 8]struct{}
	_ [unsafe.Offsetof(params{}.sqOff) - 40]struct{}
	_ [unsafe.Offsetof(params{}.cqOff) - 80]struct{}
)

// maxStuck bounds the enters in a row that fail (other than by a signal) and complete
// nothing.
const maxStuck = 64

// errPending marks a read submitted and not completed yet.
var errPending = errors.New("uring: read not completed")

// Read is one read of a Batch: Fd at offset 0 into Buf. After Batch.Read, N is the bytes
// read and Err the read's error.
type Read struct {
	Fd  int
	Buf []byte
	N   int
	Err error
}

// Batch is an io_uring sized for up to Size reads at a time.
type Batch struct {
	fd      int
	size    uint32
	ring    []byte // SQ and CQ rings, one mapping (IORING_FEAT_SINGLE_MMAP)
	sqeMem  []byte
	sqHead  *uint32
	sqTail  *uint32
	sqMask  uint32
	sqArray unsafe.Pointer
	cqHead  *uint32
	cqTail  *uint32
	cqMask  uint32
	cqes    unsafe.Pointer
	sqes    unsafe.Pointer

	// inflight holds the reads of the current call: their buffers' addresses are in the
	// kernel's hands as plain integers, so they must be heap memory (storing the slice
	// here makes it escape) and stay reachable until every read completed. A call that
	// gave up with reads still submitted leaves them here for good (stranded), so the
	// kernel can never write into memory reused for something else.
	inflight []Read
	stranded [][]Read
	// Enters counts io_uring_enter calls, for tests and metrics.
	Enters uint64
}

// New sets up a ring for size reads at a time.
func New(size int) (*Batch, error) {
	if size < 1 || size > 4096 {
		return nil, fmt.Errorf("uring: batch size %d out of 1..4096", size)
	}
	var p params
	fd, _, e := unix.RawSyscall(unix.SYS_IO_URING_SETUP, uintptr(size), uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, fmt.Errorf("uring: io_uring_setup: %w", e)
	}
	b := &Batch{fd: int(fd)}
	if err := b.mapRings(&p); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

func (b *Batch) mapRings(p *params) error {
	if p.features&featSingleMmap == 0 || p.features&featNoDrop == 0 || p.features&featRWCurPos == 0 {
		return errors.New("uring: kernel too old (io_uring before Linux 5.6 has no IORING_OP_READ)")
	}
	sqSize := uintptr(p.sqOff.array) + uintptr(p.sqEntries)*4
	cqSize := uintptr(p.cqOff.cqes) + uintptr(p.cqEntries)*unsafe.Sizeof(cqe{})
	ringSize := max(sqSize, cqSize)
	ring, err := unix.Mmap(b.fd, offSQRing, int(ringSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("uring: mmap rings: %w", err)
	}
	b.ring = ring
	sqes, err := unix.Mmap(b.fd, offSQEs, int(uintptr(p.sqEntries)*unsafe.Sizeof(sqe{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("uring: mmap SQEs: %w", err)
	}
	b.sqeMem = sqes
	base := unsafe.Pointer(&ring[0])
	at := func(off uint32) *uint32 { return (*uint32)(unsafe.Add(base, off)) }
	b.size = p.sqEntries
	b.sqHead, b.sqTail, b.sqMask = at(p.sqOff.head), at(p.sqOff.tail), *at(p.sqOff.ringMask)
	b.sqArray = unsafe.Add(base, p.sqOff.array)
	b.cqHead, b.cqTail, b.cqMask = at(p.cqOff.head), at(p.cqOff.tail), *at(p.cqOff.ringMask)
	b.cqes = unsafe.Add(base, p.cqOff.cqes)
	b.sqes = unsafe.Pointer(&sqes[0])
	return nil
}

// Size is how many reads one call takes.
func (b *Batch) Size() int { return int(b.size) }

// Read issues every read in rs (at most Size) and returns once all have completed, with
// each one's N and Err set. Each Buf must be heap memory the caller does not touch during
// the call. The error is the io_uring_enter's own: then no R's result is meaningful, the
// ring is unusable (Close it and read otherwise), and if the kernel still held reads of
// rs their buffers stay referenced by the Batch for good. It allocates nothing.
func (b *Batch) Read(rs []Read) error {
	if len(rs) == 0 {
		return nil
	}
	if len(rs) > int(b.size) {
		return fmt.Errorf("uring: %d reads in a batch of %d", len(rs), b.size)
	}
	b.inflight = rs
	head := atomic.LoadUint32(b.sqHead)
	tail := atomic.LoadUint32(b.sqTail)
	for i := range rs {
		r := &rs[i]
		r.N, r.Err = 0, errPending
		idx := tail & b.sqMask
		s := (*sqe)(unsafe.Add(b.sqes, uintptr(idx)*unsafe.Sizeof(sqe{})))
		*s = sqe{opcode: opRead, fd: int32(r.Fd), len: uint32(len(r.Buf)), userData: uint64(i)}
		if len(r.Buf) > 0 {
			s.addr = uint64(uintptr(unsafe.Pointer(&r.Buf[0])))
		}
		*(*uint32)(unsafe.Add(b.sqArray, uintptr(idx)*4)) = idx
		tail++
	}
	atomic.StoreUint32(b.sqTail, tail) // the SQEs are visible before the tail (release)
	want, done := uint32(len(rs)), uint32(0)
	for stuck := 0; done < want; {
		// What the kernel has not consumed yet (all of it the first time; after an
		// interrupted or short enter, the rest) is submitted, then the batch waited for.
		toSubmit := tail - atomic.LoadUint32(b.sqHead)
		b.Enters++
		_, _, e := unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(b.fd), uintptr(toSubmit), uintptr(want-done), enterGetEvents, 0, 0)
		got := b.reap(rs)
		done += got
		switch {
		case e == 0 || e == unix.EINTR || got > 0:
			// Progress, or a signal (retried, as rawsys.Pread retries it).
			stuck = 0
			continue
		}
		if stuck++; stuck < maxStuck {
			continue
		}
		if submitted := atomic.LoadUint32(b.sqHead) - head; submitted > done {
			b.stranded = append(b.stranded, rs)
		}
		b.inflight = nil
		return fmt.Errorf("uring: io_uring_enter: %w, %d times in a row without a completion", e, maxStuck)
	}
	b.inflight = nil
	return nil
}

// reap takes the completions posted so far and returns how many were of rs's pending
// reads (a completion of anything else, were the kernel ever to post one, is dropped).
func (b *Batch) reap(rs []Read) uint32 {
	head := atomic.LoadUint32(b.cqHead)
	tail := atomic.LoadUint32(b.cqTail) // acquire: the CQEs up to tail are written
	var n uint32
	for ; head != tail; head++ {
		c := (*cqe)(unsafe.Add(b.cqes, uintptr(head&b.cqMask)*unsafe.Sizeof(cqe{})))
		if c.userData >= uint64(len(rs)) || rs[c.userData].Err != errPending {
			continue
		}
		r := &rs[c.userData]
		if c.res < 0 {
			r.Err = unix.Errno(-c.res)
		} else {
			r.N, r.Err = int(c.res), nil
		}
		n++
	}
	atomic.StoreUint32(b.cqHead, head)
	return n
}

// Close releases the ring.
func (b *Batch) Close() {
	if b.sqeMem != nil {
		_ = unix.Munmap(b.sqeMem)
		b.sqeMem = nil
	}
	if b.ring != nil {
		_ = unix.Munmap(b.ring)
		b.ring = nil
	}
	if b.fd >= 0 {
		_ = unix.Close(b.fd)
		b.fd = -1
	}
}
