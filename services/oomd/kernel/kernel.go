// Package kernel reads what the kernel counts for one subject, through the read-only fds
// execd handed over with the subject: oomd holds the right to read one number and no
// authority over the cgroup.
//
// # Which number is enforced
//
// The working set, as kubelet and cAdvisor define it: the cgroup's usage minus its
// inactive file cache (memory.current - inactive_file on v2; memory.usage_in_bytes -
// total_inactive_file on v1). Usage alone counts page cache the kernel can drop at
// once, so a subject that merely read a large file would look like a leak; the working
// set is what the subject keeps hot, and what the kernel cannot reclaim without
// swapping or killing. Reading memory.stat costs several times a usage read, so it is
// read only when usage is above the caller's threshold (the subject's soft limit): below
// it, the working set (<= usage) is below it too, and usage is reported as is. Over the
// threshold the reported number is the working set.
//
// In proc mode (no writable cgroup) the number is the sum of resident pages
// (/proc/PID/statm) of the first process and its descendants: weaker (a process that
// daemonised is not in the tree, shared pages are counted once per process, and page
// cache is not counted at all).
//
// A Reader does no allocation per Read in cgroup mode; it is not safe for concurrent use.
package kernel

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/rawsys"
)

// Mode is how the subject is contained, as execd's handoff says (oomdpb.CgroupMode).
type Mode = oomdpb.CgroupMode

const (
	ModeNone = oomdpb.CgroupMode_none
	ModeV2   = oomdpb.CgroupMode_v2
	ModeV1   = oomdpb.CgroupMode_v1
	ModeProc = oomdpb.CgroupMode_proc
)

// statBuf bounds one memory.stat read; v1's with every hierarchical total is ~1.5 KiB.
const statBuf = 8 << 10

// maxTree bounds the processes summed in proc mode.
const maxTree = 1024

// Reader reads one subject's count. Create it with New; Close releases its fds.
type Reader struct {
	mode  Mode
	usage *os.File // memory.current / memory.usage_in_bytes, or the /proc/PID directory
	stat  *os.File // memory.stat (cgroup modes)
	key   []byte   // the inactive file line's key in memory.stat
	buf   [64]byte
	sbuf  []byte
	page  uint64

	// The descriptors, taken once: os.File.Fd may make an fcntl call each time, and
	// every system call of a tick wakes the Go runtime's sysmon (internal/rawsys).
	usageFd, statFd int
}

// New takes over usage (and stat, which may be nil) for a subject contained in mode.
func New(mode Mode, usage, stat *os.File) (*Reader, error) {
	r := &Reader{mode: mode, usage: usage, stat: stat, page: uint64(os.Getpagesize())}
	switch mode {
	case ModeV2:
		r.key = []byte("inactive_file ")
	case ModeV1:
		r.key = []byte("total_inactive_file ")
	case ModeProc:
	default:
		r.Close()
		return nil, fmt.Errorf("kernel reading: cgroup mode %d is not readable", mode)
	}
	if usage == nil {
		r.Close()
		return nil, errors.New("kernel reading: no usage fd")
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(usage.Fd()), &st); err != nil {
		r.Close()
		return nil, fmt.Errorf("kernel reading: fstat: %w", err)
	}
	wantDir := mode == ModeProc
	if isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR; isDir != wantDir {
		r.Close()
		return nil, fmt.Errorf("kernel reading: the usage fd of mode %s is a directory=%t", mode, isDir)
	}
	r.usageFd = int(usage.Fd())
	if stat != nil {
		r.sbuf = make([]byte, statBuf)
		r.statFd = int(stat.Fd())
	}
	return r, nil
}

// Mode is the containment the reading comes from.
func (r *Reader) Mode() Mode { return r.mode }

// Close closes the fds.
func (r *Reader) Close() {
	if r.usage != nil {
		r.usage.Close()
	}
	if r.stat != nil {
		r.stat.Close()
	}
}

