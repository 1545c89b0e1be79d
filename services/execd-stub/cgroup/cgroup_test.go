package cgroup

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"oomd.dev/oomd/internal/testutil"
)

// modes returns every mode this machine supports, so each test runs on all of them.
func modes(t *testing.T) []*Manager {
	t.Helper()
	var out []*Manager
	for _, want := range []Mode{ModeV2, ModeV1, ModeProc} {
		m, err := Detect(Options{Want: want}, nil)
		if err != nil {
			t.Logf("mode %s not available here: %v", want, err)
			continue
		}
		t.Cleanup(func() { m.Close() })
		out = append(out, m)
	}
	require.NotEmpty(t, out)
	return out
}

// startFamily starts sh with n background children that each touch some memory and
// sleep, and waits until all n+1 are in the group.
func startFamily(t *testing.T, g *Group, n int) *exec.Cmd {
	t.Helper()
	script := strings.Repeat("sleep 300 & ", n) + "wait"
	cmd := exec.Command("/bin/sh", "-c", script)
	g.Prepare(cmd)
	require.NoError(t, cmd.Start())
	g.Started(cmd.Process.Pid)
	t.Cleanup(func() {
		g.Kill()
		cmd.Wait()
	})
	testutil.Eventually(t, deadline, procs(g, func(k int) bool { return k == n+1 }), "all %d processes in the group", n+1)
	return cmd
}

// deadline bounds every wait; it is a failure bound, not a timing assertion.
const deadline = 10 * time.Second

// procs observes the group's processes, for testutil.Eventually.
func procs(g *Group, done func(n int) bool) func() ([]int, bool) {
	return func() ([]int, bool) {
		p, _ := g.Procs()
		return p, done(len(p))
	}
}

func TestDetectAutoPicksAMode(t *testing.T) {
	m, err := Detect(Options{}, nil)
	require.NoError(t, err)
	defer m.Close()
	t.Logf("auto mode here: %s (%s)", m.Mode(), m.Base())
	if m.Mode() != ModeProc {
		fi, err := os.Stat(m.Base())
		require.NoError(t, err)
		require.True(t, fi.IsDir())
		require.Contains(t, m.Base(), "oomd-execd."+strconv.Itoa(os.Getpid()))
	}
}

func TestForcedUnavailableModeIsAnError(t *testing.T) {
	_, err := Detect(Options{Want: ModeV2, Root: t.TempDir()}, nil)
	require.Error(t, err)
	require.Contains(t, err.Error(), "cgroup v2")
}

func TestEveryDescendantIsInTheGroupAndSignalReachesAll(t *testing.T) {
	for _, m := range modes(t) {
		t.Run(m.Mode().String(), func(t *testing.T) {
			g, err := m.Create("fam", 1)
			require.NoError(t, err)
			cmd := startFamily(t, g, 3)
			pids, err := g.Procs()
			require.NoError(t, err)
			require.Contains(t, pids, cmd.Process.Pid)

			n, err := g.Signal(unix.SIGTERM, 0)
			require.NoError(t, err)
			require.Equal(t, 4, n)
			cmd.Wait()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			require.NoError(t, g.WaitEmpty(ctx, false))
			for _, pid := range pids {
				_, alive := startTime(pid) // a zombie waiting for its reaper counts as gone
				require.False(t, alive, "pid %d survived", pid)
			}
			require.NoError(t, g.Remove())
		})
	}
}

func TestKillTakesProcessesThatIgnoreSIGTERM(t *testing.T) {
	for _, m := range modes(t) {
		t.Run(m.Mode().String(), func(t *testing.T) {
			g, err := m.Create("stubborn", 1)
			require.NoError(t, err)
			cmd := exec.Command("/bin/sh", "-c", "trap '' TERM; sh -c \"trap '' TERM; sleep 300\" & sleep 300 & wait")
			g.Prepare(cmd)
			require.NoError(t, cmd.Start())
			g.Started(cmd.Process.Pid)
			testutil.Eventually(t, deadline, procs(g, func(n int) bool { return n >= 3 }), "3 processes")
			g.Signal(unix.SIGTERM, 0)
			go cmd.Wait()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			require.NoError(t, g.WaitEmpty(ctx, true))
			require.NoError(t, g.Remove())
		})
	}
}

func TestUsageCountsTheWholeGroup(t *testing.T) {
	for _, m := range modes(t) {
		if m.Mode() == ModeProc {
			continue // proc mode's reading is summed by oomd; see services/oomd/kernel
		}
		t.Run(m.Mode().String(), func(t *testing.T) {
			g, err := m.Create("usage", 1)
			require.NoError(t, err)
			// Three children each holding 16 MiB of touched anonymous memory.
			cmd := exec.Command("/bin/sh", "-c", strings.Repeat("python3 -c 'import time; b=bytearray(16<<20); time.sleep(300)' & ", 3)+"wait")
			g.Prepare(cmd)
			require.NoError(t, cmd.Start())
			t.Cleanup(func() { g.Kill(); cmd.Wait(); g.Remove() })
			u, err := g.OpenUsage()
			require.NoError(t, err)
			defer u.Close()
			buf := make([]byte, 64)
			read := func() uint64 {
				n, err := unix.Pread(int(u.Usage.Fd()), buf, 0)
				require.NoError(t, err)
				v, err := strconv.ParseUint(strings.TrimSpace(string(buf[:n])), 10, 64)
				require.NoError(t, err)
				return v
			}
			testutil.Eventually(t, deadline, func() (uint64, bool) { v := read(); return v, v >= 48<<20 }, "usage >= 48 MiB")
			// The fd is read-only: it carries no authority over the cgroup.
			_, err = u.Usage.Write([]byte("0"))
			require.Error(t, err)
		})
	}
}

func TestShimJoinsBeforeTheProgramRuns(t *testing.T) {
	m, err := Detect(Options{Want: ModeV1}, nil)
	if err != nil {
		t.Skipf("no cgroup v1 memory here: %v", err)
	}
	defer m.Close()
	g, err := m.Create("shim", 1)
	require.NoError(t, err)
	defer g.Remove()
	// The program's very first action reads its own cgroup.
	out, err := func() ([]byte, error) {
		cmd := exec.Command("/bin/cat", "/proc/self/cgroup")
		g.Prepare(cmd)
		return cmd.Output()
	}()
	require.NoError(t, err)
	require.Contains(t, string(out), "/"+g.Name()+"\n")
}

// memory.high is a cgroup v2 file: v1 and proc say so instead of pretending.
func TestSetHigh(t *testing.T) {
	for _, m := range modes(t) {
		t.Run(m.Mode().String(), func(t *testing.T) {
			g, err := m.Create("high", 1)
			require.NoError(t, err)
			defer g.Remove()
			err = g.SetHigh(64 << 20)
			if m.Mode() != ModeV2 {
				require.ErrorIs(t, err, ErrNoMemoryHigh)
				return
			}
			require.NoError(t, err)
			b, err := os.ReadFile(g.Path() + "/memory.high")
			require.NoError(t, err)
			require.Equal(t, strconv.Itoa(64<<20), strings.TrimSpace(string(b)))
		})
	}
}
