package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"oomd.dev/oomd/gen/oomdpb"
	"oomd.dev/oomd/services/oomd/policy"
)

// execd keeps an exit report until oomd answers its exited() call and hands an
// unanswered one to the next oomd (supervisor.exitQueue). These tests hold oomd to
// answering only once the audit records the exit caused are durable: an answer given
// earlier, followed by a crash, would leave the journal with a killDecided and no end,
// and nobody left to complete it (tests/e2e TestCrashBeforeKilledIsDurableCompletesTheKill).

// heldTerminator takes terminate requests and answers none while the test runs: the
// test steps execd's answer itself, so it decides whether the answer or the exit comes
// first. At the test's end the request returns quietly (its answer finds the loop gone).
type heldTerminator struct {
	calls chan policy.TerminateRequest
	end   chan struct{}
}

func newHeldTerminator(t *testing.T) heldTerminator {
	h := heldTerminator{calls: make(chan policy.TerminateRequest, 1), end: make(chan struct{})}
	t.Cleanup(func() { close(h.end) })
	return h
}

func (h heldTerminator) Terminate(ctx context.Context, r policy.TerminateRequest) (string, error) {
	h.calls <- r
	select {
	case <-h.end:
	case <-ctx.Done():
	}
	return "", nil
}

// decideKill makes the hog cross its hard limit, makes the decision durable and returns
// the terminate request that follows.
func decideKill(t *testing.T, d *Daemon, aud *fakeAuditor, term heldTerminator) policy.TerminateRequest {
	t.Helper()
	handOver(t, d, "hog").report(t, "hog", 500, 1)
	for range 10 {
		d.tickNow()
	}
	dec := aud.last(t)
	require.Equal(t, policy.EventKillDecided, dec.Kind)
	aud.ack(dec.WriterSeq)
	select {
	case req := <-term.calls:
		return req
	case <-time.After(10 * time.Second):
		t.Fatal("no terminate request after the decision was durable")
	}
	return policy.TerminateRequest{}
}

func (a *fakeAuditor) last(t *testing.T) policy.AuditRecord {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	require.NotEmpty(t, a.recs)
	return a.recs[len(a.recs)-1]
}

// waitRecord waits until the auditor was given a record of kind.
func (a *fakeAuditor) waitRecord(t *testing.T, kind policy.EventKind) policy.AuditRecord {
	t.Helper()
	var rec policy.AuditRecord
	require.Eventually(t, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, r := range a.recs {
			if r.Kind == kind {
				rec = r
				return true
			}
		}
		return false
	}, 10*time.Second, time.Millisecond, "no %v record", kind)
	return rec
}

// reportExit sends execd's report through oomd's ExitWatcher capability, as execd does.
func reportExit(d *Daemon, subject string, instance, decision uint64) (done <-chan struct{}, answer func() error, release func()) {
	return reportExitCtx(context.Background(), d, subject, instance, decision)
}

func reportExitCtx(ctx context.Context, d *Daemon, subject string, instance, decision uint64) (done <-chan struct{}, answer func() error, release func()) {
	w := d.ExitWatcherClient()
	fut, rel := w.Exited(ctx, func(p oomdpb.ExitWatcher_exited_Params) error {
		r, err := p.NewReport()
		if err != nil {
			return err
		}
		r.SetInstance(instance)
		r.SetSignal(15)
		r.SetTerminated(decision != 0)
		r.SetDecision(decision)
		return r.SetSubject(subject)
	})
	return fut.Done(), func() error { _, err := fut.Struct(); return err }, func() { rel(); w.Release() }
}

func waitsOf(d *Daemon) (n int) {
	d.onLoop(func() { n = len(d.durable) })
	return n
}

func requireAnswered(t *testing.T, done <-chan struct{}, answer func() error) {
	t.Helper()
	select {
	case <-done:
		require.NoError(t, answer())
	case <-time.After(10 * time.Second):
		t.Fatal("the exit report was not answered")
	}
}

func requireUnanswered(t *testing.T, done <-chan struct{}, why string) {
	t.Helper()
	select {
	case <-done:
		t.Fatalf("the exit report was answered %s", why)
	default:
	}
}

// ackTerminate steps execd's acknowledgement of req.
func ackTerminate(d *Daemon, req policy.TerminateRequest) {
	d.stepNow(policy.Input{Kind: policy.InputTerminateAck, Subject: req.Subject, Instance: req.Instance, Decision: req.Decision})
}

// heldKill is a kill completed by an exit report whose answer waits for the killed record.
type heldKill struct {
	d       *Daemon
	aud     *fakeAuditor
	markers *syncBuffer
	stop    func() // ends the loop
	req     policy.TerminateRequest
	killed  policy.AuditRecord
	done    <-chan struct{} // the exited() call's answer came
	answer  func() error
}

