package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/internal/ctlclient"
	"oomd.dev/oomd/internal/wire"
	"oomd.dev/oomd/services/oomd/policy"
)

// TestBenchReaction measures the kill path's reaction time on the real stack (execd,
// logd, oomd, hogs as separate processes). It is a benchmark, skipped unless
// OOMD_BENCH_REACTION is set to the number of rounds; it asserts nothing about time.
//
//	OOMD_BENCH_REACTION=200 go test ./tests/e2e/ -run TestBenchReaction -v -count=1
//
// A killed instance is not restarted (execd restarts only what it did not terminate),
// so each stack runs hogsPerStack hogs and each round kills the next one; stacks are
// started until the rounds are done. A round, timed in this process:
//
//	t0  Control.inject returns: the hog has allocated and touched 16 MiB and handed the
//	    crossing value to its publisher (--sample-period 1ms: it leaves at once);
//	t1  this process's subscriber receives the hog's killDecided event;
//	t2  ... receives the hog's killed event: execd acknowledged the terminate and
//	    reported the exit it observed (SIGTERM, exit 0), oomd published the kill.
//
// Reaction = t2 - t0 ("crossing sample sent → exit observed, as seen by a client").
// It includes audit durability (logd's fsync) before the terminate. The policy ticks
// every 10 ms, so the target is p99 ≤ 10 ms + 20 ms. The flood=on variant adds the two
// flooders of flood_test.go to the stack.
func TestBenchReaction(t *testing.T) {
	rounds, _ := strconv.Atoi(os.Getenv("OOMD_BENCH_REACTION"))
	if rounds <= 0 {
		t.Skip("set OOMD_BENCH_REACTION=<rounds> to run the reaction benchmark")
	}
	for _, flood := range []bool{false, true} {
		t.Run(fmt.Sprintf("flood=%v", flood), func(t *testing.T) {
			var decide, kill []time.Duration
			for len(kill) < rounds {
				d, k := reactionStack(t, min(hogsPerStack, rounds-len(kill)), flood)
				decide, kill = append(decide, d...), append(kill, k...)
			}
			load, _ := os.ReadFile("/proc/loadavg")
			t.Logf("flood=%v rounds=%d  inject→killDecided p50 %v p99 %v max %v  inject→killed p50 %v p99 %v max %v  (loadavg %s)",
				flood, len(kill), pct(decide, 50), pct(decide, 99), pct(decide, 100), pct(kill, 50), pct(kill, 99), pct(kill, 100),
				strings.TrimSpace(string(load)))
		})
	}
}

const hogsPerStack = 20

const reactionPolicy = `{"softBytes": 4194304, "hardBytes": 8388608, "sampleMs": 10, "killBudget": 1024, "killWindowTicks": 1}`

func reactionStack(t *testing.T, hogs int, flood bool) (decide, kill []time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var extra strings.Builder
	for i := range hogs {
		fmt.Fprintf(&extra, `,
  {"id": "hog%02d", "argv": ["${BIN}/hog", "--step-every", "0", "--max-bytes", "33554432", "--sample-period", "1ms"],
   "injectable": true, "dependsOn": ["oomd"], "stopTimeoutMs": 1000}`, i)
	}
	if flood {
		extra.WriteString(flooders)
	}
	m := strings.ReplaceAll(manifest(extra.String()), `"dependsOn": ["oomd", "hog"]`, `"dependsOn": ["oomd"]`)
	s := startStack(t, m, map[string]string{"policy.json": reactionPolicy})
	c := dialClient(t, ctx, s)
	rec := newTimedSubscriber(t, ctx, c)
	for i := range hogs {
		id := fmt.Sprintf("hog%02d", i)
		_, err := c.WaitEvent(ctx, id+" registered", ctlclient.IsKind(id, "subjectRegistered"))
		require.NoError(t, err)
	}
	for i := range hogs {
		id := fmt.Sprintf("hog%02d", i)
		require.NoError(t, c.Inject(ctx, id, 16<<20))
		t0 := time.Now()
		t1 := rec.wait(t, ctx, id, policy.EventKillDecided)
		t2 := rec.wait(t, ctx, id, policy.EventKilled)
		decide, kill = append(decide, t1.Sub(t0)), append(kill, t2.Sub(t0))
	}
	require.NoError(t, s.stop(30*time.Second))
	return decide, kill
}

// timedSubscriber is an EventSubscriber that notes when each event arrived.
type timedSubscriber struct {
	mu   sync.Mutex
	at   map[string]time.Time // subject/kind -> first arrival
	wake chan struct{}
}

func newTimedSubscriber(t *testing.T, ctx context.Context, c *ctlclient.Client) *timedSubscriber {
	r := &timedSubscriber{at: make(map[string]time.Time), wake: make(chan struct{}, 1)}
	f, rel := c.Ctl.Subscribe(ctx, func(p oomdpb.Control_subscribe_Params) error {
		p.SetSinceSeq(0)
		return p.SetSubscriber(oomdpb.EventSubscriber_ServerToClient(r))
	})
	defer rel()
	res, err := f.Struct()
	require.NoError(t, err)
	sub := res.Subscription().AddRef()
	t.Cleanup(sub.Release)
	return r
}

func (r *timedSubscriber) Push(_ context.Context, call oomdpb.EventSubscriber_push) error {
	now := time.Now()
	l, err := call.Args().Events()
	if err != nil {
		return err
	}
	evs, err := wire.Events(l)
	if err != nil {
		return err
	}
	r.mu.Lock()
	for _, e := range evs {
		k := e.Subject + "/" + e.Kind.String()
		if _, ok := r.at[k]; !ok {
			r.at[k] = now
		}
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

func (r *timedSubscriber) wait(t *testing.T, ctx context.Context, subject string, kind policy.EventKind) time.Time {
	t.Helper()
	k := subject + "/" + kind.String()
	for {
		r.mu.Lock()
		at, ok := r.at[k]
		r.mu.Unlock()
		if ok {
			return at
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no %s event", k)
		case <-r.wake:
		}
	}
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))].Round(10 * time.Microsecond)
}
