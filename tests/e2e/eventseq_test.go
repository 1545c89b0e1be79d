package e2e

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/services/oomd/ctlclient"
)

// TestEventSeqsSurviveRestart: after oomd dies (SIGKILL, nothing flushed) and execd
// restarts it, every event of the new run has a seq above every seq of the old one, a
// reader resuming with the old run's last seq is told the numbers in between are gone
// (missed), and every event carries a wall time that does not go backwards.
func TestEventSeqsSurviveRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	m := restartingManifest()
	s := startStack(t, m, map[string]string{"policy.json": policyJSON})
	c := dialClient(t, ctx, s)

	var old []uint64
	require.Eventually(t, func() bool {
		evs, _, _, err := c.ReadEvents(ctx, 0, 1024)
		old = old[:0]
		for _, e := range evs {
			old = append(old, e.Seq)
		}
		return err == nil && len(evs) > 0
	}, 30*time.Second, 10*time.Millisecond, "the first run published events (registrations)")
	oldLast := old[len(old)-1]

	require.NoError(t, syscall.Kill(lastPidOf(t, s, "oomd"), syscall.SIGKILL))
	require.Eventually(t, func() bool { return s.lines.count("oomd: ready") >= 2 }, 30*time.Second, 10*time.Millisecond)
	c2, err := ctlclient.Dial(ctx, s.path("oomd.sock"), zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(c2.Close)
	// Registrations of the subjects that outlived the restart are events of the new run.
	require.NoError(t, c2.WaitTicks(ctx, 2))

	evs, _, missed, err := c2.ReadEvents(ctx, oldLast, 1024)
	require.NoError(t, err)
	require.NotEmpty(t, evs, "the new run published events")
	assert.Greater(t, evs[0].Seq, oldLast, "seqs continue above the old run's")
	assert.Equal(t, evs[0].Seq-oldLast-1, missed, "every number skipped between the runs is reported missed")
	for i, e := range evs {
		assert.NotZero(t, e.WallTimeNs, "seq %d has a wall time", e.Seq)
		if i > 0 {
			assert.Greater(t, e.Seq, evs[i-1].Seq)
			assert.GreaterOrEqual(t, e.WallTimeNs, evs[i-1].WallTimeNs, "seq %d", e.Seq)
		}
	}
	_, _, missedOld, err := c2.ReadEvents(ctx, old[0]-1, 1)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, missedOld, uint64(len(old)), "the old run's events are reported gone, not silently skipped")
}