// holdKill: execd acknowledged the terminate request, then reported the exit (the call
// made with ctx), which completed the kill. It returns once the killed record was
// produced, with the report waiting for it.
func holdKill(t *testing.T, ctx context.Context) heldKill {
	t.Helper()
	term := newHeldTerminator(t)
	k := heldKill{}
	k.d, k.aud, k.markers, k.stop = newTestDaemonWith(t, term)
	k.req = decideKill(t, k.d, k.aud, term)
	ackTerminate(k.d, k.req)
	var rel func()
	k.done, k.answer, rel = reportExitCtx(ctx, k.d, "hog", k.req.Instance, k.req.Decision)
	t.Cleanup(rel)
	k.killed = k.aud.waitRecord(t, policy.EventKilled)
	require.Equal(t, k.req.Decision, k.killed.Decision)
	require.Equal(t, 1, waitsOf(k.d), "the exit waits for its killed record")
	return k
}

// TestExitAnsweredOnceItsKillIsDurable: execd acknowledged the terminate request, then
// reports the exit, which completes the kill. The report is answered only once the
// killed record is durable.
func TestExitAnsweredOnceItsKillIsDurable(t *testing.T) {
	k := holdKill(t, context.Background())
	assert.Contains(t, k.markers.String(), "oomd: kill app=hog")
	requireUnanswered(t, k.done, "before its killed record was durable")

	k.aud.ack(k.killed.WriterSeq)
	requireAnswered(t, k.done, k.answer)
	assert.Zero(t, waitsOf(k.d))
}

// TestExitBeforeTheAckWaitsForTheKill: the exit is reported before execd's answer to
// the terminate request (two paths, no order between them). The kill is complete only
// with the answer, so the report waits for it, then for the killed record.
func TestExitBeforeTheAckWaitsForTheKill(t *testing.T) {
	term := newHeldTerminator(t)
	d, aud, _, _ := newTestDaemonWith(t, term)
	req := decideKill(t, d, aud, term)

	done, answer, rel := reportExit(d, "hog", req.Instance, req.Decision)
	defer rel()
	require.Eventually(t, func() bool { return waitsOf(d) == 1 }, 10*time.Second, time.Millisecond,
		"the exit waits for execd's answer")
	requireUnanswered(t, done, "before the kill was complete")

	ackTerminate(d, req)
	killed := aud.waitRecord(t, policy.EventKilled)
	requireUnanswered(t, done, "before its killed record was durable")
	aud.ack(killed.WriterSeq)
	requireAnswered(t, done, answer)
}

// TestExitUnansweredWhenOomdStops: oomd stops while the killed record is not durable.
// The call fails, so execd keeps the report for the next oomd.
func TestExitUnansweredWhenOomdStops(t *testing.T) {
	k := holdKill(t, context.Background())
	k.stop()
	select {
	case <-k.done:
		require.ErrorContains(t, k.answer(), errStopped.Error())
	case <-time.After(10 * time.Second):
		t.Fatal("the exit report was not failed when oomd stopped")
	}
}

// TestExitGivenUpIsForgotten: execd gives up a call (a new watcher registered; the
// connection went): the wait is forgotten, not kept until a durability that may never
// come.
func TestExitGivenUpIsForgotten(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	k := holdKill(t, ctx)
	cancel()
	select {
	case <-k.done:
		require.Error(t, k.answer())
	case <-time.After(10 * time.Second):
		t.Fatal("the call was not ended by its caller")
	}
	require.Eventually(t, func() bool { return waitsOf(k.d) == 0 }, 10*time.Second, time.Millisecond, "the wait is forgotten")
}

// TestExitWithoutConsequenceIsAnsweredAtOnce: an exit that causes no record is answered
// at once, even while other records wait to become durable (execd sends one report at
// a time: holding it would hold every exit behind it).
func TestExitWithoutConsequenceIsAnsweredAtOnce(t *testing.T) {
	term := newHeldTerminator(t)
	d, aud, _, _ := newTestDaemonWith(t, term)
	handOver(t, d, "calm").report(t, "calm", 10, 1)
	handOver(t, d, "hog").report(t, "hog", 500, 1)
	for range 10 {
		d.tickNow()
	}
	require.Equal(t, policy.EventKillDecided, aud.last(t).Kind, "the decision waits for its ack")

	done, answer, rel := reportExit(d, "calm", 1, 0)
	defer rel()
	requireAnswered(t, done, answer)
	assert.Zero(t, waitsOf(d))
}
