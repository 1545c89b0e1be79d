package rpcxtest

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// recorder is a failer that records instead of failing the test; FailNow ends the
// check by a panic that run recovers, as testing's FailNow ends the goroutine.
type recorder struct{ msgs []string }

type failedNow struct{}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.msgs = append(r.msgs, fmt.Sprintf(format, args...))
}
func (r *recorder) FailNow() { panic(failedNow{}) }

// run calls check with r and reports whether it failed.
func (r *recorder) run(check func(failer)) (failed bool) {
	defer func() {
		if v := recover(); v != nil {
			if _, ok := v.(failedNow); !ok {
				panic(v)
			}
			failed = true
		}
	}()
	check(r)
	return len(r.msgs) > 0
}

// TestChecksCatchWhatAnAttackLeaves: the checks every attack ends with must be able to
// fail. Goroutines left behind (a server that keeps one per hostile connection) and live
// heap kept (a server that buffers what an attacker sent) fail them; a clean run passes.
func TestChecksCatchWhatAnAttackLeaves(t *testing.T) {
	defer func(b, h time.Duration) { baselineWait, heapWait = b, h }(baselineWait, heapWait)
	baselineWait, heapWait = 200*time.Millisecond, 200*time.Millisecond

	gBase, hBase := settle()
	clean := &recorder{}
	assert.False(t, clean.run(func(f failer) { requireBaseline(f, gBase, hBase) }), "nothing left: %v", clean.msgs)

	stop := make(chan struct{})
	for range 16 {
		go func() { <-stop }()
	}
	leaked := &recorder{}
	assert.True(t, leaked.run(func(f failer) { requireBaseline(f, gBase, hBase) }), "16 goroutines left")
	assert.Contains(t, fmt.Sprint(leaked.msgs), "not back to baseline")
	close(stop)

	kept := make([]byte, 2*heapSlack)
	for i := range kept {
		kept[i] = 1
	}
	held := &recorder{}
	assert.True(t, held.run(func(f failer) { requireHeapWithin(f, hBase, "during the test") }), "32 MiB kept")
	assert.True(t, (&recorder{}).run(func(f failer) { requireBaseline(f, gBase, hBase) }), "32 MiB kept, after")
	assert.Equal(t, byte(1), kept[len(kept)-1]) // kept alive until here
}
