package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/ctlclient"
)

type jsonEvent struct {
	Seq      uint64 `json:"seq"`
	Tick     uint64 `json:"tick"`
	Kind     string `json:"kind"`
	Subject  string `json:"subject"`
	Bytes    uint64 `json:"bytes"`
	Limit    uint64 `json:"limit"`
	Decision uint64 `json:"decision"`
	Reason   string `json:"reason"`
}

func parseEvents(t *testing.T, out string) []jsonEvent {
	t.Helper()
	var evs []jsonEvent
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(l, `{"seq"`) {
			continue // a "missed" line
		}
		var e jsonEvent
		require.NoError(t, json.Unmarshal([]byte(l), &e), l)
		evs = append(evs, e)
	}
	return evs
}

// TestLiveTraceReplays: the real oomd records its live trace (on by default next to its
// --policy file, small rotated files here so the run spans several); after a kill,
// `oomctl replay` recomputes from the trace alone exactly the events oomd published,
// the kill's audit record points into the trace, and `oomctl replay --policy` with a
// hard limit above what the hog reached reports the kill as a decision only the
// recorded run made.
func TestLiveTraceReplays(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	s := startStack(t, recoveryManifest(`, "--trace-file-bytes", "1024", "--trace-files", "256"`),
		map[string]string{"policy.json": policyJSON, "lax.json": strings.Replace(policyJSON, `"hardBytes": 8388608`, `"hardBytes": 1073741824`, 1)})
	c := dialClient(t, ctx, s)
	_, err := c.WaitEvent(ctx, "hog registered", ctlclient.IsKind("hog", "subjectRegistered"))
	require.NoError(t, err)
	waitTicks(t, ctx, c, 100) // a few rotations before the kill
	injectToKill(t, ctx, c, "hog", 16<<20)
	killed, err := c.WaitEvent(ctx, "hog killed", ctlclient.IsKind("hog", "killed"))
	require.NoError(t, err)
	mine := checkWriterSequence(t, waitAudit(t, ctx, c, "hog", oomdpb.EventKind_killed))
	code, out, stderr := runOomctl(t, ctx, s, "events", "--json", "--limit", "0")
	require.Equal(t, 0, code, stderr)
	live := parseEvents(t, out)
	code, out, stderr = runOomctl(t, ctx, s, "audit", "--json")
	require.Equal(t, 0, code, stderr)
	require.NoError(t, s.stop(20*time.Second)) // oomd closes (flushes) its trace

	trace := s.path("policy.json.trace")
	names, err := os.ReadDir(trace)
	require.NoError(t, err)
	require.Greater(t, len(names), 2, "the run rotated its trace")
	code, replayed, stderr := runOomctl(t, ctx, s, "replay", trace, "--json")
	require.Equal(t, 0, code, stderr)
	again := parseEvents(t, replayed)
	require.GreaterOrEqual(t, len(again), len(live))
	assert.Equal(t, live, again[:len(live)], "the replay's events are oomd's, byte for byte")

	var decided struct{ TracePos string }
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var a struct {
			Kind, Subject, TracePos string
			Decision                uint64
		}
		require.NoError(t, json.Unmarshal([]byte(l), &a))
		if a.Kind == "killDecided" && a.Subject == "hog" {
			decided.TracePos = a.TracePos
			assert.Equal(t, killed.Decision, a.Decision)
		}
	}
	require.Regexp(t, `^trace-\d+-\d+\.otr:\d+$`, decided.TracePos, "the kill decision's audit record points into the trace")
	_, ok := find(mine, "hog", oomdpb.EventKind_killDecided)
	require.True(t, ok)

	code, diff, stderr := runOomctl(t, ctx, s, "replay", trace, "--policy", s.path("lax.json"))
	require.Equal(t, 0, code, stderr)
	assert.Regexp(t, `(?m)^- tick \d+ killDecided subject=hog \(only the recorded run\)$`, diff)
	assert.NotContains(t, diff, "+ tick", "the lax policy decides nothing the real one did not")
}

// TestWhatIfOverRPC: `oomctl policy set --what-if` against the real oomd shows what a
// stricter policy would do now (the hog, under the hard limit in force, would be
// decided), and nothing changes: the version in force stays, no decision is made, the
// hog lives on.
func TestWhatIfOverRPC(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, c := startWithHog(t, ctx)
	require.NoError(t, c.Inject(ctx, "hog", 6<<20)) // above soft (4 MiB), below hard (8 MiB)
	_, err := c.WaitEvent(ctx, "hog above soft", ctlclient.IsKind("hog", "softExceeded"))
	require.NoError(t, err)
	before := status(t, ctx, c).PolicyVersion()

	code, out, stderr := runOomctl(t, ctx, s, "policy", "set", "--hard-bytes", "5M", "--what-if")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, out, fmt.Sprintf("version %d stays in force", before))
	assert.Regexp(t, `(?m)^seq=\d+ tick=\d+ killDecided subject=hog bytes=\S+ limit=5MiB decision=\d+`, out)

	waitTicks(t, ctx, c, 20)
	st := status(t, ctx, c)
	assert.Equal(t, before, st.PolicyVersion(), "the policy in force did not change")
	assert.Zero(t, st.Kills())
	evs, _, _, err := c.ReadEvents(ctx, 0, 1024)
	require.NoError(t, err)
	for _, e := range evs {
		assert.NotEqual(t, "killDecided", e.Kind.String(), "no decision was made: %+v", e)
	}
	require.NoError(t, s.stop(20*time.Second))
}

// TestStopFlushesTheIdleTrace: an idle oomd writes its live trace only every ten seconds,
// so what it buffered since must reach the disk when it stops. oomd alone gets SIGTERM,
// with its subjects still running (a whole stack's stop would first stop the hog, whose
// exit event flushes the trace by itself): every tick oomd reported before the signal is
// in the trace after its exit.
func TestStopFlushesTheIdleTrace(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, c := startWithHog(t, ctx)
	waitTicks(t, ctx, c, 50) // idle ticks (10 ms each): in the buffer, not yet on disk
	before := status(t, ctx, c).Tick()
	require.NoError(t, syscall.Kill(pidOf(t, s, "oomd"), syscall.SIGTERM))
	s.waitLine(`exited	{"subject": "oomd", "instance": 1`, 20*time.Second)

	trace := s.path("policy.json.trace")
	names, err := os.ReadDir(trace)
	require.NoError(t, err)
	ticks := uint64(0)
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(trace, n.Name()))
		require.NoError(t, err)
		ticks += uint64(strings.Count(string(b), `{"input":{"kind":"tick"`))
	}
	assert.GreaterOrEqual(t, ticks, before, "ticks in the trace after oomd's exit, against the tick it reported before the signal")
}
