// Package rawsys makes the system calls of oomd's per-tick readings without telling the
// Go scheduler.
//
// A normal system call (syscall.Syscall, and so os.File and unix.Pread) enters the
// scheduler's syscall state, and the first one after the process went idle wakes the
// runtime's sysmon thread, which then polls every 20 µs until the process is idle
// again: on an idle oomd that was most of its wake-ups (docs/perf.md, "Idle cost beside
// earlyoom"). The readings here are of kernel-generated files (cgroup counters,
// /proc/meminfo, PSI) and of the owner loop's timerfds and doorbell (internal/loopwait):
// they never block, so there is nothing for the scheduler to hand off, and a raw call is
// the honest one. Nothing that can block (a disk write, a socket) belongs here.
package rawsys

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Pread is pread(2) at off into buf, retried on EINTR, as a raw system call. fd must not
// block (a kernel-generated file).
func Pread(fd int, buf []byte, off int64) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_PREAD64, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), uintptr(off), 0, 0)
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		}
		return 0, e
	}
}

// Read is read(2) into buf as a raw system call, once (EAGAIN is the caller's).
func Read(fd int, buf []byte) (int, error) {
	if len(buf) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
