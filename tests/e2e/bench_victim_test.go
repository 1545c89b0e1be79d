package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/services/oomd/policy"
)

// TestBenchVictim measures a pressure victim's reaction on the real stack: from the
// crossing of the victim level to the victim's observed exit. It is a benchmark,
// skipped unless OOMD_BENCH_VICTIM is set to the number of rounds (one stack each); it
// asserts only that the leaker is the victim.
//
//	OOMD_BENCH_VICTIM=20 go test ./tests/e2e/ -run TestBenchVictim -v -count=1
//
// The stack is TestPressureVictim's (victims_test.go) except that the leaker grows all
// the time: 64 MiB at start, then 2 MiB every 10 ms (200 MiB/s), never publishing. A
// round, timed in this process:
//
//	t0  the meminfo file is renamed into place with MemAvailable 150 MiB (imminentOom);
//	    just before, status gave the leaker's reading b0;
//	t1  the subscriber receives levelChanged normal->imminentOom (oomd read the file:
//	    levels are read every sampleMs, 10 ms);
//	t2  ... receives the leaker's killed event: the decision was audited durably, execd
//	    terminated the subject and reported its cgroup empty.
//
// Reported: t2-t0 and t2-t1 (p50, p99, max), the same in oomd ticks (killed.Tick -
// levelChanged.Tick), and the bytes the leaker grew past the crossing: its reading at
// the decision minus b0 (both the kernel's count of its cgroup), and an upper bound of
// its growth until the exit: that plus the nominal leak rate times killDecided→killed
// as the subscriber saw them. (The hog's own "hog stopping on signal" arena is no help
// here: the arena excludes the Go runtime's few MiB that b0 counts, more than the
// growth.)
func TestBenchVictim(t *testing.T) {
	rounds, _ := strconv.Atoi(os.Getenv("OOMD_BENCH_VICTIM"))
	if rounds <= 0 {
		t.Skip("set OOMD_BENCH_VICTIM=<rounds> to run the victim benchmark")
	}
	var fromWrite, fromLevel []time.Duration
	var ticks, beyond, decidedBeyond []uint64 // beyond: upper bound to the exit
	for range rounds {
		r := victimRound(t)
		fromWrite, fromLevel = append(fromWrite, r.fromWrite), append(fromLevel, r.fromLevel)
		ticks = append(ticks, r.ticks)
		beyond, decidedBeyond = append(beyond, r.beyond), append(decidedBeyond, r.decidedBeyond)
	}
	load, _ := os.ReadFile("/proc/loadavg")
	t.Logf("rounds=%d (loadavg %s)", rounds, strings.TrimSpace(string(load)))
	for _, x := range []struct {
		name string
		d    []time.Duration
	}{{"t2-t0 meminfo written→killed", fromWrite}, {"t2-t1 levelChanged→killed", fromLevel}} {
		t.Logf("  %-32s p50 %9v  p99 %9v  max %9v", x.name, pct(x.d, 50), pct(x.d, 99), pct(x.d, 100))
	}
	t.Logf("  %-32s p50 %9d  p99 %9d  max %9d", "ticks levelChanged→killed", pctN(ticks, 50), pctN(ticks, 99), pctN(ticks, 100))
	for _, x := range []struct {
		name string
		b    []uint64
	}{{"leaker growth b0→decision (MiB)", decidedBeyond}, {"... b0→exit, upper bound (MiB)", beyond}} {
		t.Logf("  %-32s p50 %9.1f  p99 %9.1f  max %9.1f", x.name, mib(pctN(x.b, 50)), mib(pctN(x.b, 99)), mib(pctN(x.b, 100)))
	}
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }

// pctN is pct (bench_reaction_test.go) for counts: nearest rank, no rounding.
func pctN(v []uint64, p int) uint64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

type victimRun struct {
	fromWrite, fromLevel time.Duration
	ticks                uint64
	beyond               uint64 // decidedBeyond + leak rate * (killed - killDecided)
	decidedBeyond        uint64 // reading at the decision - b0
}

// leakPerMs is the bench leaker's nominal rate: 2 MiB every 10 ms.
const leakPerMs = 2 << 20 / 10

func victimRound(t *testing.T) (r victimRun) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hogs := strings.Replace(victimHogs(nil), `"--no-publish", "--step-every", "0", "--start-bytes", "100663296", "--max-bytes", "100663296"`,
		`"--no-publish", "--step-every", "10ms", "--step-bytes", "2097152", "--start-bytes", "67108864", "--max-bytes", "805306368"`, 1)
	require.Contains(t, hogs, `"--step-every", "10ms"`)
	record := filepath.Join(t.TempDir(), "reboot.rec")
	s := startStack(t, sysManifest(record, hogs), map[string]string{
		"policy.json": victimPolicy(false), "meminfo": fmt.Sprintf("MemAvailable:   %d kB\n", 1<<20)})
	c := dialClient(t, ctx, s)
	sub := newTimedSubscriber(t, ctx, c)
	waitReady(t, ctx, s, c, victimIDs...)
	for subjectStatus(t, ctx, c, "leaker").Bytes() < 64<<20 {
		waitTicks(t, ctx, c, 1)
	}

	b0 := subjectStatus(t, ctx, c, "leaker").Bytes()
	t0 := time.Now()
	setMemAvailable(t, s, 150<<20)
	t1 := sub.wait(t, ctx, "", policy.EventLevelChanged)
	td := sub.wait(t, ctx, "leaker", policy.EventKillDecided)
	t2 := sub.wait(t, ctx, "leaker", policy.EventKilled)
	level, err := c.WaitEvent(ctx, "levelChanged", func(e policy.Event) bool { return e.Kind == policy.EventLevelChanged })
	require.NoError(t, err)
	require.Equal(t, "normal->imminentOom", level.Reason)
	decided, err := c.WaitEvent(ctx, "killDecided", func(e policy.Event) bool { return e.Kind == policy.EventKillDecided })
	require.NoError(t, err)
	require.Equal(t, "leaker", decided.Subject, "the victim: %q", decided.Reason)
	killed, err := c.WaitEvent(ctx, "leaker killed", func(e policy.Event) bool { return e.Subject == "leaker" && e.Kind == policy.EventKilled })
	require.NoError(t, err)
	require.NoError(t, s.stop(30*time.Second))
	grown := killed.Bytes - min(killed.Bytes, b0)
	return victimRun{fromWrite: t2.Sub(t0), fromLevel: t2.Sub(t1), ticks: killed.Tick - level.Tick,
		decidedBeyond: grown, beyond: grown + uint64(t2.Sub(td).Milliseconds()+1)*leakPerMs}
}
