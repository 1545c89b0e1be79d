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
	"runtime"
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

// The ABI's sizes, checked at compile time.
var (
	_ [64 - unsafe.Sizeof(sqe{})]struct{}
	_ [unsafe.Sizeof(sqe{}) - 64]struct{}
	_ [16 - unsafe.Sizeof(cqe{})]struct{}
	_ [120 - unsafe.Sizeof(params{})]struct{}
	_ [unsafe.Sizeof(params{}) - 120]struct{}
)

// maxStuck bounds the enters in a row that fail softly (EINTR, EAGAIN, EBUSY) and
// complete nothing.
const maxStuck = 64

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
	if p.features&featSingleMmap == 0 || p.features&featNoDrop == 0 {
		return errors.New("uring: kernel too old (no single mmap or no-drop completions)")
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
	if p.cqEntries < p.sqEntries {
		return fmt.Errorf("uring: %d completion entries for %d submissions", p.cqEntries, p.sqEntries)
	}
	return nil
}

// Size is how many reads one call takes.
func (b *Batch) Size() int { return int(b.size) }

// Read issues every read in rs (at most Size) and returns once all have completed, with
// each one's N and Err set. The error is the io_uring_enter's own (then no R's result is
// meaningful; the ring is unusable and the caller should Close it and read otherwise).
// It allocates nothing.
func (b *Batch) Read(rs []Read) error {
	if len(rs) == 0 {
		return nil
	}
	if len(rs) > int(b.size) {
		return fmt.Errorf("uring: %d reads in a batch of %d", len(rs), b.size)
	}
	tail := atomic.LoadUint32(b.sqTail)
	for i := range rs {
		r := &rs[i]
		r.N, r.Err = 0, nil
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
		_, _, e := unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(b.fd), uintptr(toSubmit), uintptr(want-done), enterGetEvents, 0, 0)
		switch e {
		case 0, unix.EINTR, unix.EAGAIN, unix.EBUSY:
		default:
			return fmt.Errorf("uring: io_uring_enter: %w", e)
		}
		got := b.reap(rs)
		if done += got; got == 0 && e != 0 {
			if stuck++; stuck == maxStuck {
				return fmt.Errorf("uring: io_uring_enter: %w, %d times without a completion", e, maxStuck)
			}
		}
	}
	// The kernel wrote the buffers through addresses the collector cannot see: rs (and
	// through it every Buf) stays reachable until every read has completed.
	runtime.KeepAlive(rs)
	return nil
}

// reap takes the completions posted so far.
func (b *Batch) reap(rs []Read) uint32 {
	head := atomic.LoadUint32(b.cqHead)
	tail := atomic.LoadUint32(b.cqTail) // acquire: the CQEs up to tail are written
	var n uint32
	for ; head != tail; head++ {
		c := (*cqe)(unsafe.Add(b.cqes, uintptr(head&b.cqMask)*unsafe.Sizeof(cqe{})))
		if c.userData < uint64(len(rs)) {
			r := &rs[c.userData]
			if c.res < 0 {
				r.Err = unix.Errno(-c.res)
			} else {
				r.N = int(c.res)
			}
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
