package supervisor

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/execd-stub/manifest"
)

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		failures int
		want     time.Duration
	}{
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{9, 25600 * time.Millisecond},
		{10, RestartMaxDelay},
		{1000, RestartMaxDelay},
	} {
		assert.Equal(t, tc.want, backoff(tc.failures), "failures=%d", tc.failures)
	}
}

// watcher is an in-process ExitWatcher; it fails calls while failFor > 0.
type watcher struct {
	got     chan ExitReport
	failFor int
}

func (w *watcher) Exited(_ context.Context, call oomdpb.ExitWatcher_exited) error {
	if w.failFor > 0 {
		w.failFor--
		return errors.New("watcher broken")
	}
	r, err := call.Args().Report()
	if err != nil {
		return err
	}
	subject, _ := r.Subject()
	w.got <- ExitReport{Subject: subject, Instance: r.Instance(), Pid: r.Pid(), ExitCode: r.ExitCode(),
		Signal: r.Signal(), Killed: r.Killed(), Terminated: r.Terminated()}
	return nil
}

func receive(t *testing.T, ch chan ExitReport) ExitReport {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no exit report")
		return ExitReport{}
	}
}

func report(i int) ExitReport {
	return ExitReport{Subject: fmt.Sprintf("s%d", i), Instance: uint64(i), Pid: int32(i), ExitCode: int32(i % 7)}
}

func TestExitBacklogIsBoundedAndDeliveredInOrder(t *testing.T) {
	q := newExitQueue(zaptest.NewLogger(t))
	defer q.close()
	const n = MaxExitBacklog + 100
	for i := 1; i <= n; i++ {
		q.push(report(i))
	}
	w := &watcher{got: make(chan ExitReport, n)}
	q.setWatcher(oomdpb.ExitWatcher_ServerToClient(w))
	for i := n - MaxExitBacklog + 1; i <= n; i++ {
		require.Equal(t, report(i), receive(t, w.got), "the oldest %d were dropped; the rest arrive in order", n-MaxExitBacklog)
	}
	q.push(report(n + 1))
	assert.Equal(t, report(n+1), receive(t, w.got), "after the backlog, live reports")
}

func TestFailedReportGoesToTheNextWatcher(t *testing.T) {
	q := newExitQueue(zaptest.NewLogger(t))
	defer q.close()
	broken := &watcher{got: make(chan ExitReport, 8), failFor: 1}
	q.setWatcher(oomdpb.ExitWatcher_ServerToClient(broken))
	q.push(report(1))
	q.push(report(2))

	// The pusher gives up on the broken watcher; wait until it has.
	require.Eventually(t, func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.wake == nil
	}, 10*time.Second, time.Millisecond)

	next := &watcher{got: make(chan ExitReport, 8)}
	q.setWatcher(oomdpb.ExitWatcher_ServerToClient(next))
	assert.Equal(t, report(1), receive(t, next.got), "the failed report is delivered again")
	assert.Equal(t, report(2), receive(t, next.got))
	assert.Empty(t, broken.got)
}

func TestTerminateRefusalsWithoutProcesses(t *testing.T) {
	m, err := manifest.Parse([]byte(`{"services": [
		{"id": "crit", "argv": ["x"], "critical": true},
		{"id": "app", "argv": ["x"]}]}`))
	require.NoError(t, err)
	s := New(Config{Manifest: m, Log: zaptest.NewLogger(t)})
	for _, tc := range []struct {
		name     string
		subject  string
		shutdown bool
		want     oomdpb.Refusal
	}{
		{"unknown", "nobody", false, oomdpb.Refusal_unknown},
		{"invalid id", "App", false, oomdpb.Refusal_unknown},
		{"critical", "crit", false, oomdpb.Refusal_critical},
		{"critical during shutdown", "crit", true, oomdpb.Refusal_critical},
		{"not running", "app", false, oomdpb.Refusal_notRunning},
		{"during shutdown", "app", true, oomdpb.Refusal_shuttingDown},
	} {
		s.mu.Lock()
		s.shuttingDown = tc.shutdown
		s.mu.Unlock()
		refusal, detail, pid := s.terminate(tc.subject, 1, 7, "test")
		assert.Equal(t, tc.want, refusal, "%s: %s", tc.name, detail)
		assert.NotEmpty(t, detail, tc.name)
		assert.Zero(t, pid, tc.name)
	}
}
