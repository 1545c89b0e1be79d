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
	"oomd.dev/oomd/services/oomd/ctlclient"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/wire"
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
//	t0  Control.inject(4 KiB) is called. Each hog starts holding exactly hardBytes
//	    (8 MiB, not over it), so one page crosses. oomd asks the hog's TestHook, the
//	    hog touches the page and hands the value to its publisher (--sample-period
//	    1ms: the crossing sample leaves at once), then answers. The kill can overtake
//	    that answer (the inject then fails with "connection closed"), so t0 is the
//	    call's start: the interval includes the inject's two RPC hops to the hog.
//	t1  this process's subscriber receives the hog's killDecided event;
//	t2  ... receives killRequested: the audit record is durable in logd (fsync) and
//	    the terminate request goes to execd;
//	t3  ... receives killed: execd acknowledged the terminate and reported the exit it
//	    observed (SIGTERM, exit 0), oomd published the kill.
//
// Reaction = t3 - t0 ("crossing value handed over → exit observed, as seen by a
// client"). The policy ticks every 10 ms, so the target is p99 ≤ 10 ms + 20 ms. The
// flood=true variant adds the two flooders of flood_test.go to the stack.
func TestBenchReaction(t *testing.T) {
	rounds, _ := strconv.Atoi(os.Getenv("OOMD_BENCH_REACTION"))
	if rounds <= 0 {
		t.Skip("set OOMD_BENCH_REACTION=<rounds> to run the reaction benchmark")
	}
	for _, flood := range []bool{false, true} {
		t.Run(fmt.Sprintf("flood=%v", flood), func(t *testing.T) {
			var r reaction
			for len(r.killed) < rounds {
				r.add(reactionStack(t, min(hogsPerStack, rounds-len(r.killed)), flood))
			}
			load, _ := os.ReadFile("/proc/loadavg")
			t.Logf("flood=%v rounds=%d (loadavg %s)", flood, len(r.killed), strings.TrimSpace(string(load)))
			for _, x := range []struct {
				name string
				d    []time.Duration
			}{
				{"t1-t0 inject→killDecided", r.decided},
				{"t2-t1 killDecided→killRequested (audit durable)", r.audit},
				{"t3-t2 killRequested→killed (terminate, exit observed)", r.exit},
				{"t3-t0 inject→killed (reaction)", r.killed},
			} {
				t.Logf("  %-55s p50 %9v  p99 %9v  max %9v", x.name, pct(x.d, 50), pct(x.d, 99), pct(x.d, 100))
			}
		})
	}
}

const hogsPerStack = 20

const reactionPolicy = `{"softBytes": 4194304, "hardBytes": 8388608, "sampleMs": 10, "killBudget": 1024, "killWindowTicks": 1, "signal": "cooperative"}`

type reaction struct{ decided, audit, exit, killed []time.Duration }

func (r *reaction) add(o reaction) {
	r.decided = append(r.decided, o.decided...)
	r.audit = append(r.audit, o.audit...)
	r.exit = append(r.exit, o.exit...)
	r.killed = append(r.killed, o.killed...)
}

func reactionStack(t *testing.T, hogs int, flood bool) (r reaction) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var extra strings.Builder
	for i := range hogs {
		fmt.Fprintf(&extra, `,
  {"id": "hog%02d", "argv": ["${BIN}/hog", "--step-every", "0", "--max-bytes", "33554432", "--start-bytes", "8388608", "--sample-period", "1ms"],
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
		t0 := time.Now()
		injectToKill(t, ctx, c, id, 4096)
		t1 := rec.wait(t, ctx, id, policy.EventKillDecided)
		t2 := rec.wait(t, ctx, id, policy.EventKillRequested)
		t3 := rec.wait(t, ctx, id, policy.EventKilled)
		r.add(reaction{[]time.Duration{t1.Sub(t0)}, []time.Duration{t2.Sub(t1)}, []time.Duration{t3.Sub(t2)}, []time.Duration{t3.Sub(t0)}})
	}
	require.NoError(t, s.stop(30*time.Second))
	return r
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
