package uring

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/internal/rawsys"
)

func newBatch(t *testing.T, size int) *Batch {
	t.Helper()
	b, err := New(size)
	if err != nil {
		// Not a skip: this machine and CI have io_uring, and the fallback has tests of
		// its own (services/oomd/kernel).
		t.Fatalf("io_uring not available here: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

// openFiles makes n files holding distinct contents and opens them.
func openFiles(t *testing.T, n int) []int {
	t.Helper()
	dir := t.TempDir()
	var fds []int
	for i := range n {
		p := filepath.Join(dir, fmt.Sprint(i))
		require.NoError(t, os.WriteFile(p, fmt.Appendf(nil, "file %d holds %d\n", i, i*i), 0o600))
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		require.NoError(t, err)
		t.Cleanup(func() { unix.Close(fd) })
		fds = append(fds, fd)
	}
	return fds
}

// A batch reads what a pread of each file reads, each into its own buffer, from offset
// 0 every time, over many rounds (the rings wrap around many times).
func TestABatchReadsWhatPreadReads(t *testing.T) {
	fds := openFiles(t, 5)
	fds = append(fds, fds[2]) // one file twice in a batch
	b := newBatch(t, 8)
	rs := make([]Read, len(fds))
	for i, fd := range fds {
		rs[i] = Read{Fd: fd, Buf: make([]byte, 64)}
	}
	for round := range 100 {
		require.NoError(t, b.Read(rs[:1+round%len(rs)]))
		for i, r := range rs[:1+round%len(rs)] {
			want := make([]byte, 64)
			n, err := rawsys.Pread(r.Fd, want, 0)
			require.NoError(t, err)
			require.NoError(t, r.Err, "round %d read %d", round, i)
			require.Equal(t, string(want[:n]), string(r.Buf[:r.N]), "round %d read %d", round, i)
		}
	}
}

// Kernel-generated files, the batch's purpose: a cgroup-like counter in /proc and a
// /proc/self file read in one batch agree with pread's view of their format.
func TestABatchReadsProcFiles(t *testing.T) {
	b := newBatch(t, 4)
	var rs []Read
	for _, name := range []string{"/proc/meminfo", "/proc/self/statm", "/proc/loadavg"} {
		fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		require.NoError(t, err)
		t.Cleanup(func() { unix.Close(fd) })
		rs = append(rs, Read{Fd: fd, Buf: make([]byte, 4096)})
	}
	require.NoError(t, b.Read(rs))
	for _, r := range rs {
		require.NoError(t, r.Err)
		assert.Positive(t, r.N)
	}
	assert.Contains(t, string(rs[0].Buf[:rs[0].N]), "MemAvailable:")
}

// A read that fails fails alone, with its own errno; the others in the batch are read.
func TestAFailedReadFailsAlone(t *testing.T) {
	fds := openFiles(t, 2)
	dir, err := unix.Open(t.TempDir(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(dir)
	b := newBatch(t, 4)
	rs := []Read{
		{Fd: fds[0], Buf: make([]byte, 64)},
		{Fd: 1 << 20, Buf: make([]byte, 64)}, // no such fd
		{Fd: dir, Buf: make([]byte, 64)},     // a directory
		{Fd: fds[1], Buf: make([]byte, 64)},
	}
	require.NoError(t, b.Read(rs))
	assert.Equal(t, "file 0 holds 0\n", string(rs[0].Buf[:rs[0].N]))
	assert.ErrorIs(t, rs[1].Err, unix.EBADF)
	assert.ErrorIs(t, rs[2].Err, unix.EISDIR)
	assert.Equal(t, "file 1 holds 1\n", string(rs[3].Buf[:rs[3].N]))
	// And the next call starts clean.
	require.NoError(t, b.Read(rs[:1]))
	assert.NoError(t, rs[0].Err)
}

// A read that cannot complete inline (an empty pipe: io_uring waits for data) is waited
// for: Read returns only with it done, having made few enters, not one per poll. This is
// the path a read handed to the kernel's workers would take.
func TestReadWaitsForAReadThatCompletesLater(t *testing.T) {
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	files := openFiles(t, 1)
	b := newBatch(t, 2)
	rs := []Read{{Fd: files[0], Buf: make([]byte, 64)}, {Fd: p[0], Buf: make([]byte, 64)}}
	wrote := make(chan error, 1)
	go func() {
		// The write waits until the kernel holds the pipe read armed, waiting for data
		// (the ring's fdinfo lists it under PollList), so the waiting path is the one
		// taken; a deadline bounds the wait.
		info := fmt.Sprintf("/proc/self/fdinfo/%d", b.fd)
		for end := time.Now().Add(10 * time.Second); ; runtime.Gosched() {
			st, err := os.ReadFile(info)
			if err != nil || time.Now().After(end) {
				wrote <- fmt.Errorf("the pipe read never waited in the ring (%v): %s", err, st)
				unix.Write(p[1], []byte("later")) // unblock Read all the same
				return
			}
			if _, polls, ok := strings.Cut(string(st), "PollList:\n"); ok && strings.HasPrefix(polls, "  op=22") {
				break
			}
		}
		_, err := unix.Write(p[1], []byte("later"))
		wrote <- err
	}()
	require.NoError(t, b.Read(rs))
	require.NoError(t, <-wrote)
	require.NoError(t, rs[0].Err)
	require.NoError(t, rs[1].Err)
	assert.Equal(t, "later", string(rs[1].Buf[:rs[1].N]))
	assert.LessOrEqual(t, b.Enters, uint64(3), "the enters wait (GETEVENTS), they do not spin")
}

func TestBatchBounds(t *testing.T) {
	_, err := New(0)
	assert.ErrorContains(t, err, "out of 1..4096")
	b := newBatch(t, 2)
	fds := openFiles(t, 1)
	rs := make([]Read, b.Size()+1)
	for i := range rs {
		rs[i] = Read{Fd: fds[0], Buf: make([]byte, 8)}
	}
	assert.ErrorContains(t, b.Read(rs), "reads in a batch of")
	require.NoError(t, b.Read(nil), "an empty batch makes no call")
	b.Close()
	b.Close() // twice is harmless
}

// A tick's batch costs no allocation.
func TestReadAllocatesNothing(t *testing.T) {
	fds := openFiles(t, 3)
	b := newBatch(t, 4)
	rs := make([]Read, len(fds))
	for i, fd := range fds {
		rs[i] = Read{Fd: fd, Buf: make([]byte, 64)}
	}
	allocs := testing.AllocsPerRun(100, func() {
		if err := b.Read(rs); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs)
}

// One system call for the batch, against one per file: the reason the package exists.
// Go benchmarks, side by side (docs/perf.md has the figures).
func BenchmarkRead(b *testing.B) {
	for _, n := range []int{1, 3, 100} {
		dir := b.TempDir()
		var fds []int
		for i := range n {
			p := filepath.Join(dir, fmt.Sprint(i))
			require.NoError(b, os.WriteFile(p, []byte("12345678\n"), 0o600))
			fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			require.NoError(b, err)
			b.Cleanup(func() { unix.Close(fd) })
			fds = append(fds, fd)
		}
		rs := make([]Read, n)
		for i, fd := range fds {
			rs[i] = Read{Fd: fd, Buf: make([]byte, 64)}
		}
		b.Run(fmt.Sprintf("files=%d/pread", n), func(b *testing.B) {
			for b.Loop() {
				for _, r := range rs {
					if _, err := rawsys.Pread(r.Fd, r.Buf, 0); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		b.Run(fmt.Sprintf("files=%d/uring", n), func(b *testing.B) {
			ring, err := New(n)
			require.NoError(b, err)
			defer ring.Close()
			for b.Loop() {
				if err := ring.Read(rs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
