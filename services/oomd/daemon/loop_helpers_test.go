package daemon

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/services/oomd/policy"
)

// runLoop runs d's owner loop with manual ticks until the test ends, or until the test
// calls the stop it returns: the test ticks with tickNow, so what a test sees never
// depends on the wall clock.
func runLoop(t testing.TB, d *Daemon) (stop func()) {
	t.Helper()
	d.manualTicks = true
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-done)
		})
	}
	t.Cleanup(stop)
	return stop
}

// The helpers below run on the loop after stepping every answer already queued (an
// audit ack a fake auditor just gave, say): the loop takes queued answers before calls,
// and the helpers make that explicit; a test means "after what happened so far".

// tickNow runs one tick on the loop and returns when it and its Ready are done.
func (d *Daemon) tickNow() { d.onLoop(d.tick) }

// stepNow steps in on the loop and returns when its Ready was carried out.
func (d *Daemon) stepNow(in policy.Input) { d.onLoop(func() { d.feed(in) }) }

// withCore runs f on the loop.
func (d *Daemon) withCore(f func(c *policy.Core)) { d.onLoop(func() { f(d.core) }) }

func (d *Daemon) onLoop(f func()) {
	err := d.do(func() {
		for queued := true; queued; {
			select {
			case in := <-d.in:
				d.feed(in)
				d.processReady()
			default:
				queued = false
			}
		}
		f()
	})
	if err != nil {
		panic(err)
	}
}
