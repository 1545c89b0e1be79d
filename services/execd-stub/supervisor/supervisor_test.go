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

// holdingWatcher takes each report and answers it only when the test releases it, as
// oomd holds a report until what it caused is durable.
type holdingWatcher struct {
	got     chan ExitReport
	release chan struct{}
}

func (w *holdingWatcher) Exited(ctx context.Context, call oomdpb.ExitWatcher_exited) error {
	r, err := call.Args().Report()
	if err != nil {
		return err
	}
	subject, _ := r.Subject()
	w.got <- ExitReport{Subject: subject, Instance: r.Instance()}
	select {
	case <-w.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestFullBacklogKeepsTheReportInFlight: the watcher holds report 1 (a kill whose record
// waits for logd) while MaxExitBacklog more exits arrive. The backlog drops the oldest
// report not in flight (2), never the held one, which is the one a crash of the watcher
// must not lose.
func TestFullBacklogKeepsTheReportInFlight(t *testing.T) {
	q := newExitQueue(zaptest.NewLogger(t))
	defer q.close()
	w := &holdingWatcher{got: make(chan ExitReport, MaxExitBacklog+2), release: make(chan struct{})}
	q.setWatcher(oomdpb.ExitWatcher_ServerToClient(w))
	q.push(report(1))
	require.Equal(t, report(1).Subject, receive(t, w.got).Subject, "report 1 is in flight")
	for i := 2; i <= MaxExitBacklog+1; i++ {
		q.push(report(i))
	}
	q.mu.Lock()
	require.Len(t, q.items, MaxExitBacklog)
	head, next := q.items[0].r, q.items[1].r
	q.mu.Unlock()
	assert.Equal(t, report(1), head, "the report in flight is kept")
	assert.Equal(t, report(3), next, "the oldest report not in flight (2) was dropped")

	close(w.release)
	for i := 3; i <= MaxExitBacklog+1; i++ {
		require.Equal(t, report(i).Subject, receive(t, w.got).Subject, "then the rest, in order")
	}
}

// fillBacklog pushes reports from..MaxExitBacklog+from-1 and returns the two oldest kept.
func fillBacklog(q *exitQueue, from int) (head, next ExitReport) {
	for i := from; i < MaxExitBacklog+from; i++ {
		q.push(report(i))
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.items[0].r, q.items[1].r
}

// TestFullBacklogKeepsAReportItsWatcherDiedHolding: the watcher's call fails (oomd died
// before what the exit caused was durable) and the backlog fills before the next
// watcher: the failed report is still the one kept.
func TestFullBacklogKeepsAReportItsWatcherDiedHolding(t *testing.T) {
	q := newExitQueue(zaptest.NewLogger(t))
	defer q.close()
	q.setWatcher(oomdpb.ExitWatcher_ServerToClient(&watcher{got: make(chan ExitReport, 1), failFor: 1}))
	q.push(report(1))
	require.Eventually(t, func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.wake == nil // the pusher gave up on the failed watcher
	}, 10*time.Second, time.Millisecond)
	head, next := fillBacklog(q, 2)
	assert.Equal(t, report(1), head, "the report the dead watcher held is kept")
	assert.Equal(t, report(3), next)
}

// TestReplacedWatcherDoesNotUnprotectTheReport: report 1 is held by watcher A when B
// registers and receives it again; A's call then ends (cancelled). The report is still
// protected while B holds it.
func TestReplacedWatcherDoesNotUnprotectTheReport(t *testing.T) {
	q := newExitQueue(zaptest.NewLogger(t))
	defer q.close()
	ended := make(chan struct{}, 2)
	q.pusherDone = func() { ended <- struct{}{} }
	a := &holdingWatcher{got: make(chan ExitReport, 1), release: make(chan struct{})}
	q.setWatcher(oomdpb.ExitWatcher_ServerToClient(a))
	q.push(report(1))
	receive(t, a.got)
	b := &holdingWatcher{got: make(chan ExitReport, MaxExitBacklog+2), release: make(chan struct{})}
	q.setWatcher(oomdpb.ExitWatcher_ServerToClient(b))
	receive(t, b.got)
	select {
	case <-ended: // A's pusher, its call cancelled by B's registration
	case <-time.After(10 * time.Second):
		t.Fatal("the replaced watcher's pusher did not end")
	}
	head, next := fillBacklog(q, 2)
	assert.Equal(t, report(1), head, "the report B holds is kept")
	assert.Equal(t, report(3), next)
	close(b.release)
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

// fakeRebootWatcher answers (or, with hold, waits for hold to close) and records what it
// was told; released is closed when execd dropped its last reference.
type fakeRebootWatcher struct {
	told     chan oomdpb.RebootReason
	hold     chan struct{}
	released chan struct{}
}

func newFakeRebootWatcher(hold chan struct{}) *fakeRebootWatcher {
	return &fakeRebootWatcher{told: make(chan oomdpb.RebootReason, 4), hold: hold, released: make(chan struct{})}
}

func (w *fakeRebootWatcher) Rebooting(ctx context.Context, call oomdpb.RebootWatcher_rebooting) error {
	w.told <- call.Args().Reason()
	if w.hold != nil {
		select {
		case <-w.hold:
		case <-ctx.Done():
		}
	}
	return nil
}

func (w *fakeRebootWatcher) Shutdown() { close(w.released) }

func TestRebootWatchersWithoutProcesses(t *testing.T) {
	m, err := manifest.Parse([]byte(`{"services": [
		{"id": "a", "argv": ["x"]},
		{"id": "b", "argv": ["x"]},
		{"id": "c", "argv": ["x"]}]}`))
	require.NoError(t, err)
	s := New(Config{Manifest: m, Log: zaptest.NewLogger(t), RebootWatcherTimeout: 50 * time.Millisecond})
	defer s.releaseRebootWatchers() // as Run does when it returns; this Supervisor never runs
	pa := &proc{svc: s.services["a"], instance: 1}
	pb := &proc{svc: s.services["b"], instance: 1}
	pc := &proc{svc: s.services["c"], instance: 1}
	register := func(p *proc, w *fakeRebootWatcher) error {
		c := oomdpb.RebootWatcher_ServerToClient(w)
		defer c.Release() // as a call's params are: execd keeps its own reference
		return s.watchReboot(p, c)
	}

	assert.ErrorContains(t, s.watchReboot(pa, oomdpb.RebootWatcher{}), "null capability")
	replaced := newFakeRebootWatcher(nil)
	require.NoError(t, register(pa, replaced))
	answers := newFakeRebootWatcher(nil)
	require.NoError(t, register(pa, answers))
	select {
	case <-replaced.released:
	case <-time.After(10 * time.Second):
		t.Fatal("a replaced watcher is released")
	}
	hold := make(chan struct{})
	defer close(hold)
	late := newFakeRebootWatcher(hold)
	require.NoError(t, register(pb, late))
	gone := newFakeRebootWatcher(nil)
	require.NoError(t, register(pc, gone))
	s.mu.Lock()
	s.dropRebootWatcher(pc).Release() // c exited
	s.mu.Unlock()

	r, err := s.Teardown(oomdpb.RebootReason(99)) // an enumerant newer than execd
	require.NoError(t, err)
	assert.False(t, r.Graceful)
	assert.Equal(t, []string{"b"}, r.WatchersTimedOut, "cut off at the bound")
	assert.Empty(t, r.NotStopped, "nothing was running")
	assert.Equal(t, oomdpb.RebootReason_unknown, <-answers.told, "unknown enumerants are passed on as unknown")
	assert.Len(t, gone.told, 0, "the watcher of an exited instance is not told")

	_, err = s.Teardown(oomdpb.RebootReason_oom)
	assert.ErrorIs(t, err, ErrTeardownDone)
	assert.ErrorContains(t, register(pa, newFakeRebootWatcher(nil)), "teardown has started")
	refusal, _, _ := s.terminate("a", 1, 1, "test")
	assert.Equal(t, oomdpb.Refusal_shuttingDown, refusal)
}
