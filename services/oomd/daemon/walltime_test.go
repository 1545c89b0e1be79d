package daemon

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/services/oomd/policy"
)

// recordCover is an EventSeq that remembers the highest seq it was asked to cover.
type recordCover struct {
	mu      sync.Mutex
	covered uint64
}

func (r *recordCover) Cover(seq uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.covered = max(r.covered, seq)
	return nil
}

// TestEventsNumberedAboveBaseAndStamped: the shell numbers a run's events above the
// base it was given, has every seq covered by the high-water mark before anyone can
// read it, and hands out each event with the wall time it was published at (from the
// injected clock: the core never sees it).
func TestEventsNumberedAboveBaseAndStamped(t *testing.T) {
	p := policy.DefaultPolicy()
	p.SoftBytes, p.HardBytes = 50, 100
	cover := &recordCover{}
	clock := time.Unix(1_700_000_000, 0)
	now := func() time.Time { clock = clock.Add(time.Second); return clock }
	d, err := New(Config{Policy: p, RingSize: 8, Log: zaptest.NewLogger(t), EventSeqBase: 3000, EventSeq: cover, Now: now},
		&fakeAuditor{}, fakeTerminator{calls: make(chan policy.TerminateRequest, 8)})
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	runLoop(t, d)

	app := handOver(t, d, "app")
	for _, b := range []uint64{60, 10, 60} { // soft crossings, one event each way
		app.report(t, "app", b, 1)
		d.tickNow()
	}
	evs, _, missed, err := d.events(2990, 100)
	require.NoError(t, err)
	require.NotEmpty(t, evs)
	assert.Equal(t, uint64(10), missed, "seqs 2991..3000 belong to an earlier run")
	assert.Equal(t, uint64(3001), evs[0].Seq)
	cover.mu.Lock()
	assert.GreaterOrEqual(t, cover.covered, evs[len(evs)-1].Seq, "every seq shown is covered by the mark")
	cover.mu.Unlock()
	for i, e := range evs {
		assert.NotZero(t, e.WallTimeNs, "event %d has a wall time", e.Seq)
		if i > 0 {
			assert.GreaterOrEqual(t, e.WallTimeNs, evs[i-1].WallTimeNs, "wall times do not go backwards")
		}
	}
	assert.Less(t, d.started.UnixNano(), evs[0].WallTimeNs, "published after the run started")
}
