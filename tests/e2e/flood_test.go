package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/services/oomd/ctlclient"
)

func init() { programs["flooder"] = "./tests/progs/flooder" }

// floodRSSBoundKiB is the stated bound on oomd's resident memory while subjects flood
// it (docs/perf.md): oomd idles at 10–13 MiB; without the receive-side limits in
// internal/rpcx one never-reading flooder grew it past 900 MiB in ten seconds.
const floodRSSBoundKiB = 64 << 10

// flooders are two hostile publishers: one writes report calls and never reads (held
// by backpressure), the other reads and discards every Return but never sends Finish
// (answered at full speed, its answers finished on its behalf).
const flooders = `,
  {"id": "flooder", "argv": ["${BIN}/flooder", "--report", "500"], "dependsOn": ["oomd", "hog"]},
  {"id": "drainer", "argv": ["${BIN}/flooder", "--drain", "--report", "10000"], "dependsOn": ["oomd", "hog"]}`

// TestFloodBoundsMemoryAndDoesNotDelayAKill: while two subjects flood oomd as fast as
// their sockets allow, oomd's RSS (sampled at every poll, and its peak VmHWM at the
// end) stays under floodRSSBoundKiB (raceRSS of it for a race build), and a hog
// crossing hardBytes is decided at the same tick at which oomd's core first shows its crossing sample — at most one tick
// after the sample reached oomd, since the tick drains every subject's slot.
func TestFloodBoundsMemoryAndDoesNotDelayAKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// The RPC memstat path (version 1; see TestSpoofedSamplesChangeNothing).
	s := startStackArgs(t, manifest(fmt.Sprintf(hogEntry, `, "--sample-period", "1ms"`, 1000)+flooders),
		map[string]string{"policy.json": policyJSON}, "--no-memstat-pages")
	c := dialClient(t, ctx, s)
	_, err := c.WaitEvent(ctx, "hog registered", ctlclient.IsKind("hog", "subjectRegistered"))
	require.NoError(t, err)
	oomd := pidOf(t, s, "oomd")
	var maxRSS uint64
	checkRSS := func() {
		rss := procStatus(t, oomd, "VmRSS")
		maxRSS = max(maxRSS, rss)
		require.LessOrEqual(t, rss, raceRSS(floodRSSBoundKiB), "oomd's RSS exceeded the flood bound")
	}

	// Both flood in earnest: the reader-less one got past its socket buffers' worth,
	// the draining one had 50 000 calls answered.
	s.waitLine("flooder flooder: wrote 500 frames", 30*time.Second)
	s.waitLine("flooder drainer: wrote 50000 frames", 60*time.Second)
	checkRSS()

	// 100 ticks of flood before the crossing.
	start := tick(t, ctx, c)
	for tk := start; tk < start+100; tk = tick(t, ctx, c) {
		checkRSS()
	}

	injectToKill(t, ctx, c, "hog", 16<<20)
	var seen uint64
	for seen == 0 {
		st := statusNow(t, ctx, c)
		checkRSS()
		if st.bytes["hog"] >= 16<<20 {
			seen = st.tick
		}
	}
	decided, err := c.WaitEvent(ctx, "killDecided", ctlclient.IsKind("hog", "killDecided"))
	require.NoError(t, err)
	t.Logf("crossing sample first shown at tick %d, killDecided at tick %d", seen, decided.Tick)
	assert.LessOrEqual(t, decided.Tick, seen+1, "the kill was decided more than one tick after oomd had the crossing sample")
	_, err = c.WaitEvent(ctx, "killed", ctlclient.IsKind("hog", "killed"))
	require.NoError(t, err)
	s.waitLine("oomd: kill app=hog", 10*time.Second)

	// Still flooding afterwards; memory still bounded.
	start = tick(t, ctx, c)
	for tk := start; tk < start+100; tk = tick(t, ctx, c) {
		checkRSS()
	}
	hwm := procStatus(t, oomd, "VmHWM")
	t.Logf("oomd VmRSS max sampled %d KiB, VmHWM %d KiB (bound %d KiB); drainer got to %q",
		maxRSS, hwm, raceRSS(floodRSSBoundKiB), lastLine(s, "flooder drainer: wrote"))
	assert.LessOrEqual(t, hwm, raceRSS(floodRSSBoundKiB), "oomd's peak RSS exceeded the flood bound")
	require.NoError(t, s.stop(20*time.Second))
}

// snapshot is what the flood test reads from one Control.status answer.
type snapshot struct {
	tick  uint64
	bytes map[string]uint64
}

// statusNow asks for status and releases the answer at once (status() keeps every
// answer until the test ends, which a polling loop must not).
func statusNow(t *testing.T, ctx context.Context, c *ctlclient.Client) snapshot {
	t.Helper()
	f, rel := c.Ctl.Status(ctx, nil)
	defer rel()
	res, err := f.Struct()
	require.NoError(t, err)
	st, err := res.Status()
	require.NoError(t, err)
	l, err := st.Subjects()
	require.NoError(t, err)
	snap := snapshot{tick: st.Tick(), bytes: make(map[string]uint64, l.Len())}
	for i := 0; i < l.Len(); i++ {
		id, err := l.At(i).Subject()
		require.NoError(t, err)
		snap.bytes[id] = l.At(i).Bytes()
	}
	return snap
}

func tick(t *testing.T, ctx context.Context, c *ctlclient.Client) uint64 {
	t.Helper()
	return statusNow(t, ctx, c).tick
}

func lastLine(s *stack, substr string) string {
	s.lines.mu.Lock()
	defer s.lines.mu.Unlock()
	for i := len(s.lines.all) - 1; i >= 0; i-- {
		if strings.Contains(s.lines.all[i], substr) {
			return s.lines.all[i]
		}
	}
	return ""
}

// procStatus returns a field of /proc/<pid>/status: kB for VmRSS/VmHWM, a count for Threads.
func procStatus(t *testing.T, pid int, field string) uint64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			var n uint64
			_, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &n)
			require.NoError(t, err)
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