// Read returns the subject's working set in bytes (see the package doc). detailAbove is
// the usage above which memory.stat is read to subtract the inactive file cache.
func (r *Reader) Read(detailAbove uint64) (uint64, error) {
	if r.mode == ModeProc {
		return r.readTree()
	}
	n, err := rawsys.Pread(r.usageFd, r.buf[:], 0)
	if err != nil {
		return 0, fmt.Errorf("pread usage: %w", err)
	}
	usage, ok := parseUint(r.buf[:n])
	if !ok {
		return 0, fmt.Errorf("usage: not a number: %q", r.buf[:n])
	}
	if usage <= detailAbove || r.stat == nil {
		return usage, nil
	}
	inactive, err := r.inactiveFile()
	if err != nil {
		return usage, err
	}
	if inactive >= usage {
		return 0, nil
	}
	return usage - inactive, nil
}

func (r *Reader) inactiveFile() (uint64, error) {
	// A normal pread, not a raw one: memory.stat flushes the cgroup's statistics and can
	// sleep (reclaim) just when memory is tight, and it is read only above the soft limit.
	n, err := unix.Pread(r.statFd, r.sbuf, 0)
	if err != nil {
		return 0, fmt.Errorf("pread memory.stat: %w", err)
	}
	b := r.sbuf[:n]
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if bytes.HasPrefix(line, r.key) {
			v, ok := parseUint(line[len(r.key):])
			if !ok {
				return 0, fmt.Errorf("memory.stat: bad %q line", r.key)
			}
			return v, nil
		}
	}
	return 0, fmt.Errorf("memory.stat: no %q line", bytes.TrimSpace(r.key))
}

// parseUint reads a decimal number, ignoring surrounding white space.
func parseUint(b []byte) (uint64, bool) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}

// readTree sums resident pages of the first process and its descendants. The first
// process is read through the directory fd execd passed (it cannot be a recycled pid:
// once that process is gone, reads fail with ESRCH); descendants are found through
// task/*/children and read by pid (a race with pid reuse is possible: proc mode is the
// weaker one, and says so).
func (r *Reader) readTree() (uint64, error) {
	root := int(r.usage.Fd())
	total, err := statmAt(root, "statm", r.buf[:])
	if err != nil {
		return 0, fmt.Errorf("read statm: %w", err)
	}
	queue := childrenAt(root, "task", nil)
	for seen := 1; len(queue) > 0 && seen < maxTree; seen++ {
		pid := queue[0]
		queue = queue[1:]
		dir := "/proc/" + strconv.Itoa(pid)
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // gone since its parent listed it
		}
		if v, err := statmAt(fd, "statm", r.buf[:]); err == nil {
			total += v
		}
		queue = childrenAt(fd, "task", queue)
		unix.Close(fd)
	}
	return total * r.page, nil
}

// statmAt returns the resident pages (field 2) of statm under dirfd.
func statmAt(dirfd int, name string, buf []byte) (uint64, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return 0, err
	}
	f := bytes.Fields(buf[:n])
	if len(f) < 2 {
		return 0, errors.New("statm: short")
	}
	v, ok := parseUint(f[1])
	if !ok {
		return 0, errors.New("statm: bad resident field")
	}
	return v, nil
}

// childrenAt appends the children of every thread of the process at dirfd.
func childrenAt(dirfd int, task string, out []int) []int {
	tfd, err := unix.Openat(dirfd, task, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return out
	}
	d := os.NewFile(uintptr(tfd), task)
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return out
	}
	var buf [512]byte
	for _, tid := range names {
		fd, err := unix.Openat(tfd, tid+"/children", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		n, _ := unix.Read(fd, buf[:])
		unix.Close(fd)
		for f := range bytes.FieldsSeq(buf[:max(n, 0)]) {
			if pid, ok := parseUint(f); ok && pid > 0 && pid < 1<<22 {
				out = append(out, int(pid))
			}
		}
	}
	return out
}
