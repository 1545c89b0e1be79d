package rpcxtest

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/internal/procstat"
)

// Proc measures a server that runs as its own process (the real daemon binary), from
// /proc: what RunOne checks in-process (goroutines, Go heap), RunProc checks the way an
// operator sees it.
type Proc struct {
	Pid int
}

// Snapshot is one reading of a server process.
type Snapshot struct {
	RSSKiB uint64        // VmRSS
	FDs    int           // open fds
	CPU    time.Duration // user + system since start
}

// Read reads p's RSS, fd count and CPU time.
func (p Proc) Read(t testing.TB) Snapshot {
	t.Helper()
	var s Snapshot
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.Pid) + "/status")
	require.NoError(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			s.RSSKiB, _ = strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	fds, err := os.ReadDir("/proc/" + strconv.Itoa(p.Pid) + "/fd")
	require.NoError(t, err)
	s.FDs = len(fds)
	stat, err := procstat.Read(p.Pid)
	require.NoError(t, err)
	ut, err := stat.Uint(procstat.FieldUTime)
	require.NoError(t, err)
	st, err := stat.Uint(procstat.FieldSTime)
	require.NoError(t, err)
	s.CPU = time.Duration(ut+st) * (time.Second / 100) // USER_HZ is 100 on Linux
	return s
}

// RunProc runs attack a against the server process p listening on tg.Path: a real call
// before, during and after; the attacking connection closed by the server (if the
// attack says so); afterwards RSS <= max(2 x before, before + 64 MiB) and open fds <=
// before + 8 (polled with a deadline), and with no traffic the process uses less than
// 5 % of a core over a second (no spin left behind).
func RunProc(t *testing.T, tg Target, p Proc, a Attack) {
	probe(t, tg, "before")
	before := p.Read(t)
	c := dial(t, tg)
	mustClose := a.Run(t, tg, c)
	probe(t, tg, "during")
	if mustClose {
		requireClosed(t, c, tg.FirstMessageTimeout+5*time.Second)
	}
	c.Close()
	probe(t, tg, "after")
	rssBound := max(2*before.RSSKiB, before.RSSKiB+64<<10)
	deadline := time.Now().Add(15 * time.Second)
	for {
		now := p.Read(t)
		if now.RSSKiB <= rssBound && now.FDs <= before.FDs+8 {
			break
		}
		if time.Now().After(deadline) {
			require.Failf(t, "not back within bounds", "%s: RSS %d KiB (before %d, bound %d), fds %d (before %d, bound +8)",
				a.Name, now.RSSKiB, before.RSSKiB, rssBound, now.FDs, before.FDs)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
	// Idle CPU: one-second windows until one is under 5 %, for at most 10 s. A server
	// still releasing what a flood queued (slow in a race build) settles; one that spins
	// never does.
	var share float64
	settle := time.Now().Add(10 * time.Second)
	for {
		idle0, wall0 := p.Read(t).CPU, time.Now()
		time.Sleep(time.Second) // the measurement window itself
		share = float64(p.Read(t).CPU-idle0) / float64(time.Since(wall0))
		if share < 0.05 || time.Now().After(settle) {
			break
		}
	}
	t.Logf("%s: RSS %d -> %d KiB, fds %d -> %d, idle CPU afterwards %.1f %%", a.Name, before.RSSKiB, p.Read(t).RSSKiB,
		before.FDs, p.Read(t).FDs, 100*share)
	require.Less(t, share, 0.05, "%s: the server spins with no traffic after the attack (10 s to settle)", a.Name)
}
