package kernel

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/internal/testutil"
	"oomd.dev/oomd/services/execd-stub/cgroup"
)

// managers returns a cgroup manager for every mode this machine has.
func managers(t testing.TB) []*cgroup.Manager {
	var out []*cgroup.Manager
	for _, want := range []cgroup.Mode{cgroup.ModeV2, cgroup.ModeV1, cgroup.ModeProc} {
		m, err := cgroup.Detect(cgroup.Options{Want: want}, nil)
		if err != nil {
			continue
		}
		t.Cleanup(func() { m.Close() })
		out = append(out, m)
	}
	return out
}

func readerFor(t testing.TB, g *cgroup.Group) *Reader {
	t.Helper()
	u, err := g.OpenUsage()
	require.NoError(t, err)
	r, err := New(Mode(g.Mode()), u.Usage, u.Stat)
	require.NoError(t, err)
	t.Cleanup(r.Close)
	return r
}

func start(t *testing.T, g *cgroup.Group, script string) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", script)
	g.Prepare(cmd)
	require.NoError(t, cmd.Start())
	g.Started(cmd.Process.Pid)
	t.Cleanup(func() { g.Kill(); cmd.Wait(); g.Remove() })
}

// deadline bounds every wait; it is a failure bound, not a timing assertion.
const deadline = 15 * time.Second

// A subject that never heard of oomd, forking three allocating children, is counted
// whole: the kernel's count covers every descendant.
func TestReadCountsEveryDescendant(t *testing.T) {
	py := "python3 -c 'import time; b=bytearray(24<<20); time.sleep(300)'"
	for _, m := range managers(t) {
		t.Run(m.Mode().String(), func(t *testing.T) {
			g, err := m.Create("family", 1)
			require.NoError(t, err)
			start(t, g, fmt.Sprintf("%s & %s & %s & wait", py, py, py))
			r := readerFor(t, g)
			last := testutil.Eventually(t, deadline, func() (uint64, bool) {
				v, err := r.Read(math.MaxUint64)
				require.NoError(t, err)
				return v, v >= 72<<20
			}, "3 x 24 MiB counted")
			t.Logf("%s: %d MiB", m.Mode(), last>>20)
		})
	}
}

// The working set leaves out inactive page cache: a subject that only read a large file
// is not charged for the cache (cgroup modes; /proc RSS never counted it).
func TestWorkingSetExcludesInactiveFileCache(t *testing.T) {
	f := filepath.Join(t.TempDir(), "big")
	require.NoError(t, os.WriteFile(f, make([]byte, 64<<20), 0o600))
	for _, m := range managers(t) {
		if m.Mode() == cgroup.ModeProc {
			continue
		}
		t.Run(m.Mode().String(), func(t *testing.T) {
			g, err := m.Create("reader", 1)
			require.NoError(t, err)
			// Drop the file from the cache first, so reading it charges this cgroup.
			start(t, g, "dd if="+f+" iflag=direct of=/dev/null bs=1M 2>/dev/null; python3 -c \"import os; fd=os.open('"+f+"', os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)\"; cat "+f+" >/dev/null; sleep 300")
			r := readerFor(t, g)
			testutil.Eventually(t, deadline, func() (uint64, bool) { v, _ := r.Read(math.MaxUint64); return v, v >= 48<<20 },
				"the file's cache charged to the cgroup")
			usage, err := r.Read(math.MaxUint64) // below the threshold: usage as is
			require.NoError(t, err)
			ws, err := r.Read(0) // always subtract
			require.NoError(t, err)
			t.Logf("usage %d MiB, working set %d MiB", usage>>20, ws>>20)
			require.Less(t, ws, usage-32<<20, "inactive file cache was not subtracted")
		})
	}
}

func TestNewRefusesAWrongFd(t *testing.T) {
	d, err := os.Open(t.TempDir())
	require.NoError(t, err)
	_, err = New(ModeV1, d, nil)
	require.ErrorContains(t, err, "directory=true")
	_, err = New(ModeNone, nil, nil)
	require.Error(t, err)
}

func TestParseUint(t *testing.T) {
	for in, want := range map[string]uint64{"0\n": 0, " 42 ": 42, "18446744073709551615": math.MaxUint64} {
		v, ok := parseUint([]byte(in))
		require.True(t, ok, in)
		require.Equal(t, want, v)
	}
	for _, in := range []string{"", "-1", "18446744073709551616", "12a", strings.Repeat("9", 21)} {
		_, ok := parseUint([]byte(in))
		require.False(t, ok, in)
	}
}

// BenchmarkReadCgroups is oomd's per-tick cost of kernel truth: one usage read per
// subject (below the soft limit, so no memory.stat), over n live cgroups. ns/op is per
// subject; at 10 Hz, n subjects cost n * ns/op * 10 per second of CPU.
func BenchmarkReadCgroups(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		for _, m := range managers(b) {
			if m.Mode() == cgroup.ModeProc {
				continue
			}
			b.Run(fmt.Sprintf("%s/subjects=%d", m.Mode(), n), func(b *testing.B) {
				readers := make([]*Reader, n)
				for i := range readers {
					g, err := m.Create(fmt.Sprintf("bench%d", i), 1)
					require.NoError(b, err)
					b.Cleanup(func() { g.Remove() })
					// Usage only (memory.stat is read above the soft limit alone), so 10 000
					// subjects fit the fd limit here (20 000).
					u, err := g.OpenUsage()
					require.NoError(b, err)
					u.Stat.Close()
					r, err := New(Mode(g.Mode()), u.Usage, nil)
					require.NoError(b, err)
					b.Cleanup(r.Close)
					readers[i] = r
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; b.Loop(); i++ {
					if _, err := readers[i%n].Read(math.MaxUint64); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkReadProcTree is the proc-mode cost for one subject of one process.
func BenchmarkReadProcTree(b *testing.B) {
	m, err := cgroup.Detect(cgroup.Options{Want: cgroup.ModeProc}, nil)
	require.NoError(b, err)
	g, err := m.Create("tree", 1)
	require.NoError(b, err)
	cmd := exec.Command("/bin/sleep", "300")
	require.NoError(b, cmd.Start())
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	g.Started(cmd.Process.Pid)
	r := readerFor(b, g)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Read(0); err != nil {
			b.Fatal(err)
		}
	}
}
